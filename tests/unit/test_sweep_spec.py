"""Sweep files: the fair protocol is enforced before anything runs, and the plan adds up."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ntng_ray.cli import main
from ntng_ray.errors import NtngError
from ntng_ray.sweep.plan import (
    base_mapping,
    check_trial_configs,
    rst_plan,
    stages,
    tuning_seed,
)
from ntng_ray.sweep.spec import load_sweep, shipped_sweep_names

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def write_sweep(tmp_path: Path, **changes) -> str:
    data = {
        "name": "t",
        "base": "bert-tiny-synthetic",
        "budgets": [{"rst_seconds": 10}],
        "strategies": {
            "baseline": {"space": {"optimizer.lr": {"loguniform": [1e-3, 4e-3]}}},
            "lion": {"space": {"optimizer.lr": {"loguniform": [1e-4, 1e-3]}}},
        },
        "search": {"searcher": "random", "trials": 3},
        "final": {"seeds": 2},
    }
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_equal_tuning_counts_pass(tmp_path: Path) -> None:
    spec = load_sweep(write_sweep(tmp_path))
    assert spec.tuning_trials() == {"baseline": 3, "lion": 3}
    assert spec.strategy_order()[0] == "baseline"


def test_unequal_tuning_is_refused_unless_allowed(tmp_path: Path) -> None:
    strategies = {
        "baseline": {"space": {"optimizer.lr": {"choice": [1e-3, 2e-3]}}},
        "lion": {"trials": 5, "space": {"optimizer.lr": {"choice": [1e-4, 2e-4]}}},
    }
    path = write_sweep(tmp_path, strategies=strategies)
    with pytest.raises(NtngError, match=r"unequal tuning.*'lion': 5"):
        load_sweep(path)
    spec = load_sweep(path, ["search.allow_unequal_tuning=true"])
    assert spec.tuning_trials() == {"baseline": 3, "lion": 5}


def test_grid_sizes_must_match_across_strategies(tmp_path: Path) -> None:
    strategies = {
        "baseline": {"space": {"optimizer.lr": {"grid": [1e-3, 2e-3, 3e-3]}}},
        "lion": {"space": {"optimizer.lr": {"grid": [1e-4, 2e-4]}}},
    }
    with pytest.raises(NtngError, match="unequal tuning"):
        load_sweep(write_sweep(tmp_path, strategies=strategies, search={"searcher": "grid"}))


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("data.split_seed", "'data.split_seed' cannot be tuned"),
        ("seed", "'seed' cannot be tuned"),
        ("budget.rst_seconds", "'budget.rst_seconds' cannot be tuned"),
        ("strategy.name", "'strategy.name' cannot be tuned"),
    ],
)
def test_protocol_fixed_keys_cannot_be_searched(tmp_path: Path, key: str, fragment: str) -> None:
    strategies = {"baseline": {"space": {key: {"choice": [1, 2]}}}}
    with pytest.raises(NtngError, match=fragment):
        load_sweep(write_sweep(tmp_path, strategies=strategies))


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ({"optimizer.lr": {"loguniform": [0.0, 1e-3]}}, "positive lower bound"),
        ({"optimizer.lr": {"uniform": [1e-3]}}, "uniform takes 2 numbers"),
        ({"optimizer.lr": {"normalish": [1, 2]}}, "is not a domain"),
        ({"optimizer.lr": {"grid": [1e-3, 2e-3]}}, "only search.searcher = 'grid' takes"),
    ],
)
def test_bad_domains_name_the_key(tmp_path: Path, space: dict, fragment: str) -> None:
    with pytest.raises(NtngError, match=fragment):
        load_sweep(write_sweep(tmp_path, strategies={"baseline": {"space": space}}))


def test_baseline_is_required_and_strategies_known(tmp_path: Path) -> None:
    with pytest.raises(NtngError, match="baseline must be among"):
        load_sweep(write_sweep(tmp_path, strategies={"lion": {}}))
    with pytest.raises(NtngError, match="unknown strategies"):
        load_sweep(write_sweep(tmp_path, strategies={"baseline": {}, "dropout_magic": {}}))


def test_space_values_outside_the_run_config_fail_before_running(tmp_path: Path) -> None:
    """Each space key is tried at its extremes: an LR the config refuses is named at once."""
    strategies = {"baseline": {"space": {"optimizer.lr": {"loguniform": [1e-3, 50.0]}}}}
    spec = load_sweep(write_sweep(tmp_path, strategies=strategies))
    with pytest.raises(NtngError, match=r"optimizer.lr = 50.0"):
        check_trial_configs(spec, base_mapping(spec))


def test_tuning_seed_is_never_a_final_seed(tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    with pytest.raises(NtngError, match=r"search\.train_seed = 1 is also a final seed \[0, 1\]"):
        load_sweep(path, ["search.train_seed=1"])
    assert tuning_seed(load_sweep(path, [])) not in load_sweep(path, []).final_seeds()


def test_dry_run_prints_the_plan_and_total(tmp_path: Path, capsys) -> None:
    path = write_sweep(tmp_path, budgets=[{"rst_seconds": 10}, {"rst_seconds": 20}])
    assert main(["sweep", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    # Per budget: 2 strategies x 3 trials + 2 strategies x 2 seeds = 10 runs of the budget.
    assert f"{10 * 10 + 10 * 20:.1f}" in out
    assert "b10-tune " in out and "b20-final" in out


def test_unknown_keys_and_cli_overrides_are_checked(tmp_path: Path, capsys) -> None:
    path = write_sweep(tmp_path)
    assert main(["sweep", path, "--dry-run", "search.trails=3"]) == 2
    assert "trails" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["debug", "debug-t5", "bert-paper", "t5-paper"])
def test_shipped_sweeps_validate(name: str) -> None:
    assert name in shipped_sweep_names()
    spec = load_sweep(str(SWEEPS / f"{name}.yaml"))
    check_trial_configs(spec, base_mapping(spec))
    assert len(set(spec.tuning_trials().values())) == 1


def test_debug_sweep_compares_all_seven_strategies() -> None:
    spec = load_sweep(str(SWEEPS / "debug.yaml"))
    assert set(spec.strategies) == {
        "baseline",
        "layer_stacking",
        "layer_dropping",
        "selective_backprop",
        "rho_loss",
        "lion",
        "sophia",
    }
    assert spec.search.trials == 2 and spec.final.seeds == 2
    kinds = [stage.kind for stage in stages(spec)]
    assert kinds == ["prepare", "tune", "final"]  # random search: all strategies' trials at once
    assert stages(spec)[0].strategy == "rho_loss"
    budget = spec.budgets[0].seconds
    il = spec.strategies["rho_loss"].settings["strategy.il_budget_rst_seconds"]
    plan = rst_plan(spec, base_mapping(spec))
    assert sum(r["rst_seconds"] for r in plan) == il + 7 * 2 * budget + 7 * 2 * budget


def test_paper_sweeps_use_the_study_budgets() -> None:
    for name in ("bert-paper", "t5-paper"):
        spec = load_sweep(str(SWEEPS / f"{name}.yaml"))
        assert sorted(b.seconds for b in spec.budgets) == [6 * 3600, 12 * 3600, 24 * 3600]
