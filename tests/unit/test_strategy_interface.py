"""The strategy interface: a method defined outside the package plugs into the one loop.

The toy strategy below is registered from this test module and run through the same code
path as `ntng pretrain`, with no change to the loop: it trains on the first half of each
drawn pair of microbatches and charges the other half as scoring work.
"""

from __future__ import annotations

import json

import pytest
from fast import SMALL_DATA

from ntng_ray.cli import main
from ntng_ray.config import load_config
from ntng_ray.engines.engine import Engine
from ntng_ray.errors import NtngError
from ntng_ray.rst.clock import FORWARD, forward_cost
from ntng_ray.rst.table import load_table
from ntng_ray.strategies import register, resolve_strategy, strategy_names
from ntng_ray.strategies.base import Candidates, Cost, Examples, Strategy, StrategyParams

FAST = [
    *SMALL_DATA,
    "eval.points=[]",
    "train.log_every=2",
    "tracking.enabled=false",
]


class ToyParams(StrategyParams):
    keep_every: int = 2


class KeepFirstOfEach(Strategy):
    """Toy: draws ``keep_every`` microbatches' worth, trains on the first microbatch."""

    name = "toy_keep_first"
    Params = ToyParams

    def __init__(self, params: ToyParams, context) -> None:
        super().__init__(params, context)
        self.selected = 0

    def max_extra_cost(self, active_layers: int) -> Cost:
        extra = self.context.cfg.train.microbatch_size * (self.params.keep_every - 1)
        return {FORWARD: forward_cost(self.context.table, active_layers, extra)}

    def select(self, candidates: Candidates, engine: Engine) -> tuple[Examples, Cost]:
        drawn = candidates.draw(candidates.microbatch * self.params.keep_every)
        self.selected += candidates.microbatch
        kept = drawn.take(range(candidates.microbatch))
        depth = len(engine.active_layers())
        return kept, {FORWARD: forward_cost(self.context.table, depth, len(drawn) - len(kept))}

    def metrics(self) -> dict[str, float]:
        return {"toy_selected": float(self.selected)}


@pytest.fixture(scope="module", autouse=True)
def toy_registered() -> None:
    register(KeepFirstOfEach)


@pytest.mark.integration
def test_toy_strategy_runs_through_ntng_pretrain(tmp_path, capsys) -> None:
    assert "toy_keep_first" in strategy_names()
    out = tmp_path / "toy"
    code = main(
        ["pretrain", "bert-tiny-synthetic", *FAST, "strategy.name=toy_keep_first",
         "strategy.keep_every=3", "budget.rst_seconds=4", f"output_dir={out}"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "toy_keep_first"
    assert summary["strategy_params"] == {"keep_every": 3}
    # Two discarded microbatches of forward work per trained one, charged every step.
    per_step = forward_cost(load_table("cpu-bert-tiny"), 4, 2 * 32)
    assert summary["rst_breakdown"]["forward"] == pytest.approx(summary["steps"] * per_step)
    assert summary["rst_seconds"] <= 4
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-2]["toy_selected"] == 32 * lines[-2]["step"]


def test_toy_parameters_are_validated() -> None:
    with pytest.raises(NtngError, match=r"strategy\.keep_every = 'x'"):
        resolve_strategy(
            load_config(
                "bert-tiny-synthetic", ["strategy.name=toy_keep_first", "strategy.keep_every=x"]
            )
        )
    with pytest.raises(NtngError, match="not a parameter of toy_keep_first; allowed: keep_every"):
        resolve_strategy(
            load_config("bert-tiny-synthetic", ["strategy.name=toy_keep_first", "strategy.keep=2"])
        )


def test_registering_a_taken_name_is_refused() -> None:
    class Impostor(Strategy):
        name = "baseline"

    with pytest.raises(ValueError, match="is taken"):
        register(Impostor)
