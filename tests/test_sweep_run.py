"""Sweeps on the session's local Ray: stoppers, MLflow parent/child runs, resume, the report.

Tiny sweeps (budgets of 2 RST seconds, small data) so each runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from sweep_files import SMALL, SWEEPS, children, write_sweep

pytestmark = pytest.mark.usefixtures("local_ray")


def test_budget_stopper_ends_a_trial_that_runs_past_its_budget(tmp_path: Path) -> None:
    """A trainable that never stops itself is stopped at the first report past budget + 5%."""
    from ray import tune

    from ntng_ray.sweep.stoppers import RSTBudgetStopper, outcome

    def runaway(config: dict) -> None:
        for step in range(1, 1000):
            tune.report({"rst_seconds": 0.5 * step, "budget_rst_seconds": 10.0, "val_loss": 1.0})

    tuner = tune.Tuner(
        tune.with_resources(runaway, {"cpu": 0.01}),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), stop=RSTBudgetStopper(0.05), verbose=0
        ),
    )
    (result,) = tuner.fit()
    assert result.metrics["rst_seconds"] == 10.5 + 0.5  # first report above 10 * 1.05
    assert outcome(result.metrics, False, 0.05, 20.0) == "over_budget"


def test_sweep_marks_a_diverged_trial_and_completes(tmp_path: Path) -> None:
    """An LR of 10 diverges: the divergence stopper ends it, it is tagged diverged (FAILED), the
    other trial wins, the finals run, and parent/child runs carry the contract's tags."""
    from ntng_ray.sweep.runner import run_sweep
    from ntng_ray.sweep.spec import load_sweep

    strategies = {"baseline": {"space": {"optimizer.lr": {"grid": [2.0e-3, 10.0]}}}}
    spec = load_sweep(str(write_sweep(tmp_path, "diverge", strategies)))
    summary = run_sweep(spec, report_dir=tmp_path / "report")

    client = MlflowClient(spec.tracking.uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["ntng.sweep"] == "diverge"
    assert parent.data.metrics["sweep_rst_seconds"] == pytest.approx(summary["sweep_rst_seconds"])
    runs = children(client, parent.info.run_id)
    tune_runs = [r for r in runs if r.data.tags["ntng.phase"] == "tune"]
    final_runs = [r for r in runs if r.data.tags["ntng.phase"] == "final"]
    assert len(tune_runs) == 2 and len(final_runs) == 2
    by_lr = {float(r.data.params["optimizer.lr"]): r for r in tune_runs}
    assert by_lr[10.0].data.tags["ntng.outcome"] == "diverged"
    assert by_lr[10.0].info.status == "FAILED"
    assert by_lr[2.0e-3].data.tags["ntng.outcome"] == "completed"
    assert by_lr[2.0e-3].data.tags["ntng.selected"] == "true"
    for run in final_runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["ntng.outcome"] == "completed"
        assert tags["ntng.strategy"] == "baseline" and tags["ntng.launch"] == "in_process"
        assert float(tags["ntng.budget_rst_seconds"]) == 2.0
        assert float(run.data.params["optimizer.lr"]) == 2.0e-3
        assert run.data.metrics["rst_seconds"] <= 2.0
    assert sorted(r.data.tags["ntng.seed"] for r in final_runs) == ["0", "1"]
    # The report is on the parent run and in --out.
    assert (tmp_path / "report" / "report.md").is_file()
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
    assert "report/report.md" in logged and "report/report.html" in logged


def _sweep_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ntng_ray.cli", "sweep", str(path), *extra]


def _driver_env() -> dict[str, str]:
    import ray

    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return env


def test_resume_after_interrupting_the_driver(tmp_path: Path) -> None:
    """Interrupt the sweep driver while final trials run; --resume reruns no finished trial and
    every trial ends with exactly one FINISHED child run."""
    strategies = {
        "baseline": {"space": {"optimizer.lr": {"grid": [2.0e-3]}}},
        "layer_dropping": {"space": {"optimizer.lr": {"grid": [2.0e-3]}}},
    }
    path = write_sweep(tmp_path, "resumable", strategies)
    state_file = tmp_path / "sweeps" / "resumable" / "sweep_state.json"
    driver = subprocess.Popen(
        _sweep_command(path), env=_driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = json.loads(state_file.read_text())["stages"] if state_file.is_file() else {}
        if "b2-tune-layer_dropping" in done:
            break
        time.sleep(0.5)
    time.sleep(4)  # the final stage's first trials are running
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode != 0, out.decode()[-2000:]

    state = json.loads(state_file.read_text())
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent_id = state["parent_run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"
    before = {r.info.run_id: r for r in children(client, parent_id)}
    assert all(r.info.status != "RUNNING" for r in before.values())
    finished_before = {k: r.info.end_time for k, r in before.items() if r.info.status == "FINISHED"}

    resumed = subprocess.run(
        _sweep_command(path, "--resume"), env=_driver_env(), capture_output=True, timeout=400
    )
    assert resumed.returncode == 0, (
        resumed.stdout.decode()[-3000:] + resumed.stderr.decode()[-3000:]
    )

    after = children(client, parent_id)
    trial_ids = [r.data.tags["ntng.trial_id"] for r in after]
    assert len(trial_ids) == len(set(trial_ids)) == 2 + 4  # 2 tuning trials, 2 x 2 finals
    assert all(r.info.status == "FINISHED" for r in after)
    for run in after:  # finished trials were not rerun: their runs were not touched again
        if run.info.run_id in finished_before:
            assert run.info.end_time == finished_before[run.info.run_id]
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert b"report" in resumed.stdout


def test_debug_sweep_reduced_end_to_end(tmp_path: Path) -> None:
    """The shipped debug sweep, reduced for CI time (budget 3 RST s instead of 12, 1 tuning trial
    per strategy instead of 2, 1 final seed instead of 2, a smaller corpus; still all seven
    strategies, RHO-loss's IL stage, tuning, finals and the report)."""
    from ntng_ray.sweep.runner import run_sweep
    from ntng_ray.sweep.spec import load_sweep

    data = yaml.safe_load((SWEEPS / "debug.yaml").read_text())
    data["budgets"] = [{"rst_seconds": 3}]
    data["search"]["trials"] = 1
    data["final"]["seeds"] = 1
    data["overrides"].update(SMALL)
    data["strategies"]["rho_loss"]["settings"]["strategy.il_budget_rst_seconds"] = 2
    data["output_dir"] = str(tmp_path / "sweeps")
    data["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "debug"}
    path = tmp_path / "debug.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_sweep(str(path))
    summary = run_sweep(spec, report_dir=tmp_path / "report")

    client = MlflowClient(spec.tracking.uri)
    runs = children(client, summary["parent_run_id"])
    finals = [r for r in runs if r.data.tags["ntng.phase"] == "final"]
    assert {r.data.tags["ntng.strategy"] for r in finals} == set(spec.strategies)
    assert len(finals) == 7 and all(r.info.status == "FINISHED" for r in finals)
    assert summary["rho_il_rst_seconds"] > 0
    report = (tmp_path / "report" / "report.md").read_text()
    for name in spec.strategies:
        assert name in report
    assert list((tmp_path / "report").glob("*.png"))


def test_multi_worker_trials_run_ray_train_inside_tune(tmp_path: Path) -> None:
    """A trial of two workers fits a Ray Train job inside its Tune trial (reports forwarded by
    TuneReportCallback), searched by Optuna through Ray Tune's integration."""
    from ntng_ray.sweep.runner import run_sweep
    from ntng_ray.sweep.spec import load_sweep

    strategies = {"baseline": {"space": {"optimizer.lr": {"loguniform": [1.0e-3, 3.0e-3]}}}}
    path = write_sweep(
        tmp_path,
        "train-in-tune",
        strategies,
        search={"searcher": "optuna", "trials": 1},
        final={"seeds": 1},
        resources={"cpus_per_trial": 1, "workers": 2, "max_concurrent": 1},
    )
    spec = load_sweep(str(path))
    summary = run_sweep(spec)

    runs = children(MlflowClient(spec.tracking.uri), summary["parent_run_id"])
    assert sorted(r.data.tags["ntng.phase"] for r in runs) == ["final", "tune"]
    for run in runs:
        assert run.data.tags["ntng.launch"] == "ray_train"
        assert run.info.status == "FINISHED" and run.data.tags["ntng.outcome"] == "completed"
        assert 0 < run.data.metrics["rst_seconds"] <= 2.0
