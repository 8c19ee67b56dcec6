"""Record a run in MLflow: resolved config, provenance tags, metrics against RST, final status.

Built on ``MlflowClient`` with explicit run ids, never the fluent active-run state, so a run
created in one process (a driver) can be continued in another (a Ray worker, a restored run).
Only rank 0 should create or feed an ``MlflowRun``.

Every metric is logged at MLflow step = the RST spent when it was measured, in whole
milliseconds (``schema.rst_step``), so each chart's default "Step" axis is RST; the optimizer
step is the metric ``optimizer_step``. Each metric has one value per RST step (validation
figures excepted: two validation points can fall after the same optimizer step), and a reopened
run skips the records it logged before its interruption. Config values are params only.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.entities.lifecycle_stage import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from ntng_ray import __version__
from ntng_ray.config import RunConfig, TrackingConfig
from ntng_ray.errors import NtngError
from ntng_ray.track import schema as s
from ntng_ray.track.interrupts import sigterm_as_interrupt

__all__ = ["MlflowRun", "run_tags", "track_run"]

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "ray",
    "deepspeed",
    "mlflow",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
ARTIFACT_FOLDER = "mlartifacts"
FLUSH_EVERY = 50
END_STATUSES = s.END_STATUSES

# Loop record key -> MLflow metric name, per event kind.
EVENT_METRICS: dict[str, dict[str, str]] = {
    "train": {
        "loss": s.METRIC_TRAIN_LOSS,
        "lr": "lr",
        "grad_norm": "grad_norm",
        "tokens": s.METRIC_TOKENS,
        "tokens_per_s": s.METRIC_TOKENS_PER_S,
    },
    "validation": {
        "loss": s.METRIC_VAL_LOSS,
        "train_eval_loss": s.METRIC_TRAIN_EVAL_LOSS,
        "progress": s.METRIC_VAL_PROGRESS_POINT,
    },
}
# Every record's clock, under these names; its "step" is the optimizer step.
CLOCK_METRICS = {
    "step": s.METRIC_OPTIMIZER_STEP,
    "rst_seconds": s.METRIC_RST_SECONDS,
    "rst_progress": s.METRIC_RST_PROGRESS,
    "wall_seconds": s.METRIC_WALL_SECONDS,
}
# Record keys that are no metric: the event kind.
NOT_METRICS = frozenset({"event"})
# Summary key -> final metric, logged at the run's last RST step.
FINAL_METRICS = {
    "final_validation_loss": s.METRIC_FINAL_VALIDATION_LOSS,
    "final_train_eval_loss": s.METRIC_FINAL_TRAIN_EVAL_LOSS,
    "rst_seconds": s.METRIC_RST_SECONDS,
    "steps": s.METRIC_OPTIMIZER_STEP,
    "tokens": s.METRIC_TOKENS,
    "wall_seconds": s.METRIC_WALL_SECONDS,
    "tokens_per_s": s.METRIC_TOKENS_PER_S,
    "compile_seconds": s.METRIC_COMPILE_SECONDS,
    "preparation_rst_seconds": s.METRIC_PREPARATION_RST_SECONDS,
}
# Summary "data" key -> final metric, logged beside FINAL_METRICS.
DATA_METRICS = {
    "unigram_entropy_nats": s.METRIC_DATA_UNIGRAM_ENTROPY,
    "context_free_bound_nats": s.METRIC_DATA_CONTEXT_FREE_BOUND,
    "train_tokens": s.METRIC_DATA_TRAIN_TOKENS,
}
# A strategy summary field logged as a param goes under this prefix (beside its settings).
STRATEGY_PARAM_PREFIX = "strategy."
# ... or, when the setting of that name was logged with another value (e.g. null: the
# strategy resolved it), under this suffix.
RESOLVED_SUFFIX = ".resolved"
MAX_DATASET_DIGEST = 36  # MLflow's column width
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


# --- where the store is ----------------------------------------------------------------------


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else SQLite in the working directory.

    The default is made absolute so that processes started elsewhere (Ray workers) use the
    same database as the process that resolved it.
    """
    if cfg.uri:
        return cfg.uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths against the cwd), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    raw = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(raw).resolve()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def store_lock(tracking_uri: str) -> AbstractContextManager[None]:
    """Serialize set-up of a SQLite store across processes; other stores need no lock.

    Two processes initializing a fresh SQLite database at once both run MLflow's schema
    migrations, and the loser can leave the database half-migrated for good.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        return nullcontext()
    db.parent.mkdir(parents=True, exist_ok=True)
    return _exclusive(db.with_name(db.name + ".lock"))


def open_client(tracking_uri: str) -> MlflowClient:
    """A client on ``tracking_uri``, its store created (and migrated) under ``store_lock``."""
    with store_lock(tracking_uri):
        return MlflowClient(tracking_uri=tracking_uri)


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Beside a SQLite database, so artifacts do not land in whichever cwd made the experiment."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)
    return (db.parent / ARTIFACT_FOLDER / folder).as_uri()


# --- what a run records ----------------------------------------------------------------------


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VAL_LENGTH]


def flatten_params(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted keys with string values, as MLflow params must be.

    Lists and scalars are written as JSON (None as "null"), so a param reads back unambiguously;
    values are cut to MLflow's length limit rather than failing the run.
    """
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = _param_value(value)
    return flat


def git_commit(path: Path = PACKAGE_DIR) -> str:
    """HEAD of the git checkout the code runs from, or "unknown" (an installed wheel)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def source_name(argv: list[str] | None = None) -> str:
    """The command that started the process, as ``mlflow.source.name`` (``ntng sweep x.yaml``)."""
    argv = list(sys.argv if argv is None else argv) or ["python"]
    program = Path(argv[0])
    inside = program.resolve().is_relative_to(PACKAGE_DIR) or program.name == "ntng"
    return " ".join(["ntng" if inside else program.name, *argv[1:]])[:MAX_TAG_VAL_LENGTH]


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def source_tags(
    client: MlflowClient | None = None, parent_run_id: str | None = None
) -> dict[str, str]:
    """MLflow's standard tags of who ran what: git commit, user, command.

    A child run (often made in a Ray worker, whose command says nothing) takes its parent's
    command and user.
    """
    tags = {
        s.MLFLOW_GIT_COMMIT: git_commit(),
        s.MLFLOW_USER: user_name(),
        s.MLFLOW_SOURCE_NAME: source_name(),
    }
    if client is not None and parent_run_id:
        try:
            parent = client.get_run(parent_run_id).data.tags
        except MlflowException:
            return tags
        tags |= {k: parent[k] for k in (s.MLFLOW_USER, s.MLFLOW_SOURCE_NAME) if k in parent}
    return tags


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions read from package metadata, without importing the (heavy) packages."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def host_hardware() -> str:
    """A CPU description, for callers that do not know their accelerator."""
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} CPUs"


def run_tags(
    cfg: RunConfig, table_id: str, table_sha256: str, hardware: str | None = None
) -> dict[str, str]:
    """The tags that let a figure be traced: what ran, on which table, code, packages, hardware.

    ``table_id`` and ``table_sha256`` are those of the table the run charges from (the loop's
    ``plan.table.table_id`` and ``.content_hash``); ``hardware`` defaults to a CPU description.
    """
    tags = {
        s.MLFLOW_RUN_NAME: cfg.tracking.run_name or cfg.name,
        s.TAG_MODEL: cfg.model.preset,
        s.TAG_STRATEGY: cfg.strategy.name,
        s.TAG_BUDGET: repr(cfg.budget.seconds),
        s.TAG_SEED: str(cfg.seed),
        s.TAG_RST_TABLE: table_id,
        s.TAG_RST_TABLE_SHA256: table_sha256,
        s.TAG_GIT_COMMIT: git_commit(),
        s.TAG_HARDWARE: hardware or host_hardware(),
    }
    tags |= {f"{s.TAG_VERSION_PREFIX}{name}": v for name, v in package_versions().items()}
    tags[f"{s.TAG_VERSION_PREFIX}ntng_ray"] = __version__
    return {key: value[:MAX_TAG_VAL_LENGTH] for key, value in tags.items()}


# --- the run ---------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing; safe when processes race to create it.

    The experiment is a training experiment (``mlflow.experimentKind``), so MLflow's UI opens
    it on the runs table; one made without the tag gets it here.
    """
    kind = {s.MLFLOW_EXPERIMENT_KIND: s.EXPERIMENT_KIND_TRAINING}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=kind)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        raise NtngError(
            f"tracking.experiment = {name!r} is a deleted MLflow experiment; restore it "
            "(`mlflow experiments restore`) or choose another name"
        )
    if s.MLFLOW_EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, s.MLFLOW_EXPERIMENT_KIND, s.EXPERIMENT_KIND_TRAINING
        )
    return experiment.experiment_id


def dataset_entity(cfg: RunConfig, fingerprint: str) -> Dataset:
    """The run's corpus as an MLflow dataset: named by its source, digest its fingerprint."""
    data = cfg.data
    if data.source == "hub":
        name = f"hub:{data.hub_name}" + (f"/{data.hub_config}" if data.hub_config else "")
        name += f":{data.hub_split}"
        source_type = "hugging_face"
        source = {"path": data.hub_name, "config_name": data.hub_config, "split": data.hub_split}
    elif data.source == "files":
        name = "files:" + ",".join(data.files)
        source_type, source = "local", {"uri": data.files}
    else:
        name = "synthetic"
        source_type, source = "code", {"synthetic": data.synthetic.model_dump(mode="json")}
    source["corpus_fingerprint"] = fingerprint
    return Dataset(
        name=name[:500],
        digest=fingerprint[:MAX_DATASET_DIGEST],
        source_type=source_type,
        source=json.dumps(source, default=str),
    )


class MlflowRun:
    """One MLflow run, fed by the loop as a reporter; metrics are batched to keep overhead low.

    Implements ``tracker.RunTracker``.
    """

    def __init__(self, client: MlflowClient, run_id: str, cfg: RunConfig | None = None) -> None:
        self._client = client
        self._run_id = run_id
        self._cfg = cfg
        self._pending: list[Metric] = []
        self._last_step: dict[str, int] = {}  # metric -> the RST step it was last logged at
        # The last RST step a reopened run had logged before this process: records up to it
        # are not logged again (a restored run redoes the steps after its last checkpoint).
        self._logged_until: int | None = None
        self.status: str | None = None

    @classmethod
    def start(cls, cfg: RunConfig, tags: Mapping[str, str], run_id: str | None = None) -> MlflowRun:
        """Create a run (and its experiment), or reopen ``run_id`` when a restored run continues.

        ``tracking.tags``, ``tracking.parent_run_id`` and ``tracking.run_name`` go over ``tags``.
        A reopened run keeps its name unless ``tracking.run_name`` sets one.
        """
        uri = resolve_tracking_uri(cfg.tracking)
        client = open_client(uri)
        tags = {**tags, **cfg.tracking.tags}
        if cfg.tracking.parent_run_id:
            tags[s.MLFLOW_PARENT_RUN_ID] = cfg.tracking.parent_run_id
        if cfg.tracking.run_name:
            tags[s.MLFLOW_RUN_NAME] = cfg.tracking.run_name
        if run_id is None:
            location = artifact_location(uri, cfg.tracking.experiment)
            with store_lock(uri):
                experiment_id = ensure_experiment(client, cfg.tracking.experiment, location)
            all_tags = {**source_tags(client, tags.get(s.MLFLOW_PARENT_RUN_ID)), **tags}
            run = cls(client, client.create_run(experiment_id, tags=all_tags).info.run_id, cfg)
        else:
            logged = _reopen(client, run_id, uri)
            run = cls(client, run_id, cfg)
            if not cfg.tracking.run_name and logged.get(s.MLFLOW_RUN_NAME):
                tags.pop(s.MLFLOW_RUN_NAME, None)
            standard = source_tags(client, logged.get(s.MLFLOW_PARENT_RUN_ID))
            missing = {k: v for k, v in standard.items() if k not in logged}
            run._log_batch(tags=[RunTag(k, v) for k, v in {**missing, **tags}.items()])
            run._logged_until = run._last_logged_step()
        run._log_missing_params(flatten_params(cfg.model_dump(mode="json")))
        return run

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def ended(self) -> bool:
        return self.status is not None

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Take one loop record: its metrics at MLflow step = its RST in whole milliseconds."""
        step = s.rst_step(record["rst_seconds"])
        if self._logged_until is not None and step <= self._logged_until:
            return  # logged before the run was interrupted
        event = record.get("event", "")
        names = {**EVENT_METRICS.get(event, {}), **CLOCK_METRICS}
        if event == "train":
            # A strategy's own figures (active layers, theta, selection ratio, ...): own names.
            names |= {
                k: k
                for k, v in record.items()
                if k not in names
                and k not in NOT_METRICS
                and k not in s.STRATEGY_FIGURE_ALIASES
                and _is_number(v)
            }
        stamp = _now_ms()
        repeatable = set(EVENT_METRICS["validation"].values()) if event == "validation" else set()
        for key, name in names.items():
            if record.get(key) is not None:
                self._add(name, record[key], step, stamp, repeat=name in repeatable)
        if event == "validation" or len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def _add(self, name: str, value: Any, step: int, stamp: int, repeat: bool = False) -> None:
        """Queue one point, unless the metric has one at this RST step (or a later one) already.

        ``repeat`` lets a validation figure take a second point at the step of the last one
        (two validation points reached by the same optimizer step).
        """
        last = self._last_step.get(name)
        if last is not None and (step < last or (step == last and not repeat)):
            return
        self._last_step[name] = step
        self._pending.append(Metric(name, float(value), stamp, step))

    def flush(self) -> None:
        """Send buffered metrics now."""
        pending, self._pending = self._pending, []
        self._log_batch(metrics=pending)

    def finish(self, summary: Mapping[str, Any], output_dir: Path) -> None:
        """Log the final figures at the run's last RST step, its dataset and files; FINISHED.

        Measured figures are metrics, the data section's figures as ``data.<key>``; the
        strategy's other summary fields (settings and values derived from them) are params
        ``strategy.<field>``.
        """
        step, stamp = s.rst_step(summary.get("rst_seconds", 0.0)), _now_ms()
        finals = {name: summary.get(key) for key, name in FINAL_METRICS.items()}
        data = summary.get("data", {})
        finals |= {name: data.get(key) for key, name in DATA_METRICS.items()}
        finals |= {f"rst_{k}_seconds": v for k, v in summary.get("rst_breakdown", {}).items()}
        strategy_summary = dict(summary.get("strategy_summary", {}))
        finals |= {
            k: v
            for k, v in strategy_summary.items()
            if k in s.STRATEGY_SUMMARY_METRICS and k not in finals
        }
        logged_before = self._logged_before(step, [k for k, v in finals.items() if _is_number(v)])
        for name, value in finals.items():
            if _is_number(value) and name not in logged_before:
                self._add(name, value, step, stamp)
        self.flush()
        self._log_strategy_params(
            {
                k: v
                for k, v in strategy_summary.items()
                if k not in s.STRATEGY_SUMMARY_METRICS and k not in s.STRATEGY_FIGURE_ALIASES
            }
        )
        self._log_dataset(data.get("corpus_fingerprint"))
        for name in RUN_FILES:
            path = Path(output_dir) / name
            if path.is_file():
                self._client.log_artifact(self._run_id, str(path))
        self.end(s.FINISHED)

    def end(self, status: str) -> None:
        """Flush and mark the run ended with ``status`` (FINISHED, FAILED or KILLED); once only."""
        if status not in END_STATUSES:
            raise ValueError(f"status {status!r}: allowed {', '.join(END_STATUSES)}")
        if self.ended:
            return
        self.flush()
        self._client.set_terminated(self._run_id, status)
        self.status = status

    def _last_logged_step(self) -> int | None:
        """The last RST step the run holds an ``rst_seconds`` point at (None: none yet)."""
        history = self._client.get_metric_history(self._run_id, s.METRIC_RST_SECONDS)
        return max((m.step for m in history), default=None)

    def _logged_before(self, step: int, names: list[str]) -> set[str]:
        """Of ``names``, those a reopened run logged at ``step`` before this process."""
        if self._logged_until is None or step > self._logged_until:
            return set()
        return {
            name
            for name in names
            if name not in self._last_step
            and any(m.step == step for m in self._client.get_metric_history(self._run_id, name))
        }

    def _log_strategy_params(self, fields: Mapping[str, Any]) -> None:
        """The strategy's summary fields that are no measurement, as params beside its settings;
        a setting logged with another value (e.g. null, resolved by the strategy) keeps it, and
        the value used goes under ``strategy.<field>.resolved``."""
        logged = self._client.get_run(self._run_id).data.params
        params = []
        for key, value in fields.items():
            name, text = f"{STRATEGY_PARAM_PREFIX}{key}", _param_value(value)
            if name in logged and logged[name] != text:
                name = f"{name}{RESOLVED_SUFFIX}"
            if name not in logged:
                params.append(Param(name, text))
        self._log_batch(params=params)

    def _log_dataset(self, fingerprint: str | None) -> None:
        """The run's corpus as its training dataset (MLflow's run inputs)."""
        if self._cfg is None or not fingerprint:
            return
        dataset = dataset_entity(self._cfg, str(fingerprint))
        context = InputTag(s.MLFLOW_DATASET_CONTEXT, s.DATASET_CONTEXT_TRAINING)
        try:
            self._client.log_inputs(self._run_id, datasets=[DatasetInput(dataset, [context])])
        except MlflowException:
            log.warning("could not log the dataset of MLflow run %s", self._run_id, exc_info=True)

    def _log_missing_params(self, params: dict[str, str]) -> None:
        """Log params the run lacks; MLflow refuses to change a logged one, so keep those as is."""
        logged = self._client.get_run(self._run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("run %s keeps its first values of params %s", self._run_id, changed)
        missing = [Param(k, v) for k, v in params.items() if k not in logged]
        self._log_batch(params=missing)

    def _log_batch(
        self,
        metrics: list[Metric] | None = None,
        params: list[Param] | None = None,
        tags: list[RunTag] | None = None,
    ) -> None:
        for chunk in _chunks(metrics or [], MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk)
        for chunk in _chunks(params or [], MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)
        for chunk in _chunks(tags or [], MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=chunk)


def _reopen(client: MlflowClient, run_id: str, uri: str) -> dict[str, str]:
    """Mark run ``run_id`` RUNNING again; returns the tags it has."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise NtngError(f"MLflow run id {run_id!r} is not in the tracking store {uri}") from None
    client.update_run(run_id, status="RUNNING")
    return dict(run.data.tags)


# --- ending a run as what happened -----------------------------------------------------------


def _end_after_error(run: MlflowRun, status: str) -> None:
    """End the run without hiding the error that is already propagating."""
    try:
        run.end(status)
    except Exception:
        log.exception("could not mark MLflow run %s as %s", run.run_id, status)


@contextmanager
def track_run(
    cfg: RunConfig, tags: Mapping[str, str], run_id: str | None = None
) -> Iterator[MlflowRun]:
    """Yield a started run whose end status matches what happened in the block.

    FINISHED only if the block called ``finish``; KILLED on KeyboardInterrupt or SIGTERM;
    FAILED on any other exception, or when the block returned without finishing.
    """
    run = MlflowRun.start(cfg, tags, run_id)
    try:
        with sigterm_as_interrupt():
            yield run
    except KeyboardInterrupt:
        _end_after_error(run, s.KILLED)
        raise
    except BaseException:
        _end_after_error(run, s.FAILED)
        raise
    if not run.ended:
        log.warning("MLflow run %s ended without finish(); marking it FAILED", run.run_id)
        run.end(s.FAILED)
