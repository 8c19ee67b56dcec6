"""The run config: shipped configs load, overrides apply, bad values name the field."""

from __future__ import annotations

import pytest

from ntng_ray.config import apply_overrides, load_config, shipped_config_names
from ntng_ray.errors import NtngError


def test_shipped_configs_load_and_resolve() -> None:
    assert {"bert-tiny-synthetic", "t5-tiny-synthetic"} <= set(shipped_config_names())
    cfg = load_config("bert-tiny-synthetic")
    assert cfg.name == "bert-tiny-synthetic"
    assert cfg.preset.family == "bert"
    assert cfg.vocab_size == cfg.preset.vocab_size
    assert cfg.eval.points[0] == 0.0 and cfg.eval.points[-1] == 1.0


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(
        "t5-tiny-synthetic",
        ["budget.rst_seconds=12.5", "optimizer.betas=[0.8, 0.9]", "eval.points=[0.5]", "seed=7"],
    )
    assert cfg.budget.seconds == 12.5
    assert cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.eval.points == [0.0, 0.5, 1.0]
    assert cfg.seed == 7


def test_budget_in_hours() -> None:
    cfg = load_config("bert-tiny-synthetic", ["budget.rst_seconds=null", "budget.rst_hours=6"])
    assert cfg.budget.seconds == 6 * 3600


def test_resolved_config_round_trips(tmp_path) -> None:
    cfg = load_config("bert-tiny-synthetic", ["train.microbatch_size=8"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.preset=bert-huge"],
            "model.preset = 'bert-huge': unknown preset; allowed: bert-tiny",
        ),
        (["budget.rst_seconds=-5"], "budget.rst_seconds = -5"),
        (["budget.rst_hours=6"], "exactly one of rst_seconds or rst_hours"),
        (["schedule.name=cosine"], "schedule.name = 'cosine'"),
        (["tokenizer.vocab_size=100"], "tokenizer.vocab_size = 100"),
        (
            ["train.microbach_size=8"],
            "train.microbach_size = 8: not a known setting; allowed here:",
        ),
        (["eval.points=[0.5, 2]"], "progress points must lie in [0, 1]"),
        (["train.precision=fp16"], "needs backend.engine = 'deepspeed'"),
        (["data.source=files"], "data.files: source=files needs at least one path"),
        (["optimizer.betas=[0.9, 1.5]"], "each beta must be in [0, 1)"),
    ],
)
def test_bad_values_name_the_field(overrides: list[str], expected: str) -> None:
    with pytest.raises(NtngError) as err:
        load_config("bert-tiny-synthetic", overrides)
    assert expected in str(err.value)


def test_malformed_yaml_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: bert-tiny\nbudget: [\n")
    with pytest.raises(NtngError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(NtngError, match="no such file, and no shipped config"):
        load_config(str(tmp_path / "absent.yaml"))


def test_bad_override_syntax() -> None:
    with pytest.raises(NtngError, match="expected key=value"):
        apply_overrides({}, ["budget.rst_seconds"])
    with pytest.raises(NtngError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
