"""The sweep's downstream stage: final checkpoints fine-tuned as Tune trials, linked in MLflow,
and the suite average in the report's downstream column."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sweep_files import children, write_sweep

pytestmark = pytest.mark.usefixtures("local_ray")


def test_downstream_stage_feeds_the_report(tmp_path: Path, shared_data: Path) -> None:
    from ntng_ray.sweep.runner import run_sweep
    from ntng_ray.sweep.spec import load_sweep

    strategies = {"baseline": {"space": {"optimizer.lr": {"grid": [2.0e-3]}}}}
    downstream = {
        "suite": "glue",
        "tasks": ["sst-2"],
        "data_dir": str(shared_data / "glue"),
        "settings": {
            "epochs": 1,
            "max_train_examples": 64,
            "max_eval_examples": 48,
            "max_length": 32,
            "threads": 1,
        },
    }
    path = write_sweep(
        tmp_path, "with-glue", strategies, final={"seeds": 2}, downstream=[downstream]
    )
    spec = load_sweep(str(path))
    assert spec.downstream[0].tasks == ["SST-2"]
    summary = run_sweep(spec, report_dir=tmp_path / "report")

    client = MlflowClient(spec.tracking.uri)
    runs = children(client, summary["parent_run_id"])
    by_phase: dict[str, list] = {}
    for run in runs:
        by_phase.setdefault(run.data.tags["ntng.phase"], []).append(run)
    finals = {r.info.run_id for r in by_phase["final"]}
    assert len(by_phase["finetune"]) == 2 and len(by_phase["downstream"]) == 2
    for run in by_phase["finetune"]:
        assert run.info.status == "FINISHED" and run.data.tags["ntng.task"] == "SST-2"
        assert run.data.tags["ntng.pretrain_run_id"] in finals
        assert 0.0 <= run.data.metrics["SST-2.accuracy"] <= 1.0
    for run in by_phase["downstream"]:
        assert run.data.tags["ntng.pretrain_run_id"] in finals
        assert run.data.tags["ntng.averaged_tasks"] == "SST-2"
        # One task averaged: the suite average is that task's score.
        assert run.data.metrics["glue_average"] == pytest.approx(run.data.metrics["glue_SST-2"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "glue" in report.lower()
