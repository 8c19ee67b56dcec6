"""Choose and build the engine a run trains with, from its config.

``backend.engine = auto`` means DeepSpeed on GPU and plain torch on CPU (both work on CPU;
torch is the lighter one there). The torch engine wraps the model in DDP when there is more
than one worker.

DDP and inactive layers: DDP expects a gradient for every parameter in every backward; a
layer that layer stacking has not grown into yet, or that layer dropping skips this step, has
none, and DDP would wait for it forever. ``find_unused_parameters=True`` makes DDP walk the
autograd graph after each forward and mark the missing ones ready; a parameter unused on every
worker (strategies choose the same layers on all workers) keeps ``grad = None``, so the
optimizer leaves it alone, as in one process. The graph walk costs a little per forward, so it
is turned on only for strategies that can change the active layers.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ntng_ray.config import RunConfig
from ntng_ray.errors import NtngError
from ntng_ray.train.engine import Engine, TorchEngine
from ntng_ray.train.optim import build_optimizer

# Strategies that always train every layer; any other may leave layers without gradients.
FULL_DEPTH_STRATEGIES = frozenset(
    {"baseline", "selective_backprop", "rho_loss", "rho_il_model", "lion", "sophia"}
)


def engine_kind(cfg: RunConfig, device: torch.device) -> str:
    """``torch`` or ``deepspeed``: the configured engine, with ``auto`` resolved.

    ``auto`` is DeepSpeed on GPU where it is installed (a GPU machine with only torch and
    transformers still runs), plain torch otherwise.
    """
    installed = importlib.util.find_spec("deepspeed") is not None
    if cfg.backend.engine == "deepspeed" and not installed:
        raise NtngError("backend.engine = 'deepspeed' but deepspeed is not installed")
    if cfg.backend.engine != "auto":
        return cfg.backend.engine
    return "deepspeed" if device.type == "cuda" and installed else "torch"


def layers_can_change(cfg: RunConfig) -> bool:
    """Whether the run's strategy may train a subset of the layers in some step."""
    return cfg.strategy.name not in FULL_DEPTH_STRATEGIES


def data_parallel(model: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """``model`` in DDP over the launcher's process group (gloo on CPU, NCCL on GPU)."""
    if not dist.is_initialized():
        raise NtngError(
            "data-parallel torch engine: torch.distributed is not initialised; "
            "run with several workers through Ray Train (backend.launcher = ray)"
        )
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def build_torch_engine(
    cfg: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    world_size: int,
) -> TorchEngine:
    """Plain torch, in DDP when ``world_size`` > 1."""
    model = model.to(device)
    train_module = None
    if world_size > 1:
        train_module = data_parallel(model, device, find_unused=layers_can_change(cfg))
    return TorchEngine(
        model,
        optimizer,
        device,
        cfg.train.precision,
        cfg.optimizer.grad_clip,
        train_module=train_module,
        grad_accum=cfg.train.grad_accum,
    )


def build_engine(
    cfg: RunConfig,
    model: nn.Module,
    device: torch.device,
    world_size: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
) -> Engine:
    """The run's engine over ``model`` (full depth, on ``device``).

    ``optimizer`` defaults to the configured one; a strategy that brings its own optimizer
    (Lion, Sophia) passes it here, which is the way to change it under any engine.
    """
    model = model.to(device)
    optimizer = optimizer or build_optimizer(cfg.optimizer, model)
    if engine_kind(cfg, device) == "torch":
        return build_torch_engine(cfg, model, optimizer, device, world_size)
    from ntng_ray.train.deepspeed_engine import DeepSpeedEngine, deepspeed_config

    return DeepSpeedEngine(model, optimizer, device, deepspeed_config(cfg, world_size))
