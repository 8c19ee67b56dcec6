"""Layer stacking and layer dropping: growth copies blocks and handles optimizer state per
parameter, drops follow the schedule and agree across workers, and budgeted runs charge the
active depth, stop at the budget and learn, in one process and on two Ray Train workers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fast import SMALL_DATA
from torch import nn

from ntng_ray.config import RunConfig, load_config
from ntng_ray.engines.engine import Engine
from ntng_ray.engines.factory import build_engine
from ntng_ray.errors import NtngError
from ntng_ray.models.active_layers import layer_stacks
from ntng_ray.models.builders import TokenIds, build_model
from ntng_ray.rst.clock import step_cost
from ntng_ray.rst.table import load_table
from ntng_ray.strategies import StrategyContext, build_strategy, resolve_strategy
from ntng_ray.strategies.layer_dropping import drop_probabilities, keep_level
from ntng_ray.strategies.layer_stacking import LayerStacking, block_pairs
from ntng_ray.train.loop import build_run
from ntng_ray.train.plan import checked_strategy, plan_run
from ntng_ray.train.run import pretrain

CPU = torch.device("cpu")
VOCAB = 512
CONFIGS = {"bert": "bert-tiny-synthetic", "t5": "t5-tiny-synthetic"}
FAST = [
    *SMALL_DATA,
    "eval.points=[0.5]",
    "train.log_every=1",
    "tracking.enabled=false",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: one thread is 2-3 times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(family: str, strategy: str, *overrides: str) -> RunConfig:
    return load_config(CONFIGS[family], [*FAST, f"strategy.name={strategy}", *overrides])


def strategy_for(cfg: RunConfig, rank: int = 0, world_size: int = 1) -> Any:
    context = StrategyContext(cfg, load_table(cfg.rst.table), rank, world_size)
    return build_strategy(context, checked_strategy(cfg))


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("strategy", "overrides", "message"),
    [
        ("layer_stacking", ["strategy.grow_at=[0.3,0.125]"], r"strategy\.grow_at.*increasing"),
        ("layer_stacking", ["strategy.grow_at=[0.0,0.5]"], r"strategy\.grow_at.*\(0, 1\)"),
        ("layer_stacking", ["strategy.grow_at=[0.5,1.0]"], r"strategy\.grow_at.*\(0, 1\)"),
        ("layer_stacking", ["strategy.grow_at=[]"], r"strategy\.grow_at.*at least one"),
        ("layer_stacking", ["strategy.initial_layers=0"], r"strategy\.initial_layers = 0"),
        ("layer_stacking", ["strategy.new_state=kept"], r"strategy\.new_state = 'kept'"),
        ("layer_dropping", ["strategy.theta_min=0"], r"strategy\.theta_min = 0"),
        ("layer_dropping", ["strategy.theta_min=1.5"], r"strategy\.theta_min = 1\.5"),
        ("layer_dropping", ["strategy.gamma_f=-1"], r"strategy\.gamma_f = -1"),
        ("layer_dropping", ["strategy.keep=0.5"], r"strategy\.keep.*not a parameter"),
    ],
)
def test_bad_parameters_fail_naming_the_field(
    strategy: str, overrides: list[str], message: str
) -> None:
    with pytest.raises(NtngError, match=message):
        resolve_strategy(config("bert", strategy, *overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.initial_layers=8"], r"strategy\.initial_layers = 8: more than .* 4 layers"),
        (
            ["strategy.initial_layers=2"],
            r"initial_layers = 2 .* strategy\.grow_at = \[0\.125, 0\.3\] ends at 8 .*"
            r"\(e\.g\. strategy\.initial_layers = 1\)",
        ),
        (["strategy.grow_at=[0.1,0.2,0.3]"], r"ends at 8 layers, but model\.preset = 'bert-tiny'"),
        (
            ["backend.engine=deepspeed", "backend.zero_stage=0", "train.precision=bf16"],
            r"backend\.zero_stage = 1 or 2",
        ),
    ],
)
def test_stacking_refuses_plans_and_engines_it_cannot_run(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(NtngError, match=message):
        strategy_for(config("bert", "layer_stacking", *overrides))


def test_stacking_defaults_fit_every_preset_depth() -> None:
    """A quarter of the depth doubled twice is the depth: 1 -> 4 (tiny), 4 -> 16, 3 -> 12."""
    assert strategy_for(config("bert", "layer_stacking")).depth == 1
    assert strategy_for(config("t5", "layer_stacking")).depth == 1
    base = config("t5", "layer_stacking", "model.preset=t5-v1_1-base", "rst.table=paper-t5-a100")
    assert strategy_for(base).depth == 3
    assert strategy_for(config("bert", "layer_stacking", "model.preset=bert-crammed")).depth == 4


# ---------------------------------------------------------------------------------------------
# Layer stacking: growth


def random_batch(family: str, seed: int, size: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (size, 32), generator=gen)
    if family == "bert":
        labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, -100)
    else:
        labels = torch.randint(5, VOCAB, (size, 8), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_step(engine: Engine, family: str, seed: int) -> None:
    engine.forward_backward(random_batch(family, seed), 1.0)
    engine.step(1e-3)


def stacking_engine(family: str, new_state: str) -> tuple[LayerStacking, Engine]:
    """A stacking strategy at depth 1 whose engine has optimizer state for every parameter.

    One step at full depth first gives the not-yet-grown blocks state of their own, so a
    "fresh" growth visibly resets it (the loop alone would leave them without state).
    """
    cfg = config(family, "layer_stacking", f"strategy.new_state={new_state}")
    model = build_model(cfg.preset, VOCAB, TokenIds(pad_id=0, eos_id=1), seed=0)
    engine = build_engine(cfg, model, CPU)
    strategy = strategy_for(cfg)
    train_step(engine, family, 0)
    engine.set_active_layers(strategy.active_layers(0.0, 1))
    train_step(engine, family, 1)
    return strategy, engine


def block_parameters(model: nn.Module, index: int) -> set[int]:
    return {id(p) for stack in layer_stacks(model) for p in stack[index].parameters()}


def state_of(engine: Engine, params: list[nn.Parameter]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in engine.optimizer_state(p).items()} for p in params]


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("new_state", ["fresh", "copied"])
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_growth_copies_blocks_and_sets_new_state_per_parameter(family: str, new_state: str) -> None:
    strategy, engine = stacking_engine(family, new_state)
    model = engine.model
    for progress, step, depth in ((0.2, 2, 2), (0.4, 3, 4)):
        pairs = list(block_pairs(model, strategy.depth))
        targets = {id(t) for _, t in pairs}
        assert targets == set().union(
            *(block_parameters(model, i) for i in range(depth // 2, depth))
        )
        old = [p for p in model.parameters() if id(p) not in targets]
        old_state = state_of(engine, old)
        source_state = state_of(engine, [s for s, _ in pairs])
        assert all(engine.optimizer_state(t) for _, t in pairs)

        strategy.before_step(engine, progress, step)
        engine.set_active_layers(strategy.active_layers(progress, step))

        assert strategy.depth == depth and len(engine.active_layers()) == depth
        assert all(torch.equal(s, t) for s, t in pairs)
        assert all(map(same_state, old_state, state_of(engine, old)))
        for (_, target), source in zip(pairs, source_state, strict=True):
            expected = source if new_state == "copied" else {}
            assert same_state(engine.optimizer_state(target), expected)
            assert (target in engine.optimizer.state) == (new_state == "copied")
        train_step(engine, family, step)
    assert strategy.growth_steps == [2, 3]


def test_growth_points_passed_in_one_step_all_apply_and_depth_survives_restore() -> None:
    strategy, engine = stacking_engine("t5", "fresh")
    strategy.before_step(engine, 0.5, 7)
    assert strategy.depth == 4 and strategy.growth_steps == [7, 7]
    for stack in layer_stacks(engine.model):
        first = dict(stack[0].named_parameters())
        for index in (1, 2, 3):
            assert all(torch.equal(p, first[n]) for n, p in stack[index].named_parameters())

    restored = strategy_for(config("t5", "layer_stacking"))
    restored.load_state_dict(strategy.state_dict())
    assert restored.active_layers(0.6, 8) == 4
    assert restored.summary_fields() == strategy.summary_fields()
    with pytest.raises(NtngError, match=r"strategy\.initial_layers = 1"):
        restored.load_state_dict({"depth": 3, "growth_steps": [1]})


# ---------------------------------------------------------------------------------------------
# Layer dropping: the draw


def exact_drop_rates(theta: float, num_layers: int) -> np.ndarray:
    """Per-layer drop rate, including layer 1 being kept when every layer is drawn dropped."""
    rates = drop_probabilities(theta, num_layers)
    expected = rates.copy()
    expected[0] -= np.prod(rates)
    return expected


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_drop_rates_match_the_schedule(family: str) -> None:
    dropping = strategy_for(config(family, "layer_dropping"))
    gamma_f = {"bert": 100.0, "t5": 20.0}[family]
    assert dropping.summary_fields()["gamma_f"] == gamma_f
    progress, draws, layers = 0.05, 8000, dropping.num_layers
    theta = 0.5 + 0.5 * math.exp(-gamma_f * progress)
    dropped = np.zeros(layers)
    for step in range(draws):
        active = dropping.active_layers(progress, step)
        assert active
        dropped[[i for i in range(layers) if i not in active]] += 1
    assert dropping.metrics()["theta"] == pytest.approx(theta)
    expected = exact_drop_rates(theta, layers)
    tolerance = 4.5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(dropped / draws - expected) <= tolerance), (dropped / draws, expected)


def test_workers_draw_the_same_layers_and_one_layer_always_runs() -> None:
    cfg = config("bert", "layer_dropping", "strategy.theta_min=1e-6", "strategy.gamma_f=5")
    workers = [strategy_for(cfg, rank, 2) for rank in (0, 1)]
    other_seed = strategy_for(config("bert", "layer_dropping", "seed=1"))
    draws = []
    for step in range(400):
        progress = step / 400
        first, second = (w.active_layers(progress, step) for w in workers)
        assert first == second and len(first) >= 1
        draws.append(first)
        assert workers[0].theta == pytest.approx(keep_level(progress, 1e-6, 5.0))
    assert len(set(draws)) > 5
    assert draws != [other_seed.active_layers(s / 400, s) for s in range(400)]


# ---------------------------------------------------------------------------------------------
# Budgeted runs in one process


def assert_charged_at_active_depth(records: list[dict], cfg: RunConfig, sequences: int) -> None:
    """Each step's RST is the table's cost at the depth it ran (train records every step)."""
    table = load_table(cfg.rst.table)
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    spent = 0.0
    for record in train:
        cost = sum(step_cost(table, record["active_layers"], sequences).values())
        assert record["rst_seconds"] - spent == pytest.approx(cost, rel=1e-9)
        spent = record["rst_seconds"]


def assert_finished_at_budget(summary: dict, cfg: RunConfig, sequences: int) -> None:
    full_step = sum(step_cost(load_table(cfg.rst.table), cfg.preset.num_layers, sequences).values())
    assert 0 <= cfg.budget.seconds - summary["rst_seconds"] < full_step
    first, last = summary["validation"][0]["loss"], summary["validation"][-1]["loss"]
    assert last < first - 1.0, (first, last)


def run_in_process(cfg: RunConfig) -> tuple[Any, list[dict]]:
    records: list[dict] = []
    run = build_run(plan_run(cfg), reporters=[records.append])
    return run, records


@pytest.mark.integration
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_stacking_run_grows_smoothly_charges_the_depth_and_learns(family: str, tmp_path) -> None:
    """Growth keeps what the shallow model learned: the loss on a fixed batch, measured just
    before and just after a growth (no update between), moves by at most 10%.

    Doubling changes the function (each copied block runs twice; BERT is post-LN, T5 pre-LN),
    so the losses are not equal: on these models the change was under 0.3% (BERT) and 4%
    (T5) of the loss, while training had moved the loss by 4-32% from its start. 10% leaves
    room above the first; the second check bounds what losing the learned blocks would cost:
    the grown model's loss is far closer to the shallow model's than to the starting loss.
    """
    cfg = config(family, "layer_stacking", "budget.rst_seconds=4", f"output_dir={tmp_path}")
    run, records = run_in_process(cfg)
    rows = torch.from_numpy(run.plan.data.rows[run.plan.data.val_ids][:32]).long()
    fixed = run.collator(rows, torch.Generator().manual_seed(0))

    def loss_at(depth: int) -> float:
        run.engine.set_active_layers(depth)
        total, count = run.engine.loss_sum(fixed)
        return total / count

    start = loss_at(run.strategy.depth)
    measured: list[tuple[float, float]] = []
    grow = run.strategy.grow

    def measured_grow(engine: Engine) -> None:
        before = loss_at(run.strategy.depth)
        grow(engine)
        measured.append((before, loss_at(run.strategy.depth)))

    run.strategy.grow = measured_grow
    summary = run.run()

    assert summary["strategy_summary"]["final_layers"] == 4
    assert len(measured) == 2
    for before, after in measured:
        assert abs(after - before) <= 0.1 * before, measured
        assert after - before < 0.5 * (start - before), (start, measured)
    depths = [r["active_layers"] for r in records if r["event"] == "train"]
    assert depths == sorted(depths) and set(depths) == {1, 2, 4}
    assert_charged_at_active_depth(records, cfg, cfg.train.microbatch_size)
    assert_finished_at_budget(summary, cfg, cfg.train.microbatch_size)


@pytest.mark.integration
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_dropping_run_charges_the_active_layers_and_learns(family: str, tmp_path) -> None:
    cfg = config(family, "layer_dropping", "budget.rst_seconds=4", f"output_dir={tmp_path}")
    run, records = run_in_process(cfg)
    summary = run.run()

    train = [r for r in records if r["event"] == "train"]
    assert {r["active_layers"] for r in train} > {4}
    assert all(0.5 <= r["theta"] <= 1.0 for r in train)
    mean = np.mean([r["active_layers"] for r in train])
    assert summary["strategy_summary"]["mean_active_layers"] == pytest.approx(mean)
    assert summary["strategy_summary"]["gamma_f"] == {"bert": 100.0, "t5": 20.0}[family]
    assert_charged_at_active_depth(records, cfg, cfg.train.microbatch_size)
    assert_finished_at_budget(summary, cfg, cfg.train.microbatch_size)


# ---------------------------------------------------------------------------------------------
# Two Ray Train workers: DDP (torch engine), and DeepSpeed ZeRO 2


@pytest.mark.integration
@pytest.mark.parametrize(
    ("strategy", "family", "engine"),
    [
        pytest.param("layer_stacking", "bert", ["backend.engine=torch"], id="stacking-ddp"),
        pytest.param("layer_dropping", "t5", ["backend.engine=torch"], id="dropping-ddp"),
        # ZeRO 2 keeps optimizer state in flat partitions: growth gathers and scatters it.
        pytest.param(
            "layer_stacking",
            "t5",
            ["backend.engine=deepspeed", "backend.zero_stage=2", "strategy.new_state=copied"],
            id="stacking-zero2",
        ),
    ],
)
def test_two_workers_run_to_the_budget(
    local_ray, tmp_path, strategy: str, family: str, engine: list[str]
) -> None:
    out = tmp_path / "run"
    cfg = config(
        family, strategy, *engine,
        "backend.workers=2", "train.microbatch_size=16", "train.threads=1",
        "budget.rst_seconds=4", f"output_dir={out}",
    )  # fmt: skip
    summary = pretrain(cfg)
    sequences = 2 * 16
    assert summary["workers"] == 2 and summary["sequences_per_step"] == sequences
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len({r["active_layers"] for r in records if r["event"] == "train"}) > 1
    assert_charged_at_active_depth(records, cfg, sequences)
    assert_finished_at_budget(summary, cfg, sequences)
