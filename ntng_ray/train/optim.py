"""Optimizers of the baselines: AdamW (BERT) and nanoT5's RMS-scaled AdamW (T5).

Weight decay is applied to weight matrices only, never to biases, norms or other vectors,
as in the study's recipes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ntng_ray.config import OptimizerConfig

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
