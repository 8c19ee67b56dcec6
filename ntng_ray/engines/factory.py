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
is turned on only for runs whose strategy declares that it changes the depth that trains.

What an engine hides from a strategy is said here too (``optimizer_access_refusal``), so a
strategy declares what it needs and never works out which engine a run will get.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ntng_ray.config import RunConfig
from ntng_ray.engines.engine import Engine, TorchEngine
from ntng_ray.engines.optimizers import build_optimizer
from ntng_ray.errors import NtngError

OptimizerAccess = Literal["none", "state", "parameters"]
"""What a strategy needs of the optimizer: nothing; its per-parameter state (to copy or reset
it); or that it steps the model's own parameters (to apply a per-parameter preconditioner)."""


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


def optimizer_access_refusal(kind: str, cfg: RunConfig, access: OptimizerAccess) -> str | None:
    """Why engine ``kind`` cannot give a strategy the optimizer ``access`` it needs; None if it can.

    DeepSpeed's bf16/fp16 optimizer wrapper at ZeRO stage 0 keeps per-parameter state out of
    reach, and its ZeRO and bf16/fp16 wrappers step flat copies of the parameters.
    """
    if kind != "deepspeed" or access == "none":
        return None
    zero, precision = cfg.backend.zero_stage, cfg.train.precision
    if access == "state" and zero == 0 and precision != "fp32":
        return (
            f"it copies and resets optimizer state per parameter, which DeepSpeed keeps out of "
            f"reach at backend.zero_stage = 0 with train.precision = {precision!r}; use "
            "backend.zero_stage = 1 or 2, train.precision = 'fp32', or backend.engine = 'torch'"
        )
    if access == "parameters" and (zero > 0 or precision != "fp32"):
        return (
            f"backend.zero_stage = {zero} with train.precision = {precision!r} under DeepSpeed: "
            "its per-parameter update cannot be applied where DeepSpeed's ZeRO or bf16 "
            "optimizer wrapper keeps flat copies of the parameters; use backend.engine=torch "
            "(fp32 or bf16, any number of workers), or backend.engine=deepspeed with "
            "zero_stage=0 and fp32"
        )
    return None


def planned_device(cfg: RunConfig) -> torch.device:
    """The kind of device the run will train on, known before any worker starts."""
    gpu = cfg.backend.use_gpu or cfg.train.device == "cuda"
    gpu = gpu or (cfg.train.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu else "cpu")


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
    changes_depth: bool,
) -> TorchEngine:
    """Plain torch, in DDP when ``world_size`` > 1."""
    model = model.to(device)
    train_module = None
    if world_size > 1:
        train_module = data_parallel(model, device, find_unused=changes_depth)
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
    changes_depth: bool = False,
) -> Engine:
    """The run's engine over ``model`` (full depth, on ``device``).

    ``optimizer`` defaults to the configured one; a strategy that brings its own optimizer
    (Lion, Sophia) passes it here, which is the way to change it under any engine.
    ``changes_depth``: some steps train a subset of the layers (the strategy says so).
    """
    model = model.to(device)
    optimizer = optimizer or build_optimizer(cfg.optimizer, model)
    if engine_kind(cfg, device) == "torch":
        return build_torch_engine(cfg, model, optimizer, device, world_size, changes_depth)
    from ntng_ray.engines.deepspeed_engine import DeepSpeedEngine, deepspeed_config

    return DeepSpeedEngine(model, optimizer, device, deepspeed_config(cfg, world_size))
