"""``ntng ui``: the MLflow UI over the configured tracking store, on loopback unless asked.

MLflow's own server does the work; this only picks the store (creating it first, under the
lock runs take), keeps the server small (one worker, no job consumers) and stops its whole
process group when the user is done.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ntng_ray.config import TrackingConfig
from ntng_ray.errors import NtngError
from ntng_ray.track.interrupts import sigterm_as_interrupt
from ntng_ray.track.mlflow_run import open_client, resolve_tracking_uri, sqlite_path

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _probe_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine (wildcards via loopback)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 else DEFAULT_HOST
    return host


def serve_ui(
    tracking_uri: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
) -> subprocess.Popen:
    """Start ``mlflow server`` on ``tracking_uri`` in its own process group; return the process.

    A non-loopback ``host`` exposes an unauthenticated UI, so it needs ``allow_remote``.
    """
    if not (allow_remote or is_loopback(host)):
        raise NtngError(
            f"host = {host!r} is not a loopback address; the MLflow UI has no authentication, "
            "so binding elsewhere needs an explicit --host"
        )
    open_client(tracking_uri)  # create and migrate the store under the lock that runs take
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(command, env=env, start_new_session=True)


def wait_until_healthy(
    url: str, timeout: float = STARTUP_TIMEOUT_S, process: subprocess.Popen | None = None
) -> None:
    """Poll ``url``/health until it answers 200; fail early if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NtngError(
                f"the MLflow server exited with code {process.returncode} before answering at "
                f"{url} (is the port in use? its output is above)"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise NtngError(f"the MLflow server at {url} did not become healthy within {timeout:.0f} s")


def stop_ui(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop the server and its worker processes: SIGTERM to the group, SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """Where MLflow's UI shows an experiment's runs table (its route in MLflow 3)."""
    return f"{base_url}/#/experiments/{experiment_id}/runs"


def experiment_links(tracking_uri: str, base_url: str) -> list[str]:
    """One line per active experiment of the store: its name and runs-table URL, newest
    first. Nothing for a SQLite store that does not exist (none is made here)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return []
    try:
        from mlflow import MlflowClient

        experiments = MlflowClient(tracking_uri=tracking_uri).search_experiments(
            order_by=["creation_time DESC"]
        )
    except Exception:
        log.warning("could not list the experiments of %s", tracking_uri, exc_info=True)
        return []
    return [
        f"  {e.name}: {runs_table_url(base_url, e.experiment_id)}"
        for e in experiments
        if e.name != "Default" or e.experiment_id != "0"
    ]


def _serve_until_exit(uri: str, host: str, port: int, allow_remote: bool) -> int:
    """Start the server, say where it is, wait for it; stop it on every way out (own session)."""
    process = serve_ui(uri, host, port, allow_remote=allow_remote)
    try:
        wait_until_healthy(f"http://{_url_host(_probe_host(host))}:{port}", process=process)
        base_url = f"http://{_url_host(host)}:{port}"
        print(f"MLflow UI: {base_url} (store: {uri})", flush=True)
        links = experiment_links(uri, base_url)
        if links:
            print("Runs tables:", *links, sep="\n", flush=True)
        return process.wait()
    finally:
        stop_ui(process)


def run_ui(
    host: str | None = None, port: int = DEFAULT_PORT, tracking_uri: str | None = None
) -> int:
    """Serve the UI until Ctrl-C, SIGTERM or the server exits; returns ``ntng ui``'s exit code.

    ``host`` given at all counts as the explicit choice to bind there; None means loopback.
    ``tracking_uri`` defaults to the store runs log to ($MLFLOW_TRACKING_URI or ./mlflow.db).
    """
    uri = tracking_uri or resolve_tracking_uri(TrackingConfig())
    try:
        with sigterm_as_interrupt():
            return _serve_until_exit(uri, host or DEFAULT_HOST, port, allow_remote=host is not None)
    except KeyboardInterrupt:
        return 0
