"""MLflow right by construction, checked through MLflow's own API (``MlflowClient``): RST is
every metric's step, a reopened run logs no point twice, config values are params only, the
experiment is a training experiment, and runs carry MLflow's standard fields."""

from __future__ import annotations

import getpass
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from ntng_ray.config import RunConfig
from ntng_ray.sweep.tracking import child_run_name, child_tags, trial_number
from ntng_ray.track.mlflow_run import MlflowRun, ensure_experiment, git_commit, track_run

FINGERPRINT = "f" * 64
PER_STEP = 0.37  # RST seconds a step costs: steps fall between whole milliseconds
# The summary's data figures and the metrics they are logged as.
DATA_FIGURES = {
    "unigram_entropy_nats": 6.0,
    "context_free_bound_nats": 5.45,
    "train_tokens": 1280,
}
DATA_METRICS = {f"data.{key}": value for key, value in DATA_FIGURES.items()}


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def client(uri: str) -> MlflowClient:
    return MlflowClient(uri)


def make_cfg(uri: str, experiment: str, **tracking: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "tiny",
            "model": {"preset": "bert-tiny"},
            "budget": {"rst_seconds": 10},
            "rst": {"table": "paper-t5-a100"},
            "strategy": {"name": "layer_dropping", "gamma_f": 100.0},
            "tracking": {"uri": uri, "experiment": experiment, **tracking},
        }
    )


@pytest.fixture
def cfg(uri: str, request: pytest.FixtureRequest) -> RunConfig:
    return make_cfg(uri, request.node.name)


def clock(step: int) -> dict[str, Any]:
    return {
        "step": step,
        "rst_seconds": PER_STEP * step,
        "rst_progress": PER_STEP * step / 10,
        "wall_seconds": 0.01 * step,
    }


def train(step: int, loss: float | None = None) -> dict[str, Any]:
    """A train record with a strategy's figures (layer dropping's ``theta``) in it."""
    return {
        "event": "train",
        "loss": 5.0 - 0.1 * step if loss is None else loss,
        "lr": 1e-3,
        "grad_norm": 0.5,
        "active_layers": 2,
        "tokens": 128 * step,
        "tokens_per_s": 1000.0,
        "theta": 1.0 - 0.01 * step,
        **clock(step),
    }


def validation(step: int, progress: float) -> dict[str, Any]:
    return {
        "event": "validation",
        "progress": progress,
        "loss": 4.0 - 0.1 * step,
        "train_eval_loss": 3.9 - 0.1 * step,
        **clock(step),
    }


def summary(steps: int) -> dict[str, Any]:
    return {
        "final_validation_loss": 4.0 - 0.1 * steps,
        "final_train_eval_loss": 3.9 - 0.1 * steps,
        "rst_seconds": PER_STEP * steps,
        "steps": steps,
        "tokens": 128 * steps,
        "wall_seconds": 0.5,
        "tokens_per_s": 1000.0,
        "preparation_rst_seconds": 0.0,
        "rst_breakdown": {"train": PER_STEP * steps},
        # layer dropping's summary: two settings (a param already, and one derived) and a figure
        "strategy_summary": {"theta_min": 0.5, "gamma_f": 100.0, "mean_active_layers": 2.5},
        "data": {"corpus_fingerprint": FINGERPRINT, **DATA_FIGURES},
    }


def records(steps: int) -> list[dict[str, Any]]:
    """What the loop reports: validation at 0, a train record per step, validation points at
    the middle step and two (0.75 and the final 1.0) after the last step."""
    out = [validation(0, 0.0)]
    for step in range(1, steps + 1):
        out.append(train(step))
        if step == steps // 2:
            out.append(validation(step, 0.5))
    return [*out, validation(steps, 0.75), validation(steps, 1.0)]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    metrics = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value) for m in metrics]


def ms(record: dict[str, Any]) -> int:
    return round(record["rst_seconds"] * 1000)


def test_every_metric_is_logged_at_its_rst_in_milliseconds(
    cfg: RunConfig, client: MlflowClient, tmp_path: Path
) -> None:
    fed = records(6)
    with track_run(cfg, {}) as run:
        for record in fed:
            run(record)
        run.finish(summary(6), tmp_path)

    got = client.get_run(run.run_id)
    metrics = got.data.metrics
    rst_steps = {ms(r) for r in fed}
    for key in metrics:
        points = history(client, run.run_id, key)
        assert {step for step, _ in points} <= rst_steps, key
    # val_loss: one point per validation record, at its RST (two share the last step).
    validations = [r for r in fed if r["event"] == "validation"]
    assert history(client, run.run_id, "val_loss") == [(ms(r), r["loss"]) for r in validations]
    points = [step for step, _ in history(client, run.run_id, "val_progress_point")]
    assert points == [ms(r) for r in validations]
    # Everything else has one point per RST step.
    for key in metrics.keys() - {"val_loss", "train_eval_loss", "val_progress_point"}:
        steps = Counter(step for step, _ in history(client, run.run_id, key))
        assert max(steps.values()) == 1, key
    assert history(client, run.run_id, "rst_seconds") == [
        (step, pytest.approx(step / 1000, abs=5e-4)) for step in sorted(rst_steps)
    ]
    assert history(client, run.run_id, "optimizer_step") == [
        (ms(clock(step)), step) for step in range(7)
    ]
    assert history(client, run.run_id, "train_loss") == [
        (ms(r), pytest.approx(r["loss"])) for r in fed if r["event"] == "train"
    ]
    # The summary's figures at the last RST step.
    assert history(client, run.run_id, "final_validation_loss") == [
        (ms(clock(6)), pytest.approx(3.4))
    ]
    assert history(client, run.run_id, "mean_active_layers") == [(ms(clock(6)), 2.5)]
    for key, value in DATA_METRICS.items():
        assert history(client, run.run_id, key) == [(ms(clock(6)), value)], key
    assert metrics["tokens"] == 128 * 6 and metrics["rst_train_seconds"] == pytest.approx(2.22)


def test_no_stray_metrics_and_config_values_are_params_only(
    cfg: RunConfig, client: MlflowClient, tmp_path: Path
) -> None:
    with track_run(cfg, {}) as run:
        for record in records(4):
            run(record)
        run.finish(summary(4), tmp_path)

    got = client.get_run(run.run_id)
    metrics, params = got.data.metrics, got.data.params
    assert not {"step", "steps", "event", "gamma_f", "theta_min"} & metrics.keys()
    assert not [k for k in metrics if k.startswith("strategy.")]
    assert {"optimizer_step", "theta", "active_layers", "mean_active_layers"} <= metrics.keys()
    assert params["strategy.gamma_f"] == "100.0"  # from the config, logged once
    assert params["strategy.theta_min"] == "0.5"  # from the summary: a setting, so a param
    assert "strategy.gamma_f.resolved" not in params
    assert not metrics.keys() & {k.removeprefix("strategy.") for k in params}


def test_a_strategy_figure_under_another_name_is_logged_once(
    cfg: RunConfig, client: MlflowClient, tmp_path: Path
) -> None:
    """RHO-loss reports its IL cost as ``rho_il_rst_seconds``: it is preparation_rst_seconds."""
    with track_run(cfg, {}) as run:
        run(validation(0, 0.0))
        run(train(1) | {"selection_ratio": 0.25, "rho_il_rst_seconds": 3.0})
        run(validation(1, 1.0))
        done = summary(1) | {"preparation_rst_seconds": 3.0}
        done["strategy_summary"] = {"selection_ratio": 0.25, "rho_il_rst_seconds": 3.0}
        run.finish(done, tmp_path)
    got = client.get_run(run.run_id)
    assert got.data.metrics["preparation_rst_seconds"] == 3.0
    assert "rho_il_rst_seconds" not in got.data.metrics
    assert "strategy.rho_il_rst_seconds" not in got.data.params
    assert history(client, run.run_id, "selection_ratio") == [(ms(clock(1)), 0.25)]


def test_a_reopened_run_skips_the_records_it_logged_before(
    cfg: RunConfig, client: MlflowClient, tmp_path: Path
) -> None:
    """Interrupted after step 4 with its checkpoint at step 2: the restored run redoes 3 and 4
    (here with other values, to see which is kept) and goes on; each RST step has one value."""
    first = MlflowRun.start(cfg, {})
    for record in records(8)[:6]:  # validation 0, train 1-4 (validation at 4)
        first(record)
    first.end("KILLED")
    assert history(client, first.run_id, "train_loss")[-1][0] == ms(clock(4))

    with track_run(cfg, {}, run_id=first.run_id) as second:
        for step in range(3, 9):
            second(train(step, loss=9.0))
        second(validation(8, 1.0))
        second.finish(summary(8), tmp_path)

    losses = history(client, first.run_id, "train_loss")
    assert [step for step, _ in losses] == [ms(clock(s)) for s in range(1, 9)]
    assert [value for _, value in losses] == pytest.approx([4.9, 4.8, 4.7, 4.6, 9, 9, 9, 9])
    for key in ("rst_seconds", "optimizer_step", "theta", "val_loss"):
        steps = [step for step, _ in history(client, first.run_id, key)]
        assert len(steps) == len(set(steps)), key
    assert history(client, first.run_id, "final_validation_loss") == [
        (ms(clock(8)), pytest.approx(3.2))
    ]


def test_a_reopened_run_finishing_at_its_last_logged_step_logs_its_final_figures(
    cfg: RunConfig, client: MlflowClient, tmp_path: Path
) -> None:
    first = MlflowRun.start(cfg, {})
    for record in records(2):
        first(record)
    first.end("KILLED")
    with track_run(cfg, {}, run_id=first.run_id) as second:
        for record in records(2)[2:]:
            second(record)
        second.finish(summary(2), tmp_path)
    for key, value in {"final_validation_loss": pytest.approx(3.8), **DATA_METRICS}.items():
        assert history(client, first.run_id, key) == [(ms(clock(2)), value)], key
    assert history(client, first.run_id, "rst_seconds")[-1][0] == ms(clock(2))
    assert len(history(client, first.run_id, "optimizer_step")) == 3


def test_experiment_is_a_training_experiment(uri: str, client: MlflowClient) -> None:
    made = ensure_experiment(client, "kind-new", None)
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"

    existing = client.create_experiment("kind-existing")
    assert "mlflow.experimentKind" not in client.get_experiment(existing).tags
    assert ensure_experiment(client, "kind-existing", None) == existing
    tags = client.get_experiment(existing).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"

    MlflowRun.start(make_cfg(uri, "kind-by-run"), {}).end("FINISHED")
    experiment = client.get_experiment_by_name("kind-by-run")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_standard_fields_git_commit_user_source_and_dataset(
    cfg: RunConfig, client: MlflowClient, tmp_path: Path
) -> None:
    with track_run(cfg, {}) as run:
        for record in records(2):
            run(record)
        run.finish(summary(2), tmp_path)
    got = client.get_run(run.run_id)
    assert got.data.tags["mlflow.source.git.commit"] == git_commit()
    assert got.data.tags["mlflow.user"] == getpass.getuser()
    assert got.data.tags["mlflow.source.name"]
    (dataset_input,) = got.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic"
    assert dataset_input.dataset.digest == FINGERPRINT[:36]
    assert FINGERPRINT in dataset_input.dataset.source
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}


def test_parent_name_and_tags_from_the_tracking_config(
    uri: str, client: MlflowClient, request: pytest.FixtureRequest
) -> None:
    parent = MlflowRun.start(make_cfg(uri, request.node.name), {})
    client.set_tag(parent.run_id, "mlflow.source.name", "ntng sweep sweeps/debug.yaml")
    cfg = make_cfg(
        uri,
        request.node.name,
        parent_run_id=parent.run_id,
        run_name="rho_loss · prepare",
        tags={"ntng.phase": "prepare", "ntng.strategy": "rho_loss"},
    )
    child = MlflowRun.start(cfg, {"ntng.strategy": "rho_il_model", "mlflow.runName": "x"})
    child.end("FINISHED")
    tags = client.get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id
    assert tags["mlflow.runName"] == "rho_loss · prepare"
    assert tags["ntng.phase"] == "prepare" and tags["ntng.strategy"] == "rho_loss"
    # made in a Ray worker, a child names the command that started its sweep
    assert tags["mlflow.source.name"] == "ntng sweep sweeps/debug.yaml"
    parent.end("FINISHED")


def test_a_reopened_run_keeps_its_name(cfg: RunConfig, client: MlflowClient) -> None:
    """A sweep's child is created with its short name; the trial reopening it keeps it."""
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, None)
    made = client.create_run(experiment_id, tags={"mlflow.runName": "baseline · tune · 2"})
    MlflowRun.start(cfg, {"mlflow.runName": "tiny"}, run_id=made.info.run_id).end("FINISHED")
    assert client.get_run(made.info.run_id).info.run_name == "baseline · tune · 2"


def test_child_run_names_are_short_and_strategy_first() -> None:
    meta = {"strategy": "layer_dropping", "seed": 1, "budget": 4.0, "stage": "b4-final"}
    assert child_run_name(meta | {"phase": "final"}) == "layer_dropping · final · s1"
    assert child_run_name(meta | {"phase": "tune", "index": 3}) == "layer_dropping · tune · 3"
    tags = child_tags("debug", meta | {"phase": "tune", "index": 2})
    assert tags["mlflow.runName"] == "layer_dropping · tune · 2"
    assert tags["ntng.phase"] == "tune" and tags["ntng.sweep"] == "debug"
    assert trial_number("a1b2c_00002") == 3
    assert trial_number("a1b2c_00000") == 1
    assert trial_number("odd") is None


def test_preparation_run_is_a_child_of_the_sweep(tmp_path: Path) -> None:
    """The sweep's preparation (RHO-loss's IL model) runs tracked, as a child of the parent run
    with phase ``prepare``; the IL model's run config keeps those settings."""
    from ntng_ray.preparation.strategy import preparation_for
    from ntng_ray.sweep.plan import base_mapping, preparation_config, stages
    from ntng_ray.sweep.spec import load_sweep

    spec = load_sweep(str(Path(__file__).resolve().parents[2] / "sweeps" / "debug.yaml"))
    base = base_mapping(spec)
    stage = next(s for s in stages(spec) if s.kind == "prepare")
    assert not preparation_config(spec, base, stage).tracking.enabled  # no parent: untracked

    cfg = preparation_config(spec, base, stage, "parent-id")
    tracking = cfg.tracking
    store = base["tracking"]["uri"]  # the sweep's own store, pinned for other processes
    assert tracking.enabled and tracking.uri == store and tracking.parent_run_id == "parent-id"
    assert tracking.tags["ntng.phase"] == "prepare"
    assert tracking.tags["ntng.strategy"] == stage.strategy == "rho_loss"
    assert tracking.run_name == "rho_loss · prepare"
    preparation = preparation_for(cfg)
    assert preparation is not None
    assert preparation.run_config(tmp_path / "il").tracking == tracking
