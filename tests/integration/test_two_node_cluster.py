"""A real two-node Ray cluster on this machine: a sweep submitted with ``ray job submit`` runs its
trials on both nodes and leaves results, checkpoints and MLflow runs in the shared storage.

Each node is its own ``ray start --block`` process (own raylet, object store, temp dir, ports),
joined over loopback, with token authentication on as KubeRay sets it; every node gets the
environment the cluster configs give it (MLflow URI, data cache on the shared folder). With one
CPU per node and two one-CPU trials at once, Ray has to place trials on both nodes. The test
stops only the processes it started: its two ``ray start`` processes and anything left that
carries its own temp dir or shared folder in its command line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sweep_files import children, write_sweep

BIN = Path(sys.executable).parent
RAY_CLI = BIN / "ray"
NTNG_CLI = BIN / "ntng"
# A custom resource per node tells the two raylets apart in Ray's state API.
HEAD_TAG, WORKER_TAG = "ntng_head", "ntng_worker"
NODE_START_S = 90
JOB_TIMEOUT_S = 300
STOP_GRACE_S = 30

pytestmark = pytest.mark.skipif(
    not (RAY_CLI.is_file() and NTNG_CLI.is_file()),
    reason=f"needs the ray and ntng commands next to {sys.executable}",
)


@dataclass
class TwoNodeCluster:
    """What a client of the cluster needs: where it listens and the environment to reach it."""

    dashboard: str
    env: dict[str, str]
    token: str
    shared: Path

    @property
    def headers(self) -> dict[str, str]:
        """The bearer token Ray's dashboard asks of every client under token authentication."""
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    """A port nothing listens on now, for the ports a client must know in advance."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(token: str, shared: Path) -> dict[str, str]:
    """Every node's environment as the cluster configs set it (Pod env, .bashrc): MLflow and the
    data cache on the shared folder, offline HF, and this cluster's own auth token. No RAY_*
    variable of this process (e.g. the session's local Ray) leaks in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    return env | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        # SIGTERM then stops a node at once instead of draining it first.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "NTNG_CACHE_DIR": str(shared / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{shared}/mlflow.db",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def node_args(temp_dir: Path, tag: str) -> list[str]:
    """One CPU and a tag per node; every port of the node's own is picked at random (0) so
    that two raylets, and any other Ray on the machine, never collide."""
    return [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        f"--resources={json.dumps({tag: 1})}",
        f"--object-store-memory={200 * 1024**2}",
        "--node-manager-port=0",
        "--object-manager-port=0",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--dashboard-agent-listen-port=0",
        f"--temp-dir={temp_dir}",
    ]


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start --block`` in its own process group: it owns its node's processes and stops
    them when it gets SIGTERM."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(RAY_CLI), "start", "--block", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(
    ready: Callable[[], bool], what: str, nodes: dict[Path, subprocess.Popen], timeout: float
) -> None:
    """Poll ``ready`` until it holds; fail early, with the node's log, when a node died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log, proc in nodes.items():
            if proc.poll() is not None:
                pytest.fail(f"ray start exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if ready():
                return
        except Exception:  # the dashboard is still starting: connection refused, 5xx
            pass
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def alive_nodes(cluster: TwoNodeCluster) -> list:
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(address=cluster.dashboard, headers=cluster.headers)
    options = ListApiOptions(detail=True, filters=[("state", "=", "ALIVE")])
    return client.list(StateResource.NODES, options=options, raise_on_missing_output=True)


def job_client(cluster: TwoNodeCluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard, headers=cluster.headers)


def stop_nodes(nodes: list[subprocess.Popen], markers: list[str]) -> None:
    """SIGTERM each ``ray start`` (worker first), then kill whatever of ours outlived it: the
    node's processes carry its temp dir, the sweep's driver the shared folder."""
    import psutil

    for proc in reversed(nodes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_GRACE_S)
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["pid"] != os.getpid() and any(m in command for m in markers):
            leftovers.append(process)
    for process in leftovers:
        process.kill()
    psutil.wait_procs(leftovers, timeout=STOP_GRACE_S)


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[TwoNodeCluster]:
    """A head and a worker node, each a separate raylet with one CPU, sharing ``tmp_path``.

    Temp dirs live in a short folder under /tmp: Ray's socket paths must stay under 108 bytes.
    """
    shared = tmp_path / "shared"
    shared.mkdir()
    temp_root = Path(tempfile.mkdtemp(prefix="ntng2n-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = node_env(token, shared)
    gcs_port, dashboard_port = free_port(), free_port()
    cluster = TwoNodeCluster(f"http://127.0.0.1:{dashboard_port}", env, token, shared)
    started: dict[Path, subprocess.Popen] = {}
    try:
        head_log = tmp_path / "head.log"
        started[head_log] = start_node(
            [
                "--head",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                "--disable-usage-stats",
                *node_args(temp_root / "head", HEAD_TAG),
            ],
            env,
            head_log,
        )
        wait_for(lambda: bool(job_client(cluster)), "the head's dashboard", started, NODE_START_S)
        worker_log = tmp_path / "worker.log"
        started[worker_log] = start_node(
            [
                f"--address=127.0.0.1:{gcs_port}",
                "--include-log-monitor=false",
                *node_args(temp_root / "worker", WORKER_TAG),
            ],
            env,
            worker_log,
        )
        wait_for(
            lambda: len(alive_nodes(cluster)) == 2, "the worker to join", started, NODE_START_S
        )
        yield cluster
    finally:
        stop_nodes(list(started.values()), [str(temp_root), str(shared)])
        shutil.rmtree(temp_root, ignore_errors=True)


def wait_for_job(cluster: TwoNodeCluster, job_id: str) -> tuple[str, str]:
    """The job's final status and its driver's output."""
    client = job_client(cluster)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    return str(status.value), client.get_job_logs(job_id)


def trial_nodes(cluster: TwoNodeCluster, pids: set[int]) -> dict[int, str]:
    """The tag of the node each trial process ran on: trial actors by pid, in Ray's state API."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(address=cluster.dashboard, headers=cluster.headers)
    actors = client.list(
        StateResource.ACTORS, options=ListApiOptions(limit=10_000), raise_on_missing_output=True
    )
    node_of_pid = {actor.pid: actor.node_id for actor in actors if actor.pid in pids}
    tag_of_node = {
        node.node_id: next(t for t in (HEAD_TAG, WORKER_TAG) if t in node.resources_total)
        for node in alive_nodes(cluster)
    }
    return {pid: tag_of_node[node] for pid, node in node_of_pid.items()}


def read_results(path: Path) -> list[dict]:
    """A Tune trial's result.json: one JSON object per reported result."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sweep_job_runs_trials_on_both_nodes_into_shared_storage(
    two_node_cluster: TwoNodeCluster,
) -> None:
    """``ray job submit`` of a reduced sweep (2 tuning trials, 2 finals) on the two-node cluster:
    the job succeeds, trials ran on both nodes, and every trial left its Tune results and a
    checkpoint in the shared storage path and a FINISHED MLflow run under a FINISHED parent."""
    cluster = two_node_cluster
    shared = cluster.shared
    strategies = {"baseline": {"space": {"optimizer.lr": {"grid": [2.0e-3, 3.0e-3]}}}}
    sweep = write_sweep(
        shared,
        "two-node",
        strategies,
        storage_path=str(shared / "ray"),
        tracking={"experiment": "two-node"},  # the URI comes from the nodes' environment
    )
    job_id = f"ntng-two-node-{secrets.token_hex(4)}"
    submit = subprocess.run(
        [
            str(RAY_CLI),
            "job",
            "submit",
            f"--address={cluster.dashboard}",
            f"--submission-id={job_id}",
            "--no-wait",
            "--",
            str(NTNG_CLI),
            "sweep",
            str(sweep),
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr

    status, logs = wait_for_job(cluster, job_id)
    assert status == "SUCCEEDED", logs[-6000:]

    storage = shared / "ray"
    results = sorted(storage.glob("*/*/result.json"))
    assert {p.parent.parent.name for p in results} == {"b2-tune", "b2-final"}, results
    assert len(results) == 4, results
    pids = {}
    for path in results:
        rows = read_results(path)
        assert rows and rows[-1]["final_validation_loss"] > 0, path
        pids[path.parent.name] = {row["pid"] for row in rows}
        checkpoints = [c for c in path.parent.glob("checkpoint_*") if any(c.iterdir())]
        assert checkpoints, f"no checkpoint in {path.parent}"
    all_pids = set().union(*pids.values())
    nodes = trial_nodes(cluster, all_pids)
    assert set(nodes) == all_pids, f"trial processes missing from Ray's actors: {pids}, {nodes}"
    assert set(nodes.values()) == {HEAD_TAG, WORKER_TAG}, nodes

    root = shared / "sweeps" / "two-node"
    assert len(list((root / "trials").glob("*/*"))) == 4
    state = json.loads((root / "sweep_state.json").read_text())
    client = MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    runs = children(client, state["parent_run_id"])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs), runs
