"""MLflow tracking: where the store is, what a run records, and that its status tells the truth."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import ntng_ray
from ntng_ray.config import RunConfig, TrackingConfig
from ntng_ray.errors import NtngError
from ntng_ray.track.interrupts import RunTerminated, sigterm_as_interrupt
from ntng_ray.track.mlflow_run import (
    TRACKED_PACKAGES,
    MlflowRun,
    flatten_params,
    package_versions,
    resolve_tracking_uri,
    run_tags,
    sqlite_path,
    track_run,
)

TABLE_ID = "paper-t5-a100@v1"
TABLE_SHA = "ab" * 32


def make_cfg(tracking_uri: str | None = None, experiment: str = "test") -> RunConfig:
    """The smallest valid run config, logging to ``tracking_uri``."""
    return RunConfig.model_validate(
        {
            "name": "tiny",
            "model": {"preset": "bert-tiny"},
            "budget": {"rst_seconds": 10},
            "rst": {"table": "paper-t5-a100"},
            "tracking": {"uri": tracking_uri, "experiment": experiment},
        }
    )


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (a fresh SQLite store costs a second of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def cfg(uri: str, request: pytest.FixtureRequest) -> RunConfig:
    """A config whose experiment is the test's own, so tests sharing the store do not mix."""
    return make_cfg(uri, experiment=request.node.name)


@pytest.fixture
def tags(cfg: RunConfig) -> dict[str, str]:
    return run_tags(cfg, TABLE_ID, TABLE_SHA, hardware="test CPU")


def train(step: int, grad_norm: float | None = 0.5) -> dict[str, Any]:
    return {
        "event": "train",
        "loss": 5.0 - 0.1 * step,
        "lr": 1e-3,
        "grad_norm": grad_norm,
        "tokens": 128 * step,
        "tokens_per_s": 1000.0,
        "step": step,
        "rst_seconds": 0.5 * step,
        "rst_progress": 0.05 * step,
        "wall_seconds": 0.1 * step,
    }


def validation(step: int, progress: float) -> dict[str, Any]:
    return {
        "event": "validation",
        "progress": progress,
        "loss": 4.0,
        "train_eval_loss": 3.9,
        "step": step,
        "rst_seconds": 0.5 * step,
        "rst_progress": 0.05 * step,
        "wall_seconds": 0.1 * step,
    }


def summary(steps: int) -> dict[str, Any]:
    return {
        "final_validation_loss": 4.0,
        "final_train_eval_loss": 3.9,
        "rst_seconds": 0.5 * steps,
        "steps": steps,
        "wall_seconds": 1.2,
        "tokens_per_s": 1000.0,
        "reference_table": {"id": TABLE_ID, "sha256": TABLE_SHA},
        "data": {
            "unigram_entropy_nats": 6.0,
            "context_free_bound_nats": 5.45,
            "train_tokens": 1280,
        },
    }


def write_outputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("name: tiny\n")
    (folder / "metrics.jsonl").write_text(json.dumps(train(1)) + "\n")
    (folder / "summary.json").write_text(json.dumps(summary(1)))
    return folder


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


# --- the store's URI -------------------------------------------------------------------------


def test_uri_from_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env/mlflow.db")
    assert resolve_tracking_uri(TrackingConfig(uri="http://tracker:5000")) == "http://tracker:5000"


def test_uri_from_environment_when_config_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////env/mlflow.db")
    assert resolve_tracking_uri(TrackingConfig()) == "sqlite:////env/mlflow.db"


def test_default_uri_is_absolute_sqlite_in_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri(TrackingConfig())
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert sqlite_path(uri) == tmp_path.resolve() / "mlflow.db"


def test_sqlite_path_of_other_uris() -> None:
    assert sqlite_path("http://tracker:5000") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:////a/b.db?timeout=5") == Path("/a/b.db")


# --- params and tags -------------------------------------------------------------------------


def test_flatten_params_dotted_keys_and_json_values() -> None:
    flat = flatten_params(
        {
            "a": {"b": {"c": 1}, "d": [0.25, 1.0], "e": None, "f": True, "g": "text"},
            "empty": {},
            "lr": 1e-3,
        }
    )
    assert flat == {
        "a.b.c": "1",
        "a.d": "[0.25, 1.0]",
        "a.e": "null",
        "a.f": "true",
        "a.g": "text",
        "empty": "{}",
        "lr": "0.001",
    }


def test_flatten_params_respects_mlflow_value_limit() -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    flat = flatten_params({"files": ["x" * 100] * 100})
    assert len(flat["files"]) == MAX_PARAM_VAL_LENGTH


def test_run_tags_name_what_ran_and_where(cfg: RunConfig, tags: dict[str, str]) -> None:
    assert tags["mlflow.runName"] == "tiny"
    assert tags["ntng.model"] == "bert-tiny"
    assert tags["ntng.strategy"] == "baseline"
    assert tags["ntng.budget_rst_seconds"] == "10.0"
    assert tags["ntng.seed"] == "0"
    assert tags["ntng.rst_table"] == TABLE_ID
    assert tags["ntng.rst_table_sha256"] == TABLE_SHA
    assert tags["ntng.hardware"] == "test CPU"
    assert tags["ntng.git_commit"]
    assert tags["ntng.version.ntng_ray"] == ntng_ray.__version__
    assert {f"ntng.version.{name}" for name in TRACKED_PACKAGES} <= tags.keys()
    assert run_tags(cfg, TABLE_ID, TABLE_SHA)["ntng.hardware"]
    assert package_versions(("no-such-package-ntng",)) == {"no-such-package-ntng": "not installed"}


# --- a run -----------------------------------------------------------------------------------


def test_finished_run_has_params_tags_metrics_and_artifacts(
    cfg: RunConfig, tags: dict[str, str], uri: str, tmp_path: Path
) -> None:
    output = write_outputs(tmp_path / "out")
    with track_run(cfg, tags) as run:
        run(validation(0, 0.0))
        run(train(1, grad_norm=None))
        run(train(2))
        run(validation(2, 1.0))
        run.finish(summary(2), output)

    client = MlflowClient(uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "tiny"
    assert got.data.params["budget.rst_seconds"] == "10.0"
    assert got.data.params["model.preset"] == "bert-tiny"
    assert got.data.params["eval.points"] == "[0.0, 0.25, 0.5, 0.75, 1.0]"
    assert got.data.tags["ntng.rst_table"] == TABLE_ID
    assert got.data.tags["ntng.rst_table_sha256"] == TABLE_SHA
    assert "ntng.git_commit" in got.data.tags
    # MLflow's step is the RST in milliseconds; each metric has one point per RST step.
    assert history(client, run.run_id, "val_loss") == [(0, 4.0), (1000, 4.0)]
    assert history(client, run.run_id, "val_progress_point") == [(0, 0.0), (1000, 1.0)]
    assert history(client, run.run_id, "grad_norm") == [(1000, 0.5)]
    assert history(client, run.run_id, "train_loss") == [(500, 4.9), (1000, 4.8)]
    assert history(client, run.run_id, "rst_seconds") == [(0, 0.0), (500, 0.5), (1000, 1.0)]
    assert history(client, run.run_id, "optimizer_step") == [(0, 0), (500, 1), (1000, 2)]
    assert got.data.metrics["rst_seconds"] == 1.0
    assert got.data.metrics["final_validation_loss"] == 4.0
    assert history(client, run.run_id, "final_validation_loss") == [(1000, 4.0)]
    assert history(client, run.run_id, "data.unigram_entropy_nats") == [(1000, 6.0)]
    assert history(client, run.run_id, "data.context_free_bound_nats") == [(1000, 5.45)]
    assert history(client, run.run_id, "data.train_tokens") == [(1000, 1280)]
    assert got.data.metrics["optimizer_step"] == 2
    assert not {"step", "steps"} & got.data.metrics.keys()
    assert {a.path for a in client.list_artifacts(run.run_id)} == {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
    }
    store_folder = sqlite_path(uri).parent
    assert Path(got.info.artifact_uri.removeprefix("file://")).is_relative_to(store_folder)


def test_metrics_are_batched_until_a_flush_point(cfg: RunConfig, tags: dict[str, str]) -> None:
    run = MlflowRun.start(cfg, tags)
    run(train(1))
    client = MlflowClient(cfg.tracking.uri)
    assert history(client, run.run_id, "train_loss") == []
    run(validation(1, 0.5))
    assert history(client, run.run_id, "train_loss") == [(500, 4.9)]
    run.end("KILLED")


def test_reopened_run_continues_the_same_mlflow_run(
    cfg: RunConfig, tags: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(KeyboardInterrupt), track_run(cfg, tags) as first:
        first(train(1))
        raise KeyboardInterrupt
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(first.run_id).info.status == "KILLED"

    with track_run(cfg, tags, run_id=first.run_id) as second:
        assert client.get_run(first.run_id).info.status == "RUNNING"
        second(train(2))
        second.finish(summary(2), write_outputs(tmp_path / "out"))

    assert second.run_id == first.run_id
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert runs[0].info.status == "FINISHED"
    assert history(client, first.run_id, "train_loss") == [(500, 4.9), (1000, 4.8)]


def test_reopening_an_unknown_run_id_is_a_clear_error(cfg: RunConfig, tags: dict[str, str]) -> None:
    MlflowRun.start(cfg, tags).end("FINISHED")
    with pytest.raises(NtngError, match="no-such-run"):
        MlflowRun.start(cfg, tags, run_id="no-such-run")


def test_exception_ends_the_run_failed(cfg: RunConfig, tags: dict[str, str]) -> None:
    with pytest.raises(RuntimeError), track_run(cfg, tags) as run:
        run(train(1))
        raise RuntimeError("boom")
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert history(client, run.run_id, "train_loss") == [(500, 4.9)]


def test_block_without_finish_ends_failed(cfg: RunConfig, tags: dict[str, str]) -> None:
    with track_run(cfg, tags) as run:
        run(train(1))
    assert MlflowClient(cfg.tracking.uri).get_run(run.run_id).info.status == "FAILED"


def test_keyboard_interrupt_ends_the_run_killed(cfg: RunConfig, tags: dict[str, str]) -> None:
    with pytest.raises(KeyboardInterrupt), track_run(cfg, tags) as run:
        raise KeyboardInterrupt
    assert MlflowClient(cfg.tracking.uri).get_run(run.run_id).info.status == "KILLED"


def test_sigterm_ends_the_run_killed_and_restores_the_handler(
    cfg: RunConfig, tags: dict[str, str]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunTerminated), track_run(cfg, tags) as run:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    assert MlflowClient(cfg.tracking.uri).get_run(run.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_goes_to_a_ctrl_c_handler_installed_in_the_block_only() -> None:
    """A SIGINT handler left behind before the block (a library's) does not swallow SIGTERM;
    one the block installs (Ray Tune's while a sweep stage runs) receives it."""
    calls: list[int] = []
    original = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
        with pytest.raises(RunTerminated), sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        assert calls == []
        with sigterm_as_interrupt():
            signal.signal(signal.SIGINT, lambda signum, frame: calls.append(-signum))
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        assert calls == [-signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, original)


def test_end_rejects_unknown_status(cfg: RunConfig, tags: dict[str, str]) -> None:
    run = MlflowRun.start(cfg, tags)
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        run.end("DONE")
    run.end("FINISHED")


def test_deleted_experiment_is_a_clear_error(cfg: RunConfig, tags: dict[str, str]) -> None:
    run = MlflowRun.start(cfg, tags)
    run.end("FINISHED")
    client = MlflowClient(cfg.tracking.uri)
    client.delete_experiment(client.get_experiment_by_name(cfg.tracking.experiment).experiment_id)
    with pytest.raises(NtngError, match="deleted"):
        MlflowRun.start(cfg, tags)


def _first_run(cfg: RunConfig, go: Event) -> None:
    go.wait()
    MlflowRun.start(cfg, {"mlflow.runName": "raced"}).end("FINISHED")


@pytest.mark.integration
def test_processes_racing_on_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    """Two first runs at once: one migrates the new SQLite store, neither fails."""
    cfg = make_cfg(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="raced")
    context = multiprocessing.get_context("fork")  # mlflow is imported already: start fast
    go = context.Event()
    procs = [context.Process(target=_first_run, args=(cfg, go)) for _ in range(3)]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name("raced")
    assert len(client.search_runs([experiment.experiment_id])) == 3
