"""A sweep in MLflow: one parent run, one nested child run per Tune trial.

Ray's MLflow callback does not nest runs, so children carry ``mlflow.parentRunId`` themselves.
A child is found again by its Tune trial id, so a trial restarted by a resumed sweep reopens
its own run instead of starting a second one; trials the driver saw stopped, failed or cut off
are closed with the outcome as a tag, never left RUNNING. Implements ``tracker.SweepRuns``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from ntng_ray.config import TrackingConfig
from ntng_ray.track.mlflow_run import (
    artifact_location,
    ensure_experiment,
    open_client,
    resolve_tracking_uri,
    source_tags,
    store_lock,
)
from ntng_ray.track.schema import (
    FINISHED,
    KILLED,
    MLFLOW_PARENT_RUN_ID,
    OUTCOME_STATUS,
    TAG_OUTCOME,
    TAG_TRIAL_ID,
)


class MlflowSweepRuns:
    """The sweep's MLflow store, experiment and parent run."""

    def __init__(self, tracking: TrackingConfig, parent_run_id: str | None = None) -> None:
        self.uri = resolve_tracking_uri(tracking)
        self.client: MlflowClient = open_client(self.uri)
        location = artifact_location(self.uri, tracking.experiment)
        with store_lock(self.uri):
            self.experiment_id = ensure_experiment(self.client, tracking.experiment, location)
        self.parent_run_id = parent_run_id

    def start_parent(
        self, tags: Mapping[str, str], params: Mapping[str, str], files: Mapping[str, str]
    ) -> str:
        """Create the parent run with ``tags``, ``params`` and ``files`` (name -> text)."""
        run = self.client.create_run(self.experiment_id, tags={**source_tags(), **tags})
        self.parent_run_id = run.info.run_id
        for key, value in params.items():
            self.client.log_param(self.parent_run_id, key, value)
        with tempfile.TemporaryDirectory() as folder:
            for name, text in files.items():
                path = Path(folder) / name
                path.write_text(text)
                self.client.log_artifact(self.parent_run_id, str(path))
        return self.parent_run_id

    def reopen_parent(self) -> None:
        self.client.update_run(self._parent, status="RUNNING")

    def end_parent(self, status: str, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.client.log_metric(self._parent, name, value)
        self.client.set_terminated(self._parent, status)

    @property
    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("the sweep's parent run has not been started")
        return self.parent_run_id

    def child_run(self, trial_id: str, tags: Mapping[str, str]) -> str:
        """The trial's child run: the one it made before a restart, else a new one."""
        with store_lock(self.uri):
            existing = self.find_child(trial_id)
            if existing is not None:
                return existing
            all_tags = {
                **source_tags(self.client, self._parent),
                **tags,
                MLFLOW_PARENT_RUN_ID: self._parent,
                TAG_TRIAL_ID: trial_id,
            }
            return self.client.create_run(self.experiment_id, tags=all_tags).info.run_id

    def find_child(self, trial_id: str) -> str | None:
        runs = self._children(f"tags.`{TAG_TRIAL_ID}` = '{trial_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def close_child(self, trial_id: str, outcome: str) -> None:
        """Record how a trial ended; a child still RUNNING is ended with the matching status."""
        run_id = self.find_child(trial_id)
        if run_id is None:
            return
        self.client.set_tag(run_id, TAG_OUTCOME, outcome)
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, OUTCOME_STATUS[outcome])

    def tag_child(self, trial_id: str, tags: Mapping[str, str]) -> None:
        run_id = self.find_child(trial_id)
        if run_id is not None:
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    def kill_running_children(self) -> int:
        """Mark children left RUNNING (their trials were cut off) KILLED; returns how many."""
        running = RunStatus.to_string(RunStatus.RUNNING)
        runs = self._children(f"attributes.status = '{running}'", max_results=10_000)
        for run in runs:
            self.client.set_terminated(run.info.run_id, KILLED)
        return len(runs)

    def record_run(
        self, tags: Mapping[str, str], metrics: Mapping[str, float], status: str = FINISHED
    ) -> str:
        """A run made and ended at once (e.g. a suite's average), a child of the parent."""
        all_tags = {
            **source_tags(self.client, self.parent_run_id),
            **tags,
            MLFLOW_PARENT_RUN_ID: self.parent_run_id or "",
        }
        run_id = self.client.create_run(self.experiment_id, tags=all_tags).info.run_id
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, float(value))
        self.client.set_terminated(run_id, status)
        return run_id

    def complete_run(
        self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]
    ) -> None:
        """Log a child's final metrics and tags, then mark it FINISHED."""
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, float(value))
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, FINISHED)

    def _children(self, condition: str, max_results: int) -> list[Any]:
        """The parent's child runs that also meet ``condition`` (an MLflow filter clause)."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self._parent}' and {condition}",
            max_results=max_results,
        )
