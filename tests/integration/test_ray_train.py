"""The loop on Ray Train workers: two workers stop at the budget together, MLflow records one
run, and a worker killed mid-run is replaced and the run resumes from its checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
from fast import SMALL_DATA

from ntng_ray.config import load_config
from ntng_ray.errors import NtngError
from ntng_ray.rst.clock import step_cost
from ntng_ray.rst.table import load_table
from ntng_ray.train.run import pretrain

FAST = [
    *SMALL_DATA,
    "eval.points=[0.5]",
    "train.log_every=5",
    "train.microbatch_size=16",
    "backend.workers=2",
]


def _per_step(cfg) -> float:
    table = load_table(cfg.rst.table)
    sequences = cfg.train.microbatch_size * cfg.backend.workers
    return sum(step_cost(table, cfg.preset.num_layers, sequences).values())


def _mlflow_runs(experiment: str) -> list:
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_two_workers_stop_at_budget_and_log_one_run(local_ray, tmp_path, engine: str) -> None:
    experiment = f"two-workers-{engine}"
    cfg = load_config(
        "bert-tiny-synthetic",
        [*FAST, f"backend.engine={engine}", "budget.rst_seconds=6",
         f"tracking.experiment={experiment}", f"output_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    summary = pretrain(cfg)
    per_step = _per_step(cfg)
    assert summary["workers"] == 2
    assert summary["sequences_per_step"] == 2 * 16
    assert 0 <= cfg.budget.seconds - summary["rst_seconds"] < per_step
    assert summary["steps"] == int(cfg.budget.seconds / per_step + 1e-9)
    assert summary["validation"][-1]["loss"] < summary["validation"][0]["loss"] - 0.5
    runs = _mlflow_runs(experiment)
    assert [run.info.run_id for run in runs] == [summary["mlflow_run_id"]]
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rst_seconds"] == pytest.approx(summary["rst_seconds"])
    assert run.data.params["backend.engine"] == engine
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def _committed_checkpoints(storage: Path) -> list[str]:
    """Checkpoints Ray Train has registered (a folder alone may still be uploading)."""
    names = []
    for snapshot in storage.rglob("checkpoint_manager_snapshot.json"):
        with contextlib.suppress(json.JSONDecodeError, OSError):
            results = json.loads(snapshot.read_text()).get("checkpoint_results", [])
            names += [result["checkpoint_dir_name"] for result in results]
    return names


def _worker_pids() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
    return [a.pid for a in actors if a.class_name == "RayTrainWorker" and a.pid]


def test_killed_worker_is_replaced_and_run_resumes(local_ray, tmp_path) -> None:
    experiment = "worker-killed"
    out = tmp_path / "run"
    cfg = load_config(
        "bert-tiny-synthetic",
        [*FAST, "backend.engine=torch", "budget.rst_seconds=24", "backend.checkpoint_points=[0.25]",
         "backend.max_failures=2", f"tracking.experiment={experiment}", f"output_dir={out}"],
    )  # fmt: skip
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(summary=pretrain(cfg)), daemon=True)
    driver.start()

    deadline = time.monotonic() + 180
    while not _committed_checkpoints(out / "ray"):
        assert driver.is_alive() and time.monotonic() < deadline, "no checkpoint was committed"
        time.sleep(0.2)
    pids = _worker_pids()
    assert pids, "no Ray Train worker to kill"
    os.kill(pids[-1], signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()

    summary = outcome["summary"]
    assert summary["restored_from_step"] is not None and summary["restored_from_step"] > 0
    assert 0 <= cfg.budget.seconds - summary["rst_seconds"] < _per_step(cfg)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [line["step"] for line in lines if line["event"] == "train"]
    assert train_steps == sorted(set(train_steps)), "a redone step was logged twice"
    runs = _mlflow_runs(experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_request_that_cannot_fit_is_refused(local_ray, tmp_path) -> None:
    cfg = load_config(
        "bert-tiny-synthetic",
        [*FAST, "backend.workers=16", f"output_dir={tmp_path / 'never'}"],
    )
    with pytest.raises(NtngError, match="needs 17 CPU"):
        pretrain(cfg)
    assert not (tmp_path / "never").exists()


def test_local_launcher_refuses_several_workers(tmp_path) -> None:
    cfg = load_config("bert-tiny-synthetic", [*FAST, "backend.launcher=local"])
    with pytest.raises(NtngError, match=r"backend\.launcher = 'local'"):
        pretrain(cfg)
