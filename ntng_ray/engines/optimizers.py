"""Every optimizer a run can step, in one place: AdamW and nanoT5's RMS-scaled AdamW (the
baselines), Lion and Sophia-G (the optimizer methods).

Weight decay is applied to weight matrices only, never to biases, norms or other vectors, as in
the study's recipes. Lion comes from ``lion-pytorch`` (Phil Wang's maintained package, the
implementation the study itself vendored); its update is the paper's, with decoupled weight
decay. Sophia-G and AdamWScale are written here because no maintained package provides them:
``SophiaG`` follows the official implementation's update, and ``gnb_gradient_sums`` computes the
Gauss-Newton-Bartlett estimator's gradients so the loop, the strategy and ``ntng calibrate`` all
run (and time) the same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ntng_ray.config import OptimizerConfig
from ntng_ray.engines.engine import Batch
from ntng_ray.errors import NtngError

# The reference-table entry an optimizer's step is charged at: RMS scaling costs about what
# AdamW costs, and the study's T5 table times its AdamW-scale steps as "AdamW".
TABLE_OPTIMIZER = {"adamw": "adamw", "adamw_scale": "adamw"}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and undecayed biases, norm weights and other 1-d tensors."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = "norm" in name.lower()
        (no_decay if param.ndim < 2 or is_norm else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over ``model``'s parameters (lr is set per step by the schedule)."""
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.name == "adamw_scale":
        return AdamWScale(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    # Fused: one kernel per step on CPU and GPU, and its step counts stay with the parameters,
    # so a step reads nothing back to the host (the per-tensor path reads each count).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


# Devices whose tensors are stepped one list each. PyTorch's multi-tensor ops loop over the
# tensors on the CPU anyway, and there a one-tensor list keeps the tensor in cache through its
# whole update: as whole lists, a CPU step of t5-tiny's parameters took ~40% longer.
PER_TENSOR_DEVICES = {"cpu"}


def multi_tensor_lists(params: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``params`` as the lists one multi-tensor kernel takes: one per (device, dtype) in order,
    or one per tensor on ``PER_TENSOR_DEVICES``. Each tensor's update is the same either way."""
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    singles = []
    for param in params:
        if param.device.type in PER_TENSOR_DEVICES:
            singles.append([param])
        else:
            buckets.setdefault((param.device, param.dtype), []).append(param)
    return singles + list(buckets.values())


def scale_(tensors: list[torch.Tensor], factor: float) -> None:
    """``t *= factor`` for every tensor of one device and dtype, in one multi-tensor kernel.

    The factor multiplies in fp32 for bf16 and fp16 tensors, as ``Tensor.mul_`` and the CUDA
    multi-tensor kernels do; PyTorch's CPU multi-tensor path rounds a Python scalar to the
    tensors' dtype first, so there it goes in as a 0-d fp32 tensor.
    """
    if tensors[0].device.type == "cpu" and tensors[0].dtype in (torch.bfloat16, torch.float16):
        torch._foreach_mul_(tensors, torch.tensor(factor, dtype=torch.float32))
    else:
        torch._foreach_mul_(tensors, factor)


class AdamWScale(torch.optim.Optimizer):
    """AdamW whose step size is scaled by each parameter's RMS (floored at 1e-3).

    This is Adafactor's relative step size grafted onto AdamW, the optimizer nanoT5 uses to
    reproduce T5 v1.1 pretraining at LR 2e-2 (Nawrot, 2023). Written here because no
    maintained package provides it. Weight decay is decoupled and not scaled.

    Per parameter with a gradient, at its own step count t: ``m = b1 m + (1 - b1) g``;
    ``v = b2 v + (1 - b2) g**2``; ``p -= m / (sqrt(v) + eps) * rms(p) * lr * c_t`` with
    ``c_t = sqrt(1 - b2**t) / (1 - b1**t)`` and ``rms(p)`` taken before the update, in fp32;
    then ``p -= lr * wd * p``. The step runs on multi-tensor (``torch._foreach_*``) kernels over
    each group's parameters of one device and dtype (one tensor at a time on the CPU, see
    ``PER_TENSOR_DEVICES``), and never reads a tensor's value on the host, so it does not wait
    for the GPU. The per-parameter RMS scale is a device scalar, which PyTorch's multi-tensor
    kernels apply one tensor at a time (on CUDA, one small kernel per parameter for that
    multiply; every other operation is one launch per list).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    def _state(self, param: nn.Parameter) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            for params in multi_tensor_lists(with_grad):
                self._step_tensors(group, params)
        return loss

    def _step_tensors(self, group: dict, params: list[torch.Tensor]) -> None:
        """One step of ``params`` (one device and dtype, all with gradients)."""
        beta1, beta2 = group["betas"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        grads = [p.grad for p in params]
        states = [self._state(p) for p in params]
        exp_avgs = [state["exp_avg"] for state in states]
        exp_avg_sqs = [state["exp_avg_sq"] for state in states]
        corrections = []  # host floats: the step counts are Python ints
        for state in states:
            state["step"] += 1
            t = state["step"]
            corrections.append(math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))

        # rms(p) * lr * c_t per parameter, before the update: ||p|| / sqrt(numel), in fp32.
        scales = list(torch._foreach_norm(params, 2, dtype=torch.float32))
        torch._foreach_div_(scales, [math.sqrt(p.numel()) for p in params])
        torch._foreach_clamp_min_(scales, 1e-3)
        torch._foreach_mul_(scales, lr)
        torch._foreach_mul_(scales, corrections)
        if params[0].dtype != torch.float32:
            scales = list(torch.stack(scales).to(params[0].dtype).unbind())

        scale_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        scale_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        updates = torch._foreach_div(exp_avgs, denoms)
        del denoms
        torch._foreach_mul_(updates, scales)
        torch._foreach_sub_(params, updates)
        if weight_decay > 0.0:
            torch._foreach_add_(params, params, alpha=-lr * weight_decay)


if TYPE_CHECKING:
    from lion_pytorch import Lion

LION_BETAS = (0.9, 0.99)
SOPHIA_BETAS = (0.965, 0.99)
SOPHIA_RHO = 0.01
SOPHIA_EPS = 1e-15
IGNORE = -100


def build_lion(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = LION_BETAS
) -> Lion:
    """Lion over ``model``, decaying weight matrices only (as the baselines do).

    Imported here, so a machine without ``lion-pytorch`` still runs every other strategy.
    """
    try:
        from lion_pytorch import Lion
    except ImportError:
        raise NtngError(
            "strategy lion needs the lion-pytorch package: pip install lion-pytorch"
        ) from None
    return Lion(parameter_groups(model, weight_decay), lr=lr, betas=betas)


def build_sophia(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = SOPHIA_BETAS,
    rho: float = SOPHIA_RHO,
) -> SophiaG:
    """Sophia-G over ``model``, decaying weight matrices only (as the baselines do)."""
    return SophiaG(parameter_groups(model, weight_decay), lr=lr, betas=betas, rho=rho)


@dataclass
class GradientSums:
    """Summed gradients of the GNB loss over ``positions`` labelled positions.

    Kept as sums (not means) so workers can add theirs exactly before the estimate is formed.
    ``positions`` is an int, or a 0-d int64 tensor on the sums' device (as ``gnb_gradient_sums``
    counts it, so the pass never waits for the GPU); ``SophiaG.update_hessian`` reads it once.
    """

    params: list[nn.Parameter]
    sums: list[torch.Tensor]
    positions: int | torch.Tensor

    def all_reduce(self) -> GradientSums:
        """The data-parallel group's total, identical on every worker (one flat all-reduce)."""
        import torch.distributed as dist

        flat = torch.cat([s.reshape(-1) for s in self.sums])
        count = torch.as_tensor(self.positions, dtype=torch.int64, device=flat.device)
        count = count.reshape(1).clone()  # a copy: the caller's count is not reduced in place
        dist.all_reduce(flat)
        dist.all_reduce(count)
        parts = flat.split([s.numel() for s in self.sums])
        sums = [part.view_as(s) for part, s in zip(parts, self.sums, strict=True)]
        return GradientSums(self.params, sums, count.reshape(()))


def flat_logits_and_targets(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits as rows [N, V], and for each row whether it is a labelled position.

    BERT's sparse head returns only the labelled rows ([n, V]); T5 returns [B, T, V] for
    labels [B, T], where -100 marks padding.
    """
    if logits.dim() == 2:
        return logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1) != IGNORE


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per row drawn from softmax(logits), by inverse CDF: one uniform per row.

    ``torch.multinomial`` draws one exponential per vocabulary entry, single-threaded on CPU,
    which cost more than the forward pass of a tiny model.
    """
    cdf = logits.softmax(-1).cumsum_(-1)
    uniform = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)
    drawn = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
    return drawn.squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def gnb_gradient_sums(
    model: nn.Module, batches: Iterable[Batch], generator: torch.Generator, precision: str
) -> GradientSums:
    """Gradients of the Gauss-Newton-Bartlett loss, summed over the labelled positions.

    Per labelled position, a label is sampled from the model's own predicted distribution and
    the cross-entropy against it is summed (Liu et al. 2023, Algorithm 2; the official code
    samples with ``torch.distributions.Categorical``, the same distribution). Gradients come
    from ``torch.autograd.grad`` on the bare module, so ``.grad`` and any DDP or DeepSpeed hooks
    are left untouched: the training step's gradients cannot mix with these.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    sums = [torch.zeros_like(p) for p in params]
    positions = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device
    model.train()
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device, precision):
            logits = model(**batch).logits
        rows, labelled = flat_logits_and_targets(logits.float(), batch["labels"])
        sampled = sample_labels(rows.detach(), generator).masked_fill_(~labelled, IGNORE)
        loss = F.cross_entropy(rows, sampled, ignore_index=IGNORE, reduction="sum")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for total, grad in zip(sums, grads, strict=True):
            if grad is not None:
                total.add_(grad)
        positions += labelled.sum()
    return GradientSums(params, sums, positions)


class SophiaG(torch.optim.Optimizer):
    """Sophia-G (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer").

    Per parameter, each step: ``p *= 1 - lr * wd`` (decoupled weight decay);
    ``m = b1 * m + (1 - b1) * g``; ``p -= lr * sign(m) * min(|m| / (rho * h + eps), 1)``.
    ``h`` is the EMA (b2) of the GNB estimates ``h_hat = B * g_hat**2`` fed to
    ``update_hessian`` every k steps, where ``g_hat`` is the mean gradient over the B labelled
    positions. The official SophiaG keeps the EMA of ``g_hat**2`` and multiplies by the batch's
    token count at each step (``rho * bs * hess``); folding B into the estimate is the paper's
    form, equal to it when the Hessian batch is the training batch and still right when not.
    The official training script also clips the estimate's gradient at the run's clipping
    norm; it is not clipped here, as that would bias the estimate whenever it triggered.
    The step runs on multi-tensor (``torch._foreach_*``) kernels per device and dtype (see
    ``multi_tensor_lists``), and never reads a tensor's value on the host.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: tuple[float, float] = SOPHIA_BETAS,
        rho: float = SOPHIA_RHO,
        weight_decay: float = 0.0,
        eps: float = SOPHIA_EPS,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "rho": rho, "weight_decay": weight_decay, "eps": eps}
        super().__init__(params, defaults)

    def _state(self, param: nn.Parameter) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            state["exp_avg"] = torch.zeros_like(param)
            state["hessian"] = torch.zeros_like(param)
        return state

    @torch.no_grad()
    def update_hessian(self, gradients: GradientSums) -> None:
        """Fold one GNB estimate ``h_hat = sum**2 / B`` into the Hessian EMA.

        B is read on the host here, once per estimate (a device count waits for the pass's
        kernels): the skip of an empty batch and the division by the int stay as they were.
        """
        positions = int(gradients.positions)
        if positions == 0:
            return
        estimates = dict(zip(gradients.params, gradients.sums, strict=True))
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for param in group["params"]:
                total = estimates.get(param)
                if total is None:
                    continue
                h_hat = total.square().div_(positions)
                self._state(param)["hessian"].mul_(beta2).add_(h_hat, alpha=1.0 - beta2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            for params in multi_tensor_lists(with_grad):
                self._step_tensors(group, params)
        return loss

    def _step_tensors(self, group: dict, params: list[torch.Tensor]) -> None:
        """One step of ``params`` (one device and dtype, all with gradients), on multi-tensor
        kernels and without reading any value on the host."""
        beta1 = group["betas"][0]
        lr, rho, eps, weight_decay = group["lr"], group["rho"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        states = [self._state(p) for p in params]
        exp_avgs = [state["exp_avg"] for state in states]
        hessians = [state["hessian"] for state in states]
        if weight_decay != 0.0:  # p * (1 - lr * 0) would be p * 1.0: p exactly
            scale_(params, 1.0 - lr * weight_decay)
        scale_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        ratios = torch._foreach_abs(exp_avgs)
        denoms = torch._foreach_mul(hessians, rho)
        torch._foreach_add_(denoms, eps)
        torch._foreach_div_(ratios, denoms)
        del denoms
        torch._foreach_clamp_max_(ratios, 1.0)
        torch._foreach_addcmul_(params, torch._foreach_sign(exp_avgs), ratios, value=-lr)
