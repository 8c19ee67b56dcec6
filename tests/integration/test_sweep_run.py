"""Sweeps on the session's local Ray: stoppers, MLflow parent/child runs, resume, the report.

Tiny sweeps (budgets of 2 RST seconds, small data) so each runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def _sweep_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ntng_ray.cli", "sweep", str(path), *extra]


def _driver_env() -> dict[str, str]:
    import ray

    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return env


def test_divergence_interrupt_and_resume(tmp_path: Path) -> None:
    """One sweep, three checks. An LR of 10 diverges: the divergence stopper ends that trial, it
    is tagged diverged (FAILED) and the other one is selected. The driver is interrupted while
    final trials run: the parent and the cut-off runs are KILLED. --resume reruns no finished
    trial, every other trial ends with exactly one FINISHED child run carrying the contract's
    tags, and the report lands on the parent run."""
    strategies = {
        "baseline": {"space": {"optimizer.lr": {"grid": [2.0e-3, 10.0]}}},
        "layer_dropping": {"space": {"optimizer.lr": {"grid": [2.0e-3, 3.0e-3]}}},
    }
    path = write_sweep(tmp_path, "resumable", strategies)
    state_file = tmp_path / "sweeps" / "resumable" / "sweep_state.json"
    driver = subprocess.Popen(
        _sweep_command(path), env=_driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = json.loads(state_file.read_text())["stages"] if state_file.is_file() else {}
        if "b2-tune" in done:  # the grid's points of both strategies, one stage
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
    assert len(trial_ids) == len(set(trial_ids)) == 4 + 4  # 2 x 2 tuning trials, 2 x 2 finals
    diverged = [r for r in after if r.data.tags.get("ntng.outcome") == "diverged"]
    assert [float(r.data.params["optimizer.lr"]) for r in diverged] == [10.0]
    assert diverged[0].info.status == "FAILED"
    for run in after:
        if run in diverged:
            continue
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["ntng.outcome"] == "completed"
        assert tags["ntng.launch"] == "in_process" and tags["ntng.sweep"] == "resumable"
        assert float(tags["ntng.budget_rst_seconds"]) == 2.0
        assert float(run.data.params["optimizer.lr"]) in (2.0e-3, 3.0e-3)
        assert run.data.metrics["rst_seconds"] <= 2.0
        if run.info.run_id in finished_before:  # finished trials were not rerun
            assert run.info.end_time == finished_before[run.info.run_id]
    finals = [r for r in after if r.data.tags["ntng.phase"] == "final"]
    assert sorted((r.data.tags["ntng.strategy"], r.data.tags["ntng.seed"]) for r in finals) == [
        ("baseline", "0"),
        ("baseline", "1"),
        ("layer_dropping", "0"),
        ("layer_dropping", "1"),
    ]
    selected = [r for r in after if r.data.tags.get("ntng.selected") == "true"]
    assert sorted(r.data.tags["ntng.strategy"] for r in selected) == ["baseline", "layer_dropping"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ntng.sweep"] == "resumable"
    _check_mlflow_layout(client, parent, after)
    assert parent.data.metrics["sweep_rst_seconds"] > 0
    logged = [a.path for a in client.list_artifacts(parent_id, "report")]
    assert "report/report.md" in logged and "report/report.html" in logged


def _check_mlflow_layout(client: MlflowClient, parent: Any, runs: list[Any]) -> None:
    """Through MLflow's API: a training experiment; short strategy-first names; no stray
    metrics; and RST as every final run's step: each val_loss point's step is, within 1 ms,
    the RST of the matching validation line of the run's metrics.jsonl (restarted trials too)."""
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == parent.data.tags["ntng.sweep"]
    tune_names = set()
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        strategy, phase = tags["ntng.strategy"], tags["ntng.phase"]
        assert not {"step", "steps"} & metrics.keys()
        assert not [k for k in metrics if k.startswith("strategy.")]
        assert tags["mlflow.source.git.commit"] and tags["mlflow.user"]
        assert tags["mlflow.source.name"] == parent.data.tags["mlflow.source.name"]
        if phase == "tune":
            assert re.fullmatch(rf"{strategy} · tune · \d+", run.info.run_name), run.info.run_name
            tune_names.add(run.info.run_name)
        if phase != "final" or tags.get("ntng.outcome") != "completed":
            continue
        assert run.info.run_name == f"{strategy} · final · s{tags['ntng.seed']}"
        assert metrics["optimizer_step"] > 0
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.digest
        folder = Path(run.data.params["output_dir"])
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        validations = [line for line in lines if line["event"] == "validation"]
        history = client.get_metric_history(run.info.run_id, "val_loss")
        points = sorted(history, key=lambda m: (m.step, m.timestamp))
        assert len(points) == len(validations) > 0, run.info.run_name
        for point, line in zip(points, validations, strict=True):
            assert abs(point.step - round(1000 * line["rst_seconds"])) <= 1, run.info.run_name
        rst_steps = [m.step for m in client.get_metric_history(run.info.run_id, "rst_seconds")]
        assert len(rst_steps) == len(set(rst_steps))  # one value per RST step
    assert len(tune_names) == len([r for r in runs if r.data.tags["ntng.phase"] == "tune"])


def test_debug_sweep_reduced_end_to_end(tmp_path: Path) -> None:
    """The shipped debug sweep, reduced for CI time: budget 3 RST s instead of 12, 1 tuning trial
    per strategy instead of 2, 1 final seed instead of 2, a smaller corpus, and three of its seven
    strategies (the baseline, layer stacking, and RHO-loss with its IL stage); each stage costs
    ~15 s of start-up here, and every strategy already runs in its own tests."""
    from ntng_ray.sweep.runner import run_sweep
    from ntng_ray.sweep.spec import load_sweep

    data = yaml.safe_load((SWEEPS / "debug.yaml").read_text())
    data["budgets"] = [{"rst_seconds": 3}]
    data["search"]["trials"] = 1
    data["final"]["seeds"] = 1
    data["overrides"].update(SMALL)
    data["strategies"]["rho_loss"]["settings"]["strategy.il_budget_rst_seconds"] = 2
    kept = ("baseline", "layer_stacking", "rho_loss")
    data["strategies"] = {name: data["strategies"][name] for name in kept}
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
    assert len(finals) == 3 and all(r.info.status == "FINISHED" for r in finals)
    assert summary["preparation_rst_seconds"] > 0
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.metrics["preparation_rst_seconds"] == summary["preparation_rst_seconds"]
    prepared = {
        r.data.tags["ntng.strategy"]: r.data.metrics["preparation_rst_seconds"] for r in finals
    }
    assert prepared["rho_loss"] > 0 and prepared["baseline"] == 0
    # RHO-loss's IL model is a child run of its own, with its curve; the report ignores it.
    (il_run,) = [r for r in runs if r.data.tags["ntng.phase"] == "prepare"]
    assert il_run.data.tags["ntng.strategy"] == "rho_loss" and il_run.info.status == "FINISHED"
    assert il_run.info.run_name == "rho_loss · prepare"
    assert len(client.get_metric_history(il_run.info.run_id, "val_loss")) >= 2
    _check_mlflow_layout(client, parent, [r for r in runs if r is not il_run])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "of which strategies' preparation" in report
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
