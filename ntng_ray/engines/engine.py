"""The engine: what owns the model, its optimizer, precision and gradient steps.

The loop talks only to this interface, so a DeepSpeed engine or a data-parallel one can take
the place of the plain torch engine without the loop changing. Strategies reach the model's
active layers and the optimizer through it: they may replace the optimizer, copy a parameter
with its optimizer state or reset that state (layer stacking), and run no-grad forwards
(selective backprop and RHO-loss scoring).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ntng_ray.errors import NtngError
from ntng_ray.models.active_layers import active_layers, set_active_layers

Batch = dict[str, torch.Tensor]

TORCH_STATE_FILE = "engine.pt"


class Engine(Protocol):
    """What the loop and the strategies need from an engine.

    ``model`` is always the bare module (never a DDP or DeepSpeed wrapper), so strategies can
    reach its layers; ``optimizer`` is the project's client optimizer, whose ``param_groups``
    carry the learning rate. ``forward_backward`` and ``step`` return the loss and the gradient
    norm as tensors on the device: reading them is a host synchronisation, which the loop
    does only where it logs.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device

    def forward_backward(self, batch: Batch, scale: float) -> torch.Tensor: ...

    def step(self, lr: float) -> torch.Tensor | None: ...

    def loss_sum(self, batch: Batch) -> tuple[float, int]: ...

    def forward_no_grad(self, batch: Batch) -> Any: ...

    def set_active_layers(self, layers: int | Sequence[int] | None) -> tuple[int, ...]: ...

    def active_layers(self) -> tuple[int, ...]: ...

    def replace_optimizer(self, optimizer: torch.optim.Optimizer) -> None: ...

    def copy_parameter(self, source: nn.Parameter, target: nn.Parameter) -> None: ...

    def optimizer_state(self, param: nn.Parameter) -> dict[str, torch.Tensor]: ...

    def copy_optimizer_state(self, source: nn.Parameter, target: nn.Parameter) -> None: ...

    def reset_optimizer_state(self, param: nn.Parameter) -> None: ...

    def save_state(self, directory: Path) -> None: ...

    def load_state(self, directory: Path) -> None: ...

    def warm_up(self, batch: Batch) -> None: ...


class EngineBase:
    """What both engines do alike: moving batches, no-grad evaluation, layers, the lr."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device

    def _infer(self, batch: Batch) -> Any:
        """The model's output on a batch already on the device, in the engine's precision."""
        raise NotImplementedError

    def _precision(self) -> contextlib.AbstractContextManager:
        """The context the engine's forward passes run in (autocast, or nothing)."""
        return contextlib.nullcontext()

    def warm_up(self, batch: Batch) -> None:
        """Forward and backward of a copy of the model on ``batch`` in training mode, then a
        no-grad forward in eval mode, in the engine's precision: what torch.compile compiles
        on first use is compiled now, while model, optimizer and gradients stay untouched."""
        clone = copy_with_own_compiled_calls(self.model)
        batch = self._to_device(batch)
        clone.train()
        with self._precision():
            loss = clone(**batch).loss
        loss.backward()
        clone.eval()
        with torch.no_grad(), self._precision():
            clone(**batch)

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def forward_no_grad(self, batch: Batch) -> Any:
        """The model's output (``.loss``, ``.logits``) in eval mode, without a graph: scoring."""
        self.model.eval()
        return self._infer(self._to_device(batch))

    def loss_sum(self, batch: Batch) -> tuple[float, int]:
        """Summed token loss and the number of scored tokens, for exact averages over batches."""
        loss = self.forward_no_grad(batch).loss.float().item()
        count = int((batch["labels"] != -100).sum())
        return loss * count, count

    def set_active_layers(self, layers: int | Sequence[int] | None) -> tuple[int, ...]:
        return set_active_layers(self.model, layers)

    def active_layers(self) -> tuple[int, ...]:
        return active_layers(self.model)


class TorchEngine(EngineBase):
    """Plain torch: autocast for bf16, global-norm clipping, an optimizer step.

    With several workers, ``train_module`` is the model wrapped in DDP (see
    ``engine_factory.data_parallel``): the first ``grad_accum - 1`` microbatches of a step run
    under ``no_sync`` and the last one averages the accumulated gradients across workers.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str,
        grad_clip: float | None,
        *,
        train_module: nn.Module | None = None,
        grad_accum: int = 1,
    ) -> None:
        if precision == "fp16":
            raise NtngError(
                "train.precision = 'fp16': the torch engine has no loss scaling; "
                "use bf16 or fp32, or backend.engine = 'deepspeed'"
            )
        self.model = model.to(device)
        self.optimizer = optimizer
        self.device = device
        self.precision = precision
        self.grad_clip = grad_clip
        self.train_module = train_module if train_module is not None else self.model
        self.grad_accum = grad_accum
        self._microbatches = 0
        self._synchronized = True

    def _precision(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _infer(self, batch: Batch) -> Any:
        with self._precision():
            return self.model(**batch)

    def _gradient_sync(self) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` for all but the step's last expected microbatch, else nothing."""
        self._microbatches += 1
        no_sync = getattr(self.train_module, "no_sync", None)
        self._synchronized = no_sync is None or self._microbatches >= self.grad_accum
        return contextlib.nullcontext() if self._synchronized else no_sync()

    def forward_backward(self, batch: Batch, scale: float) -> torch.Tensor:
        """Forward and backward of one microbatch; gradients accumulate, scaled by ``scale``.
        Returns the microbatch's loss, detached, on the device."""
        self.train_module.train()
        with self._gradient_sync():
            with self._precision():
                loss = self.train_module(**self._to_device(batch)).loss
            (loss * scale).backward()
        return loss.detach().float()

    def step(self, lr: float) -> torch.Tensor | None:
        """Clip, apply the optimizer at ``lr``, and clear gradients; returns the pre-clip norm."""
        if not self._synchronized:
            raise NtngError(
                f"step() after {self._microbatches} microbatches: with data-parallel workers the "
                f"torch engine averages gradients on microbatch {self.grad_accum} of a step"
            )
        self._microbatches = 0
        self._set_lr(lr)
        norm = None
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def replace_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Use ``optimizer`` from the next step on (it must hold this model's parameters)."""
        check_optimizer_params(optimizer, self.model)
        self.optimizer = optimizer

    def copy_parameter(self, source: nn.Parameter, target: nn.Parameter) -> None:
        """Overwrite ``target``'s value with ``source``'s (layer stacking's block copy)."""
        copy_tensor(source, target)

    def optimizer_state(self, param: nn.Parameter) -> dict[str, torch.Tensor]:
        return moments(self.optimizer, param)

    def copy_optimizer_state(self, source: nn.Parameter, target: nn.Parameter) -> None:
        copy_optimizer_state(self.optimizer, source, target)

    def reset_optimizer_state(self, param: nn.Parameter) -> None:
        reset_optimizer_state(self.optimizer, param)

    def save_state(self, directory: Path) -> None:
        """Model and optimizer state in ``directory``; rank 0 writes it, as all ranks agree."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        directory.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        torch.save(state, directory / TORCH_STATE_FILE)

    def load_state(self, directory: Path) -> None:
        """Restore what ``save_state`` wrote; tensors only, nothing unpickled beyond them."""
        path = directory / TORCH_STATE_FILE
        if not path.is_file():
            raise NtngError(f"no torch engine state at {path}")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def copy_with_own_compiled_calls(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose submodules are compiled where the original's are.

    A deep copy drops ``nn.Module.compile``'s compiled call; compiling the copy's blocks again
    costs nothing by itself: compiled code is cached per code object, not per module, so what
    the copy compiles on first use is what the original's blocks then run.
    """
    clone = copy.deepcopy(module)
    for original, copied in zip(module.modules(), clone.modules(), strict=True):
        if getattr(original, "_compiled_call_impl", None) is not None:
            copied.compile()
    return clone


def check_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse an optimizer that would update tensors other than ``model``'s parameters."""
    own = {id(p) for p in model.parameters()}
    foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
    if foreign:
        raise NtngError(f"the new optimizer holds {len(foreign)} tensors that are not the model's")


def check_same_shape(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.shape != target.shape:
        raise ValueError(f"cannot copy a {tuple(source.shape)} tensor into {tuple(target.shape)}")


@torch.no_grad()
def copy_tensor(source: torch.Tensor, target: torch.Tensor) -> None:
    check_same_shape(source, target)
    target.copy_(source)


def moments(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> dict[str, torch.Tensor]:
    """``param``'s per-element optimizer state (e.g. exp_avg, exp_avg_sq), not its step count."""
    state = optimizer.state.get(param, {})
    return {key: value for key, value in state.items() if torch.is_tensor(value) and value.ndim > 0}


def copy_optimizer_state(
    optimizer: torch.optim.Optimizer, source: nn.Parameter, target: nn.Parameter
) -> None:
    """Give ``target`` a copy of ``source``'s optimizer state (none if ``source`` has none)."""
    check_same_shape(source, target)
    state = optimizer.state.get(source)
    if not state:
        optimizer.state.pop(target, None)
        return
    optimizer.state[target] = {
        key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()
    }


def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> None:
    """Forget ``param``'s optimizer state: its next update starts fresh, step count included."""
    optimizer.state.pop(param, None)
