"""Batch selection: selective backprop and RHO-loss, from the keep rule to budgeted runs.

Unit tests drive the strategies with a stub engine whose per-example losses are planted; run
tests train tiny BERT and T5 under small RST budgets, in one process and on two Ray workers.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fast import SMALL_DATA

from ntng_ray.config import load_config
from ntng_ray.errors import NtngError
from ntng_ray.preparation.strategy import run_prepare_cli
from ntng_ray.rst.clock import FORWARD, forward_cost, step_cost
from ntng_ray.rst.table import load_table
from ntng_ray.strategies import resolve_strategy
from ntng_ray.strategies.base import Candidates, Examples, StrategyContext
from ntng_ray.strategies.rho_loss import (
    METADATA_FILE,
    VALUES_FILE,
    il_split,
    select_by_reducible_loss,
)
from ntng_ray.strategies.scoring import example_losses, per_example_losses
from ntng_ray.strategies.selective_backprop import LossHistory, SelectiveBackprop
from ntng_ray.train.loop import build_run
from ntng_ray.train.plan import plan_run
from ntng_ray.train.run import pretrain

FAST = [
    *SMALL_DATA,
    "eval.points=[]",
    "train.log_every=2",
    "train.microbatch_size=16",
    "tracking.enabled=false",
]
BUDGET = 2.5
IL_BUDGET = 1.5
CONFIGS = ["bert-tiny-synthetic", "t5-tiny-synthetic"]
LAYERS = 4


# --- per-example losses ----------------------------------------------------------------------


def test_example_losses_dense_and_sparse_agree_and_unlabelled_rows_score_zero() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, :2] = -100
    labels[2] = -100
    dense = example_losses(logits, labels)
    sparse = example_losses(logits[labels != -100], labels)
    positions = (labels.flatten() != -100).nonzero().squeeze(1)
    named = example_losses(logits[labels != -100], labels, positions)
    torch.testing.assert_close(dense, sparse)
    torch.testing.assert_close(named, sparse)
    by_hand = torch.nn.functional.cross_entropy(logits[0, 2:], labels[0, 2:])
    torch.testing.assert_close(dense[0], by_hand)
    assert dense[2] == 0.0
    with pytest.raises(ValueError, match="labelled token"):
        example_losses(logits[0], labels)


@pytest.mark.parametrize("config", CONFIGS)
def test_per_example_losses_average_to_the_model_loss(tmp_path, config: str) -> None:
    """The real heads (sparse BERT, dense T5): token-weighted means give the batch loss."""
    cfg = load_config(config, [*FAST, f"output_dir={tmp_path / 'x'}"])
    plan = plan_run(cfg)
    engine = build_run(plan).engine
    rows = torch.from_numpy(plan.data.rows[plan.data.train_ids[:8]]).long()
    batch = plan.data.collator()(rows, torch.Generator().manual_seed(0))
    losses = per_example_losses(engine, batch)
    counts = (batch["labels"] != -100).sum(dim=1)
    assert losses.shape == (8,)
    expected = engine.forward_no_grad(batch).loss.float()
    torch.testing.assert_close((losses * counts).sum() / counts.sum(), expected)


# --- selective backprop, with planted losses -------------------------------------------------


class StubEngine:
    """Dense one-token logits whose loss grows with each example's planted ``score``."""

    def forward_no_grad(self, batch: dict[str, torch.Tensor]) -> SimpleNamespace:
        logits = torch.zeros(len(batch["score"]), 1, 2)
        logits[:, 0, 1] = batch["score"]
        return SimpleNamespace(logits=logits)

    def active_layers(self) -> tuple[int, ...]:
        return tuple(range(LAYERS))


def stub_candidates(score: Callable[[np.ndarray], np.ndarray], microbatch: int) -> Candidates:
    """Examples with ids 0, 1, 2, ... whose losses ``score(ids)`` plants."""
    counter = itertools.count()

    def draw(count: int) -> Examples:
        ids = np.array([next(counter) for _ in range(count)])
        batch = {
            "score": torch.as_tensor(score(ids), dtype=torch.float32),
            "labels": torch.zeros(count, 1, dtype=torch.long),
        }
        return Examples(ids, batch)

    return Candidates(draw=draw, microbatch=microbatch)


def selective_backprop(tmp_path: Path, *overrides: str, rank: int = 0) -> SelectiveBackprop:
    cfg = load_config(
        "bert-tiny-synthetic",
        [*FAST, "strategy.name=selective_backprop", *overrides, f"output_dir={tmp_path}"],
    )
    context = StrategyContext(cfg, load_table(cfg.rst.table), rank=rank, world_size=2)
    return SelectiveBackprop(resolve_strategy(cfg).params, context)


def run_rho_prepare(config: str, overrides: list[str]) -> int:
    """``ntng rho-prepare`` as the CLI runs it."""
    return run_prepare_cli(config, overrides, "rho-prepare", "rho_loss")


def planted(ids: np.ndarray) -> np.ndarray:
    """Every eighth example is far harder than the rest, whose losses are noise."""
    rng = np.random.default_rng(int(ids[0]))
    return np.where(ids % 8 == 0, 8.0, rng.uniform(-2.0, 2.0, len(ids)))


def test_loss_history_ranks_among_recent_losses() -> None:
    history = LossHistory(4)
    history.add(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert history.count == 5
    ranked = history.percentiles(torch.tensor([0.0, 3.0, 9.0]))
    torch.testing.assert_close(ranked, torch.tensor([0.0, 0.375, 1.0], dtype=torch.float64))


def test_selective_backprop_keeps_planted_high_losses_far_more_often(tmp_path) -> None:
    strategy = selective_backprop(tmp_path)
    candidates = stub_candidates(planted, microbatch=16)
    trained, spent = [], 0.0
    for _ in range(60):
        chosen, cost = strategy.select(candidates, StubEngine())
        assert len(chosen) == 16
        trained.extend(chosen.ids.tolist())
        spent += cost[FORWARD]
    scored = strategy.counts["scored"]
    ids = np.arange(scored)
    kept = np.isin(ids, trained + (strategy.pending.ids.tolist() if strategy.pending else []))
    hard = ids % 8 == 0
    hard_rate, easy_rate = kept[hard].mean(), kept[~hard].mean()
    assert hard_rate > 0.9 and easy_rate < 0.55, (hard_rate, easy_rate)
    assert spent == pytest.approx(forward_cost(strategy.context.table, LAYERS, scored))
    assert strategy.metrics()["selection_ratio"] == pytest.approx(kept.mean())
    assert strategy.counts["capped"] == 0


def test_keep_draws_are_seeded_per_run_and_differ_per_rank(tmp_path) -> None:
    def chosen_ids(rank: int) -> list[int]:
        strategy = selective_backprop(tmp_path, rank=rank)
        candidates = stub_candidates(planted, microbatch=16)
        return [i for _ in range(10) for i in strategy.select(candidates, StubEngine())[0].ids]

    assert chosen_ids(0) == chosen_ids(0)
    assert chosen_ids(0) != chosen_ids(1)


def test_candidate_cap_fills_with_the_highest_losses_and_bounds_the_cost(tmp_path) -> None:
    """Losses that only fall are never kept; the cap stops scoring and tops up."""
    strategy = selective_backprop(tmp_path, "strategy.max_candidates_factor=2", "strategy.beta=50")
    candidates = stub_candidates(lambda ids: 2.0 - ids / 16, microbatch=16)
    strategy.select(candidates, StubEngine())
    chosen, cost = strategy.select(candidates, StubEngine())
    assert sorted(chosen.ids.tolist()) == list(range(32, 48))
    assert strategy.counts == {"scored": 64, "kept": 0, "filled": 32, "capped": 2}
    assert cost == strategy.max_extra_cost(LAYERS)
    assert cost[FORWARD] == pytest.approx(forward_cost(strategy.context.table, LAYERS, 32))
    assert strategy.metrics()["capped_microbatches"] == 2


def test_selective_backprop_state_resumes_the_same_choices(tmp_path) -> None:
    """History, keep generator and waiting examples survive a weights-only checkpoint."""
    first = selective_backprop(tmp_path)
    candidates = stub_candidates(planted, microbatch=16)
    for _ in range(5):
        first.select(candidates, StubEngine())
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    second = selective_backprop(tmp_path)
    second.load_state_dict(torch.load(path, weights_only=True))
    position = first.counts["scored"]
    again = stub_candidates(planted, microbatch=16)
    again.draw(position)
    for _ in range(5):
        expected = first.select(candidates, StubEngine())[0].ids
        np.testing.assert_array_equal(second.select(again, StubEngine())[0].ids, expected)


def test_free_scoring_charges_nothing(tmp_path) -> None:
    strategy = selective_backprop(tmp_path, "strategy.free_scoring=true")
    _, cost = strategy.select(stub_candidates(planted, 16), StubEngine())
    assert cost == {} and strategy.max_extra_cost(LAYERS) == {}
    assert "free" in strategy.summary_fields()["scoring"]


# --- RHO-loss: the selection rule and the IL split -------------------------------------------


def test_rho_selection_prefers_high_training_loss_and_low_irreducible_loss() -> None:
    train = torch.tensor([5.0, 1.0, 4.0, 3.0, 0.5, 2.0])
    il = torch.tensor([1.0, 0.5, 4.0, 0.0, 0.0, 2.5])
    # reducible losses: 4, 0.5, 0, 3, 0.5, -0.5
    assert sorted(select_by_reducible_loss(train, il, 2).tolist()) == [0, 3]
    assert select_by_reducible_loss(train, torch.zeros(6), 1).tolist() == [0]


def test_il_split_is_deterministic_and_never_validation(tmp_path) -> None:
    cfg = load_config("bert-tiny-synthetic", [*FAST, f"output_dir={tmp_path}"])
    data = plan_run(cfg).data
    split = il_split(data.train_ids, 0.2, cfg.data.split_seed)
    assert np.array_equal(split, il_split(data.train_ids.copy(), 0.2, cfg.data.split_seed))
    assert not np.array_equal(split, il_split(data.train_ids, 0.2, cfg.data.split_seed + 1))
    assert len(split) == round(0.2 * len(data.train_ids))
    assert set(split) <= set(data.train_ids)
    assert not set(split) & set(data.val_ids)
    with pytest.raises(NtngError, match=r"strategy\.il_fraction"):
        il_split(data.train_ids[:2], 0.1, 0)


# --- rho-prepare and budgeted runs -----------------------------------------------------------


@pytest.fixture(scope="module")
def il_dir(tmp_path_factory) -> Callable[[str], Path]:
    """``ntng rho-prepare <config> output_dir=DIR`` once per config, through its CLI function."""
    made: dict[str, Path] = {}

    def make(config: str) -> Path:
        if config not in made:
            folder = tmp_path_factory.mktemp("il") / config
            overrides = [
                *FAST,
                f"budget.rst_seconds={BUDGET}",
                f"strategy.il_budget_rst_seconds={IL_BUDGET}",
                f"output_dir={folder}",
            ]
            assert run_rho_prepare(config, overrides) == 0
            made[config] = folder
        return made[config]

    return make


@pytest.mark.integration
def test_rho_prepare_covers_every_training_row_outside_the_il_split(tmp_path, il_dir) -> None:
    folder = il_dir("bert-tiny-synthetic")
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # nothing left over
    cfg = load_config("bert-tiny-synthetic", [*FAST, f"output_dir={tmp_path}"])
    data = plan_run(cfg).data
    values = np.load(folder / VALUES_FILE)
    held_out = il_split(data.train_ids, 0.2, cfg.data.split_seed)
    np.testing.assert_array_equal(values["il_ids"], held_out)
    np.testing.assert_array_equal(values["ids"], np.setdiff1d(data.train_ids, held_out))
    assert np.isfinite(values["losses"]).all() and (values["losses"] > 0).all()
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["identity"]["preset"] == "bert-tiny"
    assert meta["identity"]["split_seed"] == cfg.data.split_seed
    assert meta["identity"]["corpus_fingerprint"] == data.corpus_fingerprint
    assert meta["identity"]["tokenizer_hash"] == data.tokenizer.content_hash
    summary = meta["il_model_summary"]
    assert summary["strategy"] == "rho_il_model"
    assert summary["budget_rst_seconds"] == IL_BUDGET
    assert meta["il_model_rst_seconds"] == summary["rst_seconds"] <= IL_BUDGET
    table = load_table(cfg.rst.table)
    assert meta["il_scoring_rst_seconds"] == pytest.approx(
        forward_cost(table, LAYERS, len(values["ids"]))
    )
    assert (folder / "il_model" / "model" / "config.json").is_file()


def _check_budgeted_run(summary: dict, cfg, out: Path, scored_per_step: int) -> None:
    """At the budget (less than one step's most costly step below it), and learning."""
    table = load_table(cfg.rst.table)
    most = sum(step_cost(table, LAYERS, 16).values())
    if not resolve_strategy(cfg).params.free_scoring:
        most += forward_cost(table, LAYERS, scored_per_step)
    budget = cfg.budget.seconds
    assert summary["rst_seconds"] <= budget
    assert budget - summary["rst_seconds"] < most
    assert sum(summary["rst_breakdown"].values()) == pytest.approx(summary["rst_seconds"])
    first, last = summary["validation"][0]["loss"], summary["validation"][-1]["loss"]
    assert last < first - 0.5, (first, last)
    train_lines = [
        line
        for line in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if line["event"] == "train"
    ]
    assert train_lines and all("selection_ratio" in line for line in train_lines)


@pytest.mark.integration
@pytest.mark.parametrize("config", CONFIGS)
def test_selective_backprop_run_finishes_at_budget_and_learns(tmp_path, config: str) -> None:
    out = tmp_path / "run"
    cfg = load_config(
        config,
        [*FAST, "strategy.name=selective_backprop", f"budget.rst_seconds={BUDGET}",
         f"output_dir={out}"],
    )  # fmt: skip
    summary = pretrain(cfg)
    _check_budgeted_run(summary, cfg, out, scored_per_step=8 * 16)
    table = load_table(cfg.rst.table)
    scored = summary["strategy_summary"]["scored_examples"]
    train_cost = step_cost(table, LAYERS, 16)["train"]
    assert summary["rst_breakdown"][FORWARD] == pytest.approx(forward_cost(table, LAYERS, scored))
    assert summary["rst_breakdown"]["train"] == pytest.approx(summary["steps"] * train_cost)
    assert "charged" in summary["strategy_summary"]["scoring"]


@pytest.mark.integration
def test_selective_backprop_free_scoring_charges_training_only(tmp_path) -> None:
    out = tmp_path / "run"
    cfg = load_config(
        "bert-tiny-synthetic",
        [*FAST, "strategy.name=selective_backprop", "strategy.free_scoring=true",
         f"budget.rst_seconds={BUDGET}", f"output_dir={out}"],
    )  # fmt: skip
    summary = pretrain(cfg)
    _check_budgeted_run(summary, cfg, out, scored_per_step=8 * 16)
    assert FORWARD not in summary["rst_breakdown"]
    per_step = sum(step_cost(load_table(cfg.rst.table), LAYERS, 16).values())
    assert summary["steps"] == int(BUDGET / per_step + 1e-9)
    assert "free" in summary["strategy_summary"]["scoring"]


@pytest.mark.integration
@pytest.mark.parametrize("config", CONFIGS)
def test_rho_loss_run_finishes_at_budget_learns_and_reports_il_cost(
    tmp_path, il_dir, config: str
) -> None:
    folder = il_dir(config)
    out = tmp_path / "run"
    cfg = load_config(
        config,
        [*FAST, "strategy.name=rho_loss", f"strategy.il_dir={folder}",
         f"budget.rst_seconds={BUDGET}", f"output_dir={out}"],
    )  # fmt: skip
    summary = pretrain(cfg)
    _check_budgeted_run(summary, cfg, out, scored_per_step=2 * 16)
    meta = json.loads((folder / METADATA_FILE).read_text())
    fields = summary["strategy_summary"]
    assert fields["rho_il_rst_seconds"] == meta["rho_il_rst_seconds"] > 0
    assert fields["il_model_rst_seconds"] == meta["il_model_rst_seconds"]
    table = load_table(cfg.rst.table)
    scored = fields["scored_examples"]
    assert scored == 2 * 16 * summary["steps"]
    assert summary["rst_breakdown"][FORWARD] == pytest.approx(forward_cost(table, LAYERS, scored))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["rho_il_rst_seconds"] == fields["rho_il_rst_seconds"]
               for line in lines if '"train"' in line)  # fmt: skip


# --- refusals --------------------------------------------------------------------------------


def _rho_run(tmp_path: Path, config: str, *overrides: str):
    return load_config(
        config, [*FAST, "strategy.name=rho_loss", *overrides, f"output_dir={tmp_path / 'run'}"]
    )


def test_rho_loss_without_il_dir_is_refused_naming_the_field(tmp_path) -> None:
    with pytest.raises(NtngError, match=r"strategy\.il_dir is missing"):
        pretrain(_rho_run(tmp_path, "bert-tiny-synthetic"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(NtngError, match="no such folder"):
        pretrain(_rho_run(tmp_path, "bert-tiny-synthetic", f"strategy.il_dir={tmp_path / 'no'}"))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("config", "overrides", "named"),
    [
        ("t5-tiny-synthetic", [], r"model\.preset is 'bert-tiny' there, 't5-tiny' here"),
        ("bert-tiny-synthetic", ["data.split_seed=99"], r"data\.split_seed is 1234 there, 99"),
        ("bert-tiny-synthetic", ["strategy.il_fraction=0.3"], r"strategy\.il_fraction is 0\.2"),
        ("bert-tiny-synthetic", ["data.synthetic.seed=5"], r"the corpus \(data\.source"),
        ("bert-tiny-synthetic", ["data.max_validation_sequences=20"], "IL split"),
    ],
)
def test_mismatched_il_dir_is_refused_naming_what_differs(
    tmp_path, il_dir, config: str, overrides: list[str], named: str
) -> None:
    cfg = _rho_run(tmp_path, config, f"strategy.il_dir={il_dir('bert-tiny-synthetic')}", *overrides)
    with pytest.raises(NtngError, match=named):
        pretrain(cfg)


@pytest.mark.integration
def test_il_dir_missing_ids_is_refused(tmp_path, il_dir) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(il_dir("bert-tiny-synthetic"), folder)
    values = dict(np.load(folder / VALUES_FILE))
    values["ids"], values["losses"] = values["ids"][3:], values["losses"][3:]
    np.savez(folder / VALUES_FILE, **values)
    with pytest.raises(NtngError, match=r"3 of this run's \d+ training rows have no IL value"):
        pretrain(_rho_run(tmp_path, "bert-tiny-synthetic", f"strategy.il_dir={folder}"))


def test_rho_prepare_leaves_nothing_half_written(tmp_path, monkeypatch) -> None:
    import ntng_ray.preparation.strategy

    def fail(cfg):
        (Path(cfg.output_dir) / "partial").mkdir(parents=True)
        raise RuntimeError("IL training died")

    monkeypatch.setattr(ntng_ray.preparation.strategy, "pretrain", fail)
    target = tmp_path / "il"
    with pytest.raises(RuntimeError, match="died"):
        run_rho_prepare("bert-tiny-synthetic", [*FAST, f"output_dir={target}"])
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(NtngError, match="not empty"):
        run_rho_prepare("bert-tiny-synthetic", [*FAST, f"output_dir={target}"])
    with pytest.raises(NtngError, match="output_dir: rho-prepare needs"):
        run_rho_prepare("bert-tiny-synthetic", FAST)


# --- two Ray Train workers -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("strategy", "engine"), [("selective_backprop", "deepspeed"), ("rho_loss", "torch")]
)
def test_two_ray_workers_select_and_charge_their_scoring(
    local_ray, tmp_path, il_dir, strategy: str, engine: str
) -> None:
    out = tmp_path / "run"
    extra = [f"strategy.il_dir={il_dir('bert-tiny-synthetic')}"] if strategy == "rho_loss" else []
    cfg = load_config(
        "bert-tiny-synthetic",
        [*FAST, f"strategy.name={strategy}", *extra, "backend.workers=2",
         f"backend.engine={engine}", "budget.rst_seconds=4", f"output_dir={out}"],
    )  # fmt: skip
    summary = pretrain(cfg)
    assert summary["workers"] == 2
    table = load_table(cfg.rst.table)
    base = sum(step_cost(table, LAYERS, 2 * 16).values())
    factor = 8 if strategy == "selective_backprop" else 2
    worst = base + 2 * forward_cost(table, LAYERS, factor * 16)
    assert 0 <= cfg.budget.seconds - summary["rst_seconds"] < worst
    # Only rank 0's counts reach the summary; the clock charged both workers' scoring.
    scored_rank0 = summary["strategy_summary"]["scored_examples"]
    assert summary["rst_breakdown"][FORWARD] > forward_cost(table, LAYERS, scored_rank0)
    assert summary["validation"][-1]["loss"] < summary["validation"][0]["loss"] - 0.3
