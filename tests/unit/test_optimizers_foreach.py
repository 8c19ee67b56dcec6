"""AdamWScale and SophiaG on multi-tensor kernels equal their per-parameter loops.

The reference classes below are the optimizers' steps as they were written before the step ran
on ``torch._foreach_*`` kernels: the specification the multi-tensor versions must reproduce,
skipped parameters (a gradient of None, whose step count then lags), weight decay on and off,
a learning rate per group, mixed dtypes in one group and checkpoints included.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import ntng_ray.engines.optimizers as optimizers_module
from ntng_ray.engines.optimizers import (
    AdamWScale,
    SophiaG,
    multi_tensor_lists,
    parameter_groups,
)

STEPS = 5
TOLERANCE = 1e-6


@pytest.fixture(params=["whole lists", "per tensor"])
def grouping(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of taking the tensors: a list per (device, dtype), as on CUDA, and a list per
    tensor, as on the CPU."""
    if request.param == "whole lists":
        monkeypatch.setattr(optimizers_module, "PER_TENSOR_DEVICES", set())
    return request.param


class ReferenceAdamWScale(torch.optim.Optimizer):
    """AdamWScale's step as a loop over parameters (the code before the foreach rewrite)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(param.grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(param.grad, param.grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                correction = math.sqrt(1.0 - beta2 ** state["step"]) / (
                    1.0 - beta1 ** state["step"]
                )
                rms = param.float().pow(2).mean().sqrt().clamp_min(1e-3)
                param.sub_(exp_avg / denom * (rms * group["lr"] * correction).to(param.dtype))
                if group["weight_decay"] > 0.0:
                    param.add_(param, alpha=-group["lr"] * group["weight_decay"])
        return loss


class ReferenceSophiaG(SophiaG):
    """SophiaG's step as a loop over parameters (the code before the foreach rewrite)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1 = group["betas"][0]
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._state(param)
                exp_avg = state["exp_avg"]
                param.mul_(1.0 - lr * group["weight_decay"])
                exp_avg.mul_(beta1).add_(param.grad, alpha=1.0 - beta1)
                ratio = (exp_avg.abs() / (rho * state["hessian"] + eps)).clamp_(max=1.0)
                param.addcmul_(exp_avg.sign(), ratio, value=-lr)
        return loss


class Mixed(nn.Module):
    """Parameters of mixed shapes; ``late`` stands for a stacked layer that is inactive on some
    steps (its gradient is None then)."""

    def __init__(self, low_precision: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embedding = nn.Embedding(50, 16)
        self.linear = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 8, bias=False)
        self.late = nn.Linear(8, 8)
        self.tiny = nn.Parameter(torch.full((3,), 1e-5))  # RMS under the 1e-3 floor
        with torch.no_grad():
            for param in self.parameters():
                if param is not self.tiny:
                    param.copy_(torch.randn(param.shape, generator=generator))
        if low_precision:  # bf16 and fp32 parameters in the same groups
            self.linear.to(torch.bfloat16)
            self.norm.to(torch.bfloat16)


def groups(model: nn.Module, weight_decay: float = 0.1) -> list[dict]:
    """The repository's two groups, with a learning rate each."""
    decay, no_decay = parameter_groups(model, weight_decay)
    return [decay | {"lr": 1e-2}, no_decay | {"lr": 2e-2}]


def skipped(model: Mixed, step: int) -> set[nn.Parameter]:
    return set(model.late.parameters()) if step in (2, 4) else set()


def set_gradients(models: list[Mixed], step: int) -> None:
    """The same random gradients on every model; none for the parameters skipped this step."""
    generator = torch.Generator().manual_seed(1000 + step)
    params = [list(m.parameters()) for m in models]
    for index, first in enumerate(params[0]):
        grad = torch.randn(first.shape, generator=generator)
        for model, model_params in zip(models, params, strict=True):
            param = model_params[index]
            param.grad = None if param in skipped(model, step) else grad.to(param.dtype)


def run(models: list[Mixed], optimizers: list[torch.optim.Optimizer], steps: range) -> None:
    for step in steps:
        set_gradients(models, step)
        for optimizer in optimizers:
            optimizer.step()


def max_differences(
    a: Mixed, b: Mixed, opt_a: torch.optim.Optimizer, opt_b: torch.optim.Optimizer, keys
) -> dict[str, float]:
    """Max |a - b| over the parameters and over each state tensor in ``keys``."""
    worst = dict.fromkeys(["params", *keys], 0.0)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert pa.dtype == pb.dtype
        worst["params"] = max(worst["params"], (pa.float() - pb.float()).abs().max().item())
        state_a, state_b = opt_a.state[pa], opt_b.state[pb]
        assert state_a.get("step") == state_b.get("step")
        for key in keys:
            gap = (state_a[key].float() - state_b[key].float()).abs().max().item()
            worst[key] = max(worst[key], gap)
    return worst


def pair(
    reference: Callable, new: Callable, low_precision: bool = False, weight_decay: float = 0.1
) -> tuple[list[Mixed], list[torch.optim.Optimizer]]:
    model = Mixed(low_precision)
    twin = copy.deepcopy(model)
    return [model, twin], [reference(groups(model, weight_decay)), new(groups(twin, weight_decay))]


@pytest.mark.usefixtures("grouping")
@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
def test_adamw_scale_equals_the_per_parameter_loop(weight_decay: float) -> None:
    models, optimizers = pair(
        lambda g: ReferenceAdamWScale(g, lr=1.0),
        lambda g: AdamWScale(g, lr=1.0),
        False,
        weight_decay,
    )
    run(models, optimizers, range(1, STEPS + 1))
    worst = max_differences(*models, *optimizers, ["exp_avg", "exp_avg_sq"])
    assert max(worst.values()) <= TOLERANCE, worst
    new = optimizers[1]
    assert new.state[models[1].linear.weight]["step"] == STEPS
    assert new.state[models[1].late.weight]["step"] == STEPS - 2  # skipped on steps 2 and 4
    assert models[0].linear.weight.sub(Mixed().linear.weight).abs().max() > 1e-3  # it moved


def test_adamw_scale_with_bf16_and_fp32_in_one_group_equals_the_loop(grouping: str) -> None:
    """Each group holds bf16 and fp32 tensors: stepped as two lists, one per dtype."""
    models, optimizers = pair(
        lambda g: ReferenceAdamWScale(g, lr=1.0), lambda g: AdamWScale(g, lr=1.0), True
    )
    assert {p.dtype for p in optimizers[1].param_groups[0]["params"]} == {
        torch.bfloat16,
        torch.float32,
    }
    params = optimizers[1].param_groups[0]["params"]
    lists = multi_tensor_lists(params)
    assert len(lists) == (2 if grouping == "whole lists" else len(params))
    assert all(len({p.dtype for p in tensors}) == 1 for tensors in lists)
    run(models, optimizers, range(1, STEPS + 1))
    worst = max_differences(*models, *optimizers, ["exp_avg", "exp_avg_sq"])
    assert max(worst.values()) <= TOLERANCE, worst


@pytest.mark.usefixtures("grouping")
def test_adamw_scale_checkpoint_loads_and_continues_identically() -> None:
    """A state_dict of the new optimizer (and one of the old loop: the same format) loads into
    a fresh AdamWScale, which then steps exactly as the optimizer it was saved from."""
    models, optimizers = pair(
        lambda g: ReferenceAdamWScale(g, lr=1.0), lambda g: AdamWScale(g, lr=1.0)
    )
    run(models, optimizers, range(1, 4))
    restored_models, restored = [], []
    for model, optimizer in zip(models, optimizers, strict=True):
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        fresh = Mixed()
        fresh.load_state_dict(saved["model"])
        optimizer_ = AdamWScale(groups(fresh), lr=1.0)
        optimizer_.load_state_dict(saved["optimizer"])
        assert isinstance(optimizer_.state[fresh.linear.weight]["step"], int)
        restored_models.append(fresh)
        restored.append(optimizer_)
    run([*models, *restored_models], [*optimizers, *restored], range(4, 7))
    # Restored from the new optimizer: bit for bit the run that was not interrupted.
    for a, b in zip(models[1].parameters(), restored_models[1].parameters(), strict=True):
        assert torch.equal(a, b)
        assert optimizers[1].state[a]["step"] == restored[1].state[b]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizers[1].state[a][key], restored[1].state[b][key])
    # Restored from the old loop's checkpoint: continues as the old loop did.
    worst = max_differences(models[0], restored_models[0], optimizers[0], restored[0], ["exp_avg"])
    assert max(worst.values()) <= TOLERANCE, worst


@pytest.mark.usefixtures("grouping")
@pytest.mark.parametrize("low_precision", [False, True])
def test_sophia_equals_the_per_parameter_loop(low_precision: bool) -> None:
    def build(cls):
        return lambda g: cls(g, lr=0.5, rho=0.05)

    models, optimizers = pair(build(ReferenceSophiaG), build(SophiaG), low_precision)
    for step in range(1, STEPS + 1):
        if step == 3:  # a Hessian estimate (positive, of the parameters' shapes) part way
            for model, optimizer in zip(models, optimizers, strict=True):
                with torch.no_grad():
                    generator = torch.Generator().manual_seed(7)
                    for param in model.parameters():
                        h = torch.rand(param.shape, generator=generator).to(param.dtype)
                        optimizer._state(param)["hessian"].copy_(h)
        run(models, optimizers, range(step, step + 1))
    worst = max_differences(*models, *optimizers, ["exp_avg", "hessian"])
    assert max(worst.values()) == 0.0, worst  # the same kernels per element on CPU: bit for bit


@pytest.mark.parametrize("cls", [AdamWScale, SophiaG])
def test_step_reads_no_tensor_value_on_the_host(cls) -> None:
    """On the meta device every value read (``.item()``, ``bool(t)``, ``nonzero``) raises, so
    a step that completes there queues its kernels without waiting for the device."""
    model = Mixed(low_precision=True).to("meta")
    optimizer = cls(groups(model), lr=1.0)
    for step in range(1, 3):
        for param in model.parameters():
            param.grad = None if param in skipped(model, step) else torch.empty_like(param)
        optimizer.step()
    assert optimizer.state[model.linear.weight]["exp_avg"].is_meta
