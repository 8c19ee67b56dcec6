"""Reading finished (or running) runs back from MLflow as plain records, for the report.

The report never sees MLflow's types: a run is a ``RunRecord`` (id, status, start time, tags,
params, latest metrics) and a metric's history a {step: value} mapping. Opening a store that
does not exist is an error (no empty SQLite file is made). The only writes are the report's own:
its files, and the answer it sets on the sweep's parent run (description, metrics, tags).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunTag
from mlflow.exceptions import MlflowException

from ntng_ray.errors import NtngError
from ntng_ray.track.mlflow_run import open_client, sqlite_path
from ntng_ray.track.schema import MLFLOW_NOTE_CONTENT

T = TypeVar("T")
BATCH = 100
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, ...
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # each metric's latest value
    experiment_id: str = ""


def _record(run: Run) -> RunRecord:
    return RunRecord(
        experiment_id=run.info.experiment_id,
        run_id=run.info.run_id,
        status=run.info.status,
        start_time=run.info.start_time,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


@contextmanager
def _quiet_download() -> Iterator[None]:
    """No download progress bar on the terminal (the user's own setting wins)."""
    if PROGRESS_BAR_ENV in os.environ:
        yield
        return
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_BAR_ENV, None)


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

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """The text of run ``run_id``'s artifact ``path``; None where it has none (or it cannot
        be read)."""
        with tempfile.TemporaryDirectory(prefix="ntng-artifact-") as folder, _quiet_download():
            try:
                local = self.client.download_artifacts(run_id, path, folder)
                return Path(local).read_text(encoding="utf-8")
            except (MlflowException, OSError, UnicodeDecodeError):
                return None

    def set_run_note(self, run_id: str, text: str) -> None:
        """Set run ``run_id``'s description (``mlflow.note.content``, Markdown in the UI)."""
        self.client.set_tag(run_id, MLFLOW_NOTE_CONTENT, text)

    def log_values(
        self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]
    ) -> None:
        """Log ``metrics`` (at step 0; a later call's value is the latest) and set ``tags``."""
        stamp = int(time.time() * 1000)
        entries = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        entries += [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(entries), BATCH):  # MLflow takes at most 100 tags a batch
            chunk = entries[start : start + BATCH]
            self.client.log_batch(
                run_id,
                metrics=[e for e in chunk if isinstance(e, Metric)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
            )


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
