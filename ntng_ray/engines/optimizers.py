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
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


class AdamWScale(torch.optim.Optimizer):
    """AdamW whose step size is scaled by each parameter's RMS (floored at 1e-3).

    This is Adafactor's relative step size grafted onto AdamW, the optimizer nanoT5 uses to
    reproduce T5 v1.1 pretraining at LR 2e-2 (Nawrot, 2023). Written here because no
    maintained package provides it. Weight decay is decoupled and not scaled.
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
    """

    params: list[nn.Parameter]
    sums: list[torch.Tensor]
    positions: int

    def all_reduce(self) -> GradientSums:
        """The data-parallel group's total, identical on every worker (one flat all-reduce)."""
        import torch.distributed as dist

        flat = torch.cat([s.reshape(-1) for s in self.sums])
        count = torch.tensor([self.positions], dtype=torch.int64, device=flat.device)
        dist.all_reduce(flat)
        dist.all_reduce(count)
        parts = flat.split([s.numel() for s in self.sums])
        sums = [part.view_as(s) for part, s in zip(parts, self.sums, strict=True)]
        return GradientSums(self.params, sums, int(count.item()))


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
    positions = 0
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
        positions += int(labelled.sum())
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
        """Fold one GNB estimate ``h_hat = sum**2 / B`` into the Hessian EMA."""
        if gradients.positions == 0:
            return
        estimates = dict(zip(gradients.params, gradients.sums, strict=True))
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for param in group["params"]:
                total = estimates.get(param)
                if total is None:
                    continue
                h_hat = total.square().div_(gradients.positions)
                self._state(param)["hessian"].mul_(beta2).add_(h_hat, alpha=1.0 - beta2)

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
