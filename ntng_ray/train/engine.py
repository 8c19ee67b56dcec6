"""The engine: what owns the model, its optimizer, precision and gradient steps.

The loop talks only to this interface, so a DeepSpeed engine or a data-parallel one can take
the place of the plain torch engine without the loop changing. Strategies reach the model's
active layers and the optimizer through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from ntng_ray.models.active_layers import active_layers, set_active_layers

Batch = dict[str, torch.Tensor]


class Engine(Protocol):
    """What the loop needs from an engine."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device

    def forward_backward(self, batch: Batch, scale: float) -> float: ...

    def step(self, lr: float) -> float | None: ...

    def loss_sum(self, batch: Batch) -> tuple[float, int]: ...

    def set_active_layers(self, layers: int | Sequence[int] | None) -> tuple[int, ...]: ...

    def active_layers(self) -> tuple[int, ...]: ...


class TorchEngine:
    """One process, plain torch: autocast for bf16, global-norm clipping, an optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str,
        grad_clip: float | None,
    ) -> None:
        self.model = model.to(device)
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.grad_clip = grad_clip

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def forward_backward(self, batch: Batch, scale: float) -> float:
        """Forward and backward of one microbatch; gradients accumulate, scaled by ``scale``."""
        self.model.train()
        with self._autocast():
            loss = self.model(**self._to_device(batch)).loss
        (loss * scale).backward()
        return loss.detach().float().item()

    def step(self, lr: float) -> float | None:
        """Clip, apply the optimizer at ``lr``, and clear gradients; returns the pre-clip norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = None
        if self.grad_clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @torch.no_grad()
    def loss_sum(self, batch: Batch) -> tuple[float, int]:
        """Summed token loss and the number of scored tokens, for exact averages over batches."""
        self.model.eval()
        batch = self._to_device(batch)
        with self._autocast():
            loss = self.model(**batch).loss.float().item()
        count = int((batch["labels"] != -100).sum())
        return loss * count, count

    def set_active_layers(self, layers: int | Sequence[int] | None) -> tuple[int, ...]:
        return set_active_layers(self.model, layers)

    def active_layers(self) -> tuple[int, ...]:
        return active_layers(self.model)
