"""What the run path and the sweep need from a tracker, and the functions that give them one.

``RunTracker`` is one tracked run as the loop sees it (a reporter that also closes the run);
``SweepRuns`` is a sweep's parent run and its children. MLflow implements both
(``mlflow_run.MlflowRun``, ``mlflow_sweep.MlflowSweepRuns``); callers above ``track`` use these
types and functions and never import MLflow. MLflow itself is imported only when a function
here is called, so the loop runs where it is not installed while tracking is off.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from ntng_ray.config import RunConfig, TrackingConfig


class RunTracker(Protocol):
    """One tracked run, fed by the loop as a reporter."""

    @property
    def run_id(self) -> str: ...

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Take one loop record (train or validation event)."""

    def finish(self, summary: Mapping[str, Any], output_dir: Path) -> None:
        """Log the final figures and the run's files; the run ends FINISHED."""

    def end(self, status: str) -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED); once only."""


class SweepRuns(Protocol):
    """A sweep's store: its parent run and one child run per trial, found by trial id."""

    uri: str
    parent_run_id: str | None

    def start_parent(
        self, tags: Mapping[str, str], params: Mapping[str, str], files: Mapping[str, str]
    ) -> str: ...

    def reopen_parent(self) -> None: ...

    def end_parent(self, status: str, metrics: Mapping[str, float]) -> None: ...

    def child_run(self, trial_id: str, tags: Mapping[str, str]) -> str: ...

    def find_child(self, trial_id: str) -> str | None: ...

    def close_child(self, trial_id: str, outcome: str) -> None: ...

    def tag_child(self, trial_id: str, tags: Mapping[str, str]) -> None: ...

    def kill_running_children(self) -> int: ...

    def record_run(
        self, tags: Mapping[str, str], metrics: Mapping[str, float], status: str = ...
    ) -> str:
        """A child run made and ended at once (e.g. a suite's average over its tasks)."""

    def complete_run(
        self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]
    ) -> None:
        """Log a child's final metrics and tags, then mark it FINISHED."""


def resolve_store(tracking: TrackingConfig) -> str:
    """The tracking URI runs of ``tracking`` log to (made absolute for other processes)."""
    from ntng_ray.track.mlflow_run import resolve_tracking_uri

    return resolve_tracking_uri(tracking)


def flatten_params(mapping: Mapping[str, Any]) -> dict[str, str]:
    """Nested settings as dotted keys with string values, as run params are stored."""
    from ntng_ray.track.mlflow_run import flatten_params as mlflow_flatten_params

    return mlflow_flatten_params(mapping)


def run_tags(
    cfg: RunConfig, table_id: str, table_sha256: str, hardware: str | None = None
) -> dict[str, str]:
    """The provenance tags of a run (see ``mlflow_run.run_tags``)."""
    from ntng_ray.track.mlflow_run import run_tags as mlflow_run_tags

    return mlflow_run_tags(cfg, table_id, table_sha256, hardware)


def track_run(
    cfg: RunConfig, tags: Mapping[str, str], run_id: str | None = None
) -> AbstractContextManager[RunTracker]:
    """A started (or reopened) run whose end status matches what happened in the block."""
    from ntng_ray.track.mlflow_run import track_run as mlflow_track_run

    return mlflow_track_run(cfg, tags, run_id)


def start_run(cfg: RunConfig, tags: Mapping[str, str], run_id: str | None = None) -> RunTracker:
    """Create a run (or reopen ``run_id``); the caller ends it."""
    from ntng_ray.track.mlflow_run import MlflowRun

    return MlflowRun.start(cfg, tags, run_id)


def end_run(cfg: RunConfig, run_id: str, status: str) -> None:
    """End run ``run_id`` with ``status`` from a process that did not start it."""
    start_run(cfg, {}, run_id).end(status)


def open_sweep_runs(tracking: TrackingConfig, parent_run_id: str | None = None) -> SweepRuns:
    """The sweep's store and experiment, with its parent run when it exists already."""
    from ntng_ray.track.mlflow_sweep import MlflowSweepRuns

    return MlflowSweepRuns(tracking, parent_run_id)
