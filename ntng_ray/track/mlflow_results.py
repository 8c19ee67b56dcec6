"""Reading finished (or running) runs back from MLflow as plain records, for the report.

The report never sees MLflow's types: a run is a ``RunRecord`` (id, status, start time, tags,
params, latest metrics) and a metric's history a {step: value} mapping. Nothing here writes
runs, and opening a store that does not exist is an error (no empty SQLite file is made).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ntng_ray.errors import NtngError
from ntng_ray.track.mlflow_run import open_client, sqlite_path

T = TypeVar("T")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, ...
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # each metric's latest value


def _record(run: Run) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        status=run.info.status,
        start_time=run.info.start_time,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


def _all_pages(fetch: Callable[[str | None], list[T]]) -> list[T]:
    items: list[T] = []
    token = None
    while True:
        page = fetch(token)
        items.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return items


class MlflowResults:
    """Runs of an MLflow store, read as ``RunRecord``s."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None where the store has no run ``run_id``."""
        try:
            return _record(self.client.get_run(run_id))
        except MlflowException:
            return None

    def search(self, filter_string: str) -> list[RunRecord]:
        """Runs matching ``filter_string`` in every experiment: a sweep's runs may be anywhere."""
        client = self.client
        experiment_ids = [
            e.experiment_id for e in _all_pages(lambda t: client.search_experiments(page_token=t))
        ]
        if not experiment_ids:
            return []
        runs = _all_pages(
            lambda t: client.search_runs(experiment_ids, filter_string=filter_string, page_token=t)
        )
        return [_record(run) for run in runs]

    def history(self, run_id: str, key: str) -> dict[int, float]:
        """Metric values by step; where a step was logged twice the later value wins."""
        metrics = sorted(
            self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
        )
        return {m.step: m.value for m in metrics}

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str) -> None:
        """Attach ``files`` to run ``run_id`` under ``artifact_path``."""
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def results_of(source: MlflowResults | MlflowClient) -> MlflowResults:
    """A reader on ``source``: a reader as it is, or one on an MlflowClient."""
    return source if isinstance(source, MlflowResults) else MlflowResults(source)


def open_results(tracking_uri: str) -> MlflowResults:
    """A reader on an existing store: a report never creates an empty SQLite database."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise NtngError(
            f"no MLflow store at {db} (tracking URI {tracking_uri}); pass --tracking-uri or set "
            "MLFLOW_TRACKING_URI to the store the sweep logged to"
        )
    return MlflowResults(open_client(tracking_uri))
