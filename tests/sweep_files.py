"""Small sweep files for tests: tiny budgets and data, a throwaway store per test."""

from __future__ import annotations

from pathlib import Path

import yaml
from fast import SMALL_DATA
from mlflow.tracking import MlflowClient

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SMALL = {key: yaml.safe_load(value) for key, value in (o.split("=", 1) for o in SMALL_DATA)}


def write_sweep(tmp_path: Path, name: str, strategies: dict, **changes) -> Path:
    data = {
        "name": name,
        "base": "bert-tiny-synthetic",
        "overrides": {**SMALL, "eval.points": [0.0, 0.5, 1.0], "train.log_every": 2},
        "budgets": [{"rst_seconds": 2}],
        "strategies": strategies,
        "search": {"searcher": "grid"},
        "final": {"seeds": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "guards": {"max_loss": 15.0},
        "output_dir": str(tmp_path / "sweeps"),
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "sweeps"},
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def children(client: MlflowClient, parent_id: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent_id}'")
