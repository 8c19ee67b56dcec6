"""The sweep in MLflow: one parent run, one nested child run per Tune trial.

Ray's MLflow callback does not nest runs, so children carry ``mlflow.parentRunId`` themselves.
A child is found again by its Tune trial id, so a trial restarted by a resumed sweep reopens
its own run instead of starting a second one; trials the driver saw stopped, failed or cut off
are closed here with the outcome as a tag, never left RUNNING.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from ntng_ray.config import TrackingConfig
from ntng_ray.sweep.spec import SweepSpec
from ntng_ray.track.mlflow_run import (
    artifact_location,
    ensure_experiment,
    flatten_params,
    open_client,
    resolve_tracking_uri,
    store_lock,
)

SWEEP_TAG = "ntng.sweep"
TRIAL_TAG = "ntng.trial_id"
OUTCOME_TAG = "ntng.outcome"
LAUNCH_TAG = "ntng.launch"
# MLflow end status for each way a trial can end.
OUTCOME_STATUS = {
    "completed": "FINISHED",
    "diverged": "FAILED",
    "over_budget": "FAILED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}


class SweepTracker:
    """The sweep's MLflow store, experiment and parent run."""

    def __init__(self, tracking: TrackingConfig, parent_run_id: str | None = None) -> None:
        self.uri = resolve_tracking_uri(tracking)
        self.client: MlflowClient = open_client(self.uri)
        location = artifact_location(self.uri, tracking.experiment)
        with store_lock(self.uri):
            self.experiment_id = ensure_experiment(self.client, tracking.experiment, location)
        self.parent_run_id = parent_run_id

    def start_parent(self, spec: SweepSpec, trials_by_strategy: dict[str, int]) -> str:
        """Create the parent run with the protocol as tags and the sweep file as an artifact."""
        tags = {
            MLFLOW_RUN_NAME: f"sweep-{spec.name}",
            SWEEP_TAG: spec.name,
            "ntng.role": "sweep",
            "ntng.protocol.searcher": spec.search.searcher,
            "ntng.protocol.trials": str(spec.search.trials),
            "ntng.protocol.trials_by_strategy": json.dumps(trials_by_strategy),
            "ntng.protocol.seeds": str(spec.final.seeds),
            "ntng.protocol.allow_unequal_tuning": str(spec.search.allow_unequal_tuning).lower(),
            "ntng.protocol.scheduler": spec.search.scheduler,
            "ntng.protocol.split_seed": str(spec.split_seed),
            "ntng.budgets_rst_seconds": json.dumps(sorted(b.seconds for b in spec.budgets)),
            "ntng.strategies": json.dumps(spec.strategy_order()),
            "ntng.sweep_sha256": spec.content_hash(),
        }
        run = self.client.create_run(self.experiment_id, tags=tags)
        self.parent_run_id = run.info.run_id
        params = flatten_params(spec.model_dump(mode="json", exclude={"strategies"}))
        for key, value in params.items():
            self.client.log_param(self.parent_run_id, key, value)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "sweep.yaml"
            path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
            self.client.log_artifact(self.parent_run_id, str(path))
        return self.parent_run_id

    def reopen_parent(self) -> None:
        self.client.update_run(self._parent, status="RUNNING")

    def end_parent(self, status: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.client.log_metric(self._parent, name, value)
        self.client.set_terminated(self._parent, status)

    @property
    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("the sweep's parent run has not been started")
        return self.parent_run_id

    def child_run(self, trial_id: str, tags: dict[str, str]) -> str:
        """The trial's child run: the one it made before a restart, else a new one."""
        with store_lock(self.uri):
            existing = self.find_child(trial_id)
            if existing is not None:
                return existing
            all_tags = {**tags, MLFLOW_PARENT_RUN_ID: self._parent, TRIAL_TAG: trial_id}
            return self.client.create_run(self.experiment_id, tags=all_tags).info.run_id

    def find_child(self, trial_id: str) -> str | None:
        runs = self._children(f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def close_child(self, trial_id: str, outcome: str) -> None:
        """Record how a trial ended; a child still RUNNING is ended with the matching status."""
        run_id = self.find_child(trial_id)
        if run_id is None:
            return
        self.client.set_tag(run_id, OUTCOME_TAG, outcome)
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, OUTCOME_STATUS[outcome])

    def tag_child(self, trial_id: str, tags: dict[str, str]) -> None:
        run_id = self.find_child(trial_id)
        if run_id is not None:
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    def kill_running_children(self) -> int:
        """Mark children left RUNNING (their trials were cut off) KILLED; returns how many."""
        running = RunStatus.to_string(RunStatus.RUNNING)
        runs = self._children(f"attributes.status = '{running}'", max_results=10_000)
        for run in runs:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(runs)

    def _children(self, condition: str, max_results: int) -> list[Any]:
        """The parent's child runs that also meet ``condition`` (an MLflow filter clause)."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self._parent}' and {condition}",
            max_results=max_results,
        )


def child_tags(spec_name: str, meta: dict[str, Any]) -> dict[str, str]:
    """The tags a child run is created with: what the report groups and compares by."""
    return {
        SWEEP_TAG: spec_name,
        "ntng.strategy": meta["strategy"],
        "ntng.phase": meta["phase"],
        "ntng.seed": str(meta["seed"]),
        "ntng.budget_rst_seconds": repr(float(meta["budget"])),
        "ntng.stage": meta["stage"],
    }
