"""Lion and Sophia-G: their updates against the papers' equations, Sophia's Hessian estimate,
its schedule and charge, budgeted runs on BERT and T5, the refusals, and the calibrated costs."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from fast import SMALL_DATA
from torch import nn

import ntng_ray.strategies.sophia as sophia_module
from ntng_ray.config import load_config
from ntng_ray.engines.dist_env import free_port
from ntng_ray.engines.optimizers import (
    GradientSums,
    SophiaG,
    build_lion,
    build_sophia,
    flat_logits_and_targets,
    gnb_gradient_sums,
    sample_labels,
)
from ntng_ray.errors import NtngError
from ntng_ray.rst.clock import HESSIAN, step_cost
from ntng_ray.rst.table import load_table, validate_table
from ntng_ray.strategies import StrategyContext, build_strategy, resolve_strategy
from ntng_ray.strategies.optimizer_method import STUDY_SETTINGS
from ntng_ray.strategies.sophia import check_engine
from ntng_ray.train.plan import checked_strategy

FAST = [
    *SMALL_DATA,
    "eval.points=[0.5]",
    "train.log_every=5",
    "tracking.enabled=false",
]
# Each family's optimizer section for these methods: adamw (the name is required), a tiny-model LR.
OPTIMIZER = {
    "bert-tiny-synthetic": ["optimizer.lr=1e-3"],
    "t5-tiny-synthetic": ["optimizer.name=adamw", "optimizer.lr=1e-3", "optimizer.weight_decay=0"],
}


class Quadratic(nn.Module):
    """loss = 0.5 * (1 * x**2 + 4 * y**2) at (x, y) = (1, -2): gradient (1, -8).

    The parameter is a 1 x 2 matrix, so the optimizers' parameter groups decay it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([[1.0, -2.0]]))
        self.register_buffer("curvature", torch.tensor([[1.0, 4.0]]))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.curvature * self.theta**2).sum()


def test_lion_step_is_the_papers_update() -> None:
    """c = b1 m + (1 - b1) g; p = p (1 - lr wd) - lr sign(c); m = b2 m + (1 - b2) g."""
    model = Quadratic()
    lion = build_lion(model, lr=0.1, weight_decay=0.1)
    model().backward()  # g = (1, -8); m = 0
    lion.step()
    # c = 0.1 g = (0.1, -0.8); p = (1, -2) * 0.99 - 0.1 * (1, -1)
    torch.testing.assert_close(model.theta.data, torch.tensor([[0.89, -1.88]]))
    torch.testing.assert_close(lion.state[model.theta]["exp_avg"], torch.tensor([[0.01, -0.08]]))
    # A gradient against the momentum: c = 0.9 * 0.01 + 0.1 * (-0.05) = 0.004 keeps sign +1.
    model.theta.grad = torch.tensor([[-0.05, -1.0]])
    lion.step()
    torch.testing.assert_close(model.theta.data, torch.tensor([[0.7811, -1.7612]]))
    torch.testing.assert_close(
        lion.state[model.theta]["exp_avg"], torch.tensor([[0.0094, -0.0892]])
    )


def test_sophia_step_is_the_official_update() -> None:
    """m = b1 m + (1 - b1) g; p = p (1 - lr wd) - lr sign(m) min(|m| / (rho h + eps), 1)."""
    model = Quadratic()
    sophia = build_sophia(model, lr=0.1, weight_decay=0.1, rho=5.0)
    model().backward()
    sophia.step()  # no estimate yet: h = 0, every ratio clips to 1, a sign step
    torch.testing.assert_close(model.theta.data, torch.tensor([[0.89, -1.88]]))

    model = Quadratic()
    sophia = build_sophia(model, lr=0.1, weight_decay=0.1, rho=5.0)
    # Gradient sums (2, 4) over B = 4 positions: h_hat = sum**2 / B = (1, 4), the true curvature.
    sophia.update_hessian(GradientSums([model.theta], [torch.tensor([[2.0, 4.0]])], positions=4))
    torch.testing.assert_close(sophia.state[model.theta]["hessian"], torch.tensor([[0.01, 0.04]]))
    model().backward()
    sophia.step()
    # m = 0.035 g = (0.035, -0.28); rho h = (0.05, 0.2); ratio = (0.7, 1.4 -> 1)
    torch.testing.assert_close(model.theta.data, torch.tensor([[0.92, -1.88]]))
    torch.testing.assert_close(sophia.state[model.theta]["exp_avg"], torch.tensor([[0.035, -0.28]]))


class SoftmaxRegression(nn.Module):
    """logits = features @ W.T: the GNB gradient has a closed form, (softmax - onehot)^T x."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=features @ self.weight.T)


def features(part: int, rows: int = 6) -> dict[str, torch.Tensor]:
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(100 + part))
    return {"features": x, "labels": torch.zeros(rows, dtype=torch.long)}


def closed_form_sums(model: SoftmaxRegression, batch: dict, seed: int) -> torch.Tensor:
    """Sum over rows of d CE(z, y) / dW with y drawn as the estimator draws it."""
    logits = batch["features"] @ model.weight.detach().T
    sampled = sample_labels(logits, torch.Generator().manual_seed(seed))
    onehot = nn.functional.one_hot(sampled, 5).float()
    return (logits.softmax(-1) - onehot).T @ batch["features"]


def test_gnb_estimate_is_batch_size_times_squared_mean_gradient() -> None:
    model = SoftmaxRegression()
    batch = features(0)
    sums = gnb_gradient_sums(model, [batch], torch.Generator().manual_seed(7), "fp32")
    expected = closed_form_sums(model, batch, seed=7)
    assert sums.positions == 6
    torch.testing.assert_close(sums.sums[0], expected)
    sophia = SophiaG(model.parameters(), lr=0.1)
    sophia.update_hessian(sums)
    h_hat = 6 * (expected / 6) ** 2
    torch.testing.assert_close(sophia.state[model.weight]["hessian"], 0.01 * h_hat)
    # T5's dense logits: every position is a row; only the labelled ones count.
    logits, labels = torch.zeros(2, 3, 5), torch.tensor([[1, -100, 2], [-100, -100, 4]])
    rows, labelled = flat_logits_and_targets(logits, labels)
    assert rows.shape == (6, 5) and labelled.tolist() == [True, False, True, False, False, True]


def test_labels_are_drawn_from_the_models_distribution() -> None:
    probs = torch.tensor([0.2, 0.5, 0.0, 0.3])
    logits = probs.log().expand(40_000, 4)
    drawn = sample_labels(logits, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=4) / len(drawn)
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)


def estimate_worker(rank: int, port: int, out: Path) -> None:
    """One of two workers: its half of the rows, its own samples, then the all-reduce."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = SoftmaxRegression()
    sums = gnb_gradient_sums(model, [features(rank)], torch.Generator().manual_seed(rank), "fp32")
    sophia = SophiaG(model.parameters(), lr=0.1)
    sophia.update_hessian(sums.all_reduce())
    torch.save(sophia.state[model.weight]["hessian"], out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.integration
def test_workers_hold_the_same_estimate_of_the_whole_batch(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(estimate_worker, args=(free_port(), tmp_path), nprocs=2)
    model = SoftmaxRegression()
    total = sum(closed_form_sums(model, features(rank), seed=rank) for rank in (0, 1))
    expected = 0.01 * total**2 / 12
    for rank in (0, 1):
        held = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(held, expected)


def _run(tmp_path: Path, config: str, strategy: str, *overrides: str) -> tuple:
    from ntng_ray.train.run import pretrain  # imported here: spawned workers need not load it

    cfg = load_config(
        config,
        [*FAST, *OPTIMIZER[config], f"strategy.name={strategy}", *overrides,
         f"output_dir={tmp_path / strategy}"],
    )  # fmt: skip
    return cfg, pretrain(cfg)


@pytest.mark.integration
@pytest.mark.parametrize("free", [False, True])
def test_sophia_estimates_every_k_steps_and_charges_each_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: bool
) -> None:
    calls = []
    estimate = sophia_module.gnb_gradient_sums

    def counted(model, batches, generator, precision):
        calls.append(len(batches))
        return estimate(model, batches, generator, precision)

    monkeypatch.setattr(sophia_module, "gnb_gradient_sums", counted)
    table = load_table("cpu-bert-tiny")
    per_step = sum(step_cost(table, 4, 8, "sophia").values())
    per_pass = table.hessian_seconds * 8 / table.unit.sequences
    budget = 25.5 * per_step + (0 if free else 2 * per_pass)
    _, summary = _run(
        tmp_path, "bert-tiny-synthetic", "sophia", "strategy.k=10",
        f"strategy.free_hessian={free}", "train.microbatch_size=8", f"budget.rst_seconds={budget}",
    )  # fmt: skip
    assert summary["steps"] == 25
    assert calls == [1, 1]
    charged = summary["rst_breakdown"].get(HESSIAN, 0.0)
    assert charged == pytest.approx(0.0 if free else 2 * per_pass)
    fields = summary["strategy_summary"]
    assert fields["hessian_passes"] == 2
    assert fields["hessian_rst_seconds"] == pytest.approx(2 * per_pass)
    assert fields["hessian_rst_charged"] is not free
    assert fields["hessian_priced_by"] == "hessian_seconds"


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["lion", "sophia"])
@pytest.mark.parametrize("config", ["bert-tiny-synthetic", "t5-tiny-synthetic"])
def test_budgeted_run_stops_at_budget_and_learns(tmp_path: Path, config: str, strategy: str):
    budget = 4.0
    extra = ["strategy.k=3"] if strategy == "sophia" else []
    cfg, summary = _run(tmp_path, config, strategy, *extra, f"budget.rst_seconds={budget}")
    table = load_table(cfg.rst.table)
    microbatch = cfg.train.microbatch_size
    most = sum(step_cost(table, cfg.preset.num_layers, microbatch, strategy).values())
    if strategy == "sophia":
        most += table.hessian_seconds * microbatch / table.unit.sequences
    assert 0 <= budget - summary["rst_seconds"] < most
    first, last = summary["validation"][0]["loss"], summary["validation"][-1]["loss"]
    assert last < first - 0.5, (first, last)
    fields = summary["strategy_summary"]
    assert fields["optimizer"] == {"lion": "Lion", "sophia": "Sophia-G"}[strategy]
    assert fields["peak_lr"] == 1e-3
    assert fields["weight_decay"] == cfg.optimizer.weight_decay
    assert summary["rst_breakdown"]["optimizer"] > 0


def _build(config: str, *overrides: str):
    cfg = load_config(config, list(overrides))
    return build_strategy(StrategyContext(cfg, load_table(cfg.rst.table)), checked_strategy(cfg))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.name=sophia", "backend.engine=deepspeed", "train.precision=fp16"],
         "fp16 diverged"),
        (["strategy.name=sophia", "backend.engine=deepspeed", "backend.zero_stage=2"],
         "backend.zero_stage = 2"),
        (["strategy.name=sophia", "backend.engine=deepspeed", "train.precision=bf16"],
         "zero_stage=0 and fp32"),
    ],
)  # fmt: skip
def test_refused_combinations(overrides: list[str], message: str) -> None:
    with pytest.raises(NtngError, match=message):
        _build("bert-tiny-synthetic", *overrides)


@pytest.mark.parametrize("name", ["lion", "sophia"])
def test_an_optimizer_section_tuned_for_another_optimizer_gives_the_study_settings(
    name: str,
) -> None:
    """t5-tiny-synthetic's section is RMS-scaled AdamW at 2e-2: the method takes the study's."""
    strategy = _build("t5-tiny-synthetic", f"strategy.name={name}")
    study = STUDY_SETTINGS[name]["t5"]
    assert strategy.peak_lr() == study["lr"]
    assert strategy.summary_fields()["weight_decay"] == study.get("weight_decay", 0.0)
    assert "optimizer.name = 'adamw_scale'" in strategy.summary_fields()["settings_from"]
    tuned = _build("t5-tiny-synthetic", f"strategy.name={name}", "optimizer.name=adamw")
    assert tuned.peak_lr() == 2e-2


@pytest.mark.parametrize(
    ("strategy", "setting", "field"),
    [
        ("lion", "strategy.betas=[0.9, 1.0]", "strategy.betas"),
        ("sophia", "strategy.betas=[-0.1, 0.99]", "strategy.betas"),
        ("sophia", "strategy.rho=0", "strategy.rho = 0"),
        ("sophia", "strategy.k=0", "strategy.k = 0"),
        ("sophia", "strategy.hessian_microbatches=0", "strategy.hessian_microbatches = 0"),
    ],
)
def test_invalid_parameters_name_their_field(strategy: str, setting: str, field: str) -> None:
    with pytest.raises(NtngError, match=field.replace("[", r"\[")):
        resolve_strategy(load_config("bert-tiny-synthetic", [f"strategy.name={strategy}", setting]))


def test_a_table_that_prices_other_optimizers_only_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from ntng_ray.rst.table import write_table

    table = load_table("cpu-bert-tiny")
    only_adamw = replace(table, optimizer_step_seconds={"adamw": 0.01})
    path = write_table(only_adamw, tmp_path / "adamw-only.json")
    with pytest.raises(NtngError, match="not for 'lion'"):
        _build("bert-tiny-synthetic", "strategy.name=lion", f"rst.table={path}")


def test_hessian_pricing_on_the_papers_tables() -> None:
    """The T5 table's Sophia step amortises the pass (the study charged only it); BERT's
    table prices it as forward+backward of the sequences used."""
    t5 = _build(
        "t5-tiny-synthetic", "model.preset=t5-v1_1-base", "rst.table=paper-t5-a100",
        "strategy.name=sophia", "optimizer.name=adamw", "train.microbatch_size=144",
    )  # fmt: skip
    assert t5.pass_cost(12) == 0.0 and t5.pricing() == "included_in_step"
    bert = _build(
        "bert-tiny-synthetic", "model.preset=bert-crammed", "rst.table=paper-bert-rtx3090-fixed",
        "strategy.name=sophia", "train.microbatch_size=64", "train.grad_accum=2",
    )  # fmt: skip
    assert bert.pass_cost(16) == pytest.approx(0.2253)  # 2 x 64 sequences = the 128-sequence unit
    assert bert.pricing() == "train_seconds"


def test_engine_whose_optimizer_holds_flat_copies_is_refused() -> None:
    """What DeepSpeed's ZeRO/bf16 wrappers do: the optimizer steps tensors not in the model."""
    model = Quadratic()
    flat = nn.Parameter(torch.zeros(2))
    wrapped = SimpleNamespace(model=model, optimizer=SophiaG([flat], lr=0.1))
    with pytest.raises(NtngError, match="zero_stage=0 and fp32"):
        check_engine(wrapped)
    with pytest.raises(NtngError, match="not SophiaG"):
        check_engine(SimpleNamespace(model=model, optimizer=build_lion(model, 0.1, 0.0)))
    check_engine(SimpleNamespace(model=model, optimizer=build_sophia(model, 0.1, 0.0)))


@pytest.mark.integration
def test_calibrated_table_prices_every_optimizer_and_the_hessian() -> None:
    from ntng_ray.preparation.calibrate import calibrate

    table = calibrate("bert-tiny", microbatch=16, repeats=3, warmup=1)
    assert set(table.optimizer_step_seconds) == {"adamw", "lion", "sophia"}
    assert table.hessian_seconds is not None and table.hessian_seconds > 0
    assert validate_table(table).ok, validate_table(table).problems
    for name in ("cpu-bert-tiny", "cpu-t5-tiny"):
        shipped = load_table(name)
        assert set(shipped.optimizer_step_seconds) == {"adamw", "lion", "sophia"}
        assert shipped.hessian_seconds is not None
