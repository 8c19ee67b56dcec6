"""The DeepSpeed engine: ZeRO 0-2, bf16 / fp16 / fp32, from a config generated from the run's.

Users keep one config: ``deepspeed_config`` derives DeepSpeed's (batch sizes, accumulation,
clipping, ZeRO stage, precision) from the ``RunConfig``. The optimizer is the project's client
optimizer and DeepSpeed gets no scheduler: the loop sets the learning rate each step from RST
progress.

Accumulation runs in DeepSpeed's unmanaged mode (``managed_gradient_accumulation: false``):
each ``backward`` only accumulates, and ``step`` is the boundary that reduces across workers,
clips and updates, exactly once. That is the loop's contract (``forward_backward`` k times,
then ``step``), which DeepSpeed's default micro-step counter would not follow. The loss is
scaled by the caller's ``scale`` (``scale_wrt_gas=False``), as in the torch engine, so both
see the same gradients; ``gradient_accumulation_steps`` only keeps DeepSpeed's batch-size
bookkeeping consistent.

``deepspeed`` is imported lazily here, after its environment is set, so the torch engine and
the GPU machine (which has no DeepSpeed) never import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntng_ray.config import RunConfig
from ntng_ray.engines.dist_env import ensure_deepspeed_accelerator, ensure_single_process_env
from ntng_ray.engines.engine import (
    Batch,
    EngineBase,
    check_optimizer_params,
    check_same_shape,
    copy_optimizer_state,
    copy_tensor,
    moments,
    reset_optimizer_state,
)
from ntng_ray.errors import NtngError

CHECKPOINT_TAG = "engine"
# DeepSpeed prints progress every this many steps; the loop does its own logging.
NEVER = 2**62


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed's config for ``cfg`` on ``world_size`` data-parallel workers."""
    train = cfg.train
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.microbatch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.microbatch_size * train.grad_accum * world_size,
        "gradient_clipping": cfg.optimizer.grad_clip or 0.0,
        "zero_optimization": {"stage": cfg.backend.zero_stage},
        "managed_gradient_accumulation": False,
        # ZeRO partitions any client optimizer; this lets it take AdamWScale (and Lion, Sophia).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        # loss_scale 0 is dynamic loss scaling: start at 2**16, halve on overflow.
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def prebuild_ops(device: torch.device) -> list[str]:
    """Compile DeepSpeed's JIT ops that ``initialize`` needs on ``device``; returns their names.

    On CPU that is the shared-memory collective op (``deepspeed_shm_comm``, ~45 s to build),
    cached under ``$TORCH_EXTENSIONS_DIR``; run once before tests so none of them pays for it.
    """
    ensure_deepspeed_accelerator(device)
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        return []
    builder.load()
    return [builder.NAME]


class DeepSpeedEngine(EngineBase):
    """The Engine protocol over ``deepspeed.initialize``; semantics as ``TorchEngine``'s.

    Differences a strategy must know: DeepSpeed gives every parameter without a gradient
    (an inactive layer) a zero gradient, so the optimizer still moves it by momentum and
    weight decay, where the torch engine leaves it alone. Under ZeRO or bf16/fp16 the
    optimizer's state lives in flat partitions with one step count per group, so a reset
    zeroes a parameter's moments but cannot restart its bias correction.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        config: dict[str, Any],
    ) -> None:
        ensure_deepspeed_accelerator(device)
        ensure_single_process_env()
        import deepspeed

        self._ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.model = self._ds.module
        self.optimizer = self._ds.basic_optimizer
        self.device = self._ds.device
        self._fp32_clip_norm: float | None = None
        if self._plain_fp32():
            self._keep_fp32_clip_norm()

    def _plain_fp32(self) -> bool:
        """True when DeepSpeed steps the client optimizer itself (ZeRO 0, fp32): no wrapper."""
        return self._ds.optimizer is self._ds.basic_optimizer

    def _keep_fp32_clip_norm(self) -> None:
        """On the unwrapped path DeepSpeed clips with its own norm and drops it; keep it."""
        from deepspeed.runtime.utils import clip_grad_norm_

        ds = self._ds

        def clip() -> None:
            norm = clip_grad_norm_(ds.module.parameters(), ds.gradient_clipping(), mpu=ds.mpu)
            self._fp32_clip_norm = torch.as_tensor(norm)

        ds.clip_fp32_gradients = clip

    def _infer(self, batch: Batch) -> Any:
        return self._ds(**batch)

    def forward_backward(self, batch: Batch, scale: float) -> torch.Tensor:
        """Forward and backward of one microbatch; gradients accumulate, scaled by ``scale``.
        Returns the microbatch's loss, detached, on the device."""
        self._ds.train()
        loss = self._ds(**self._to_device(batch)).loss
        self._ds.backward(loss * scale, scale_wrt_gas=False)
        return loss.detach().float()

    def step(self, lr: float) -> torch.Tensor | None:
        """Reduce, clip and apply the optimizer at ``lr`` once; returns the pre-clip global norm
        (as DeepSpeed keeps it: its ZeRO optimizers read it on the host themselves)."""
        self._set_lr(lr)
        self._fp32_clip_norm = None
        self._ds.step()
        if self._ds.gradient_clipping() <= 0.0:
            return None
        norm = self._ds.get_global_grad_norm()
        return torch.as_tensor(norm) if norm is not None else self._fp32_clip_norm

    def replace_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Swap the optimizer where DeepSpeed steps it directly (ZeRO 0, fp32); refuse otherwise.

        ZeRO and the bf16/fp16 wrappers build flat fp32 partitions and gradient hooks from the
        optimizer once, in ``initialize``; swapping it under them would train stale copies.
        There, choose the optimizer before building the engine (``build_engine(optimizer=...)``),
        or change per-parameter state with ``copy_optimizer_state`` / ``reset_optimizer_state``.
        """
        if not self._plain_fp32():
            raise NtngError(
                f"cannot replace the optimizer of a DeepSpeed engine that wraps it in "
                f"{type(self._ds.optimizer).__name__} (ZeRO stage "
                f"{self._ds.zero_optimization_stage()}, bf16/fp16); pass the optimizer to "
                f"build_engine instead, or use ZeRO 0 with fp32"
            )
        check_optimizer_params(optimizer, self.model)
        self._ds.optimizer = self._ds.basic_optimizer = self._ds.client_optimizer = optimizer
        self.optimizer = optimizer

    def _partitioned(self, param: nn.Parameter) -> bool:
        """Whether ``param``'s master copy and state live in DeepSpeed's flat partitions."""
        if hasattr(param, "_hp_mapping"):
            return True
        if self._plain_fp32():
            return False
        raise NtngError(
            f"per-parameter state is not reachable under {type(self._ds.optimizer).__name__}; "
            f"use ZeRO stage 1 or 2 for bf16/fp16, or fp32"
        )

    def _state_keys(self) -> list[str]:
        """Names of the optimizer's per-element state tensors (e.g. exp_avg, exp_avg_sq)."""
        keys = {
            key
            for state in self.optimizer.state.values()
            for key, value in state.items()
            if torch.is_tensor(value) and value.ndim > 0
        }
        return sorted(keys)

    def copy_parameter(self, source: nn.Parameter, target: nn.Parameter) -> None:
        """Overwrite ``target`` with ``source``: master fp32 copy and the module's copy alike."""
        if self._partitioned(target):
            from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

            check_same_shape(source, target)
            safe_set_full_fp32_param(target, safe_get_full_fp32_param(source))
        copy_tensor(source, target)

    def _link_state(self, *params: nn.Parameter) -> list[str]:
        """Point ``params``' fragment views at the optimizer state; return the state's keys.

        DeepSpeed links these views once, right after the first param group's first update,
        when later groups have no state yet; so the second group's (biases, norms) stay empty,
        and a checkpoint load clears them all. Linking again before each use repairs both.
        """
        for param in params:
            mapping = param._hp_mapping
            if mapping is not None:
                flat = self.optimizer.param_groups[mapping.param_group_index]["params"][0]
                mapping.set_optim_state_fragment(flat, self.optimizer.state[flat])
        return self._state_keys()

    def optimizer_state(self, param: nn.Parameter) -> dict[str, torch.Tensor]:
        """``param``'s full fp32 optimizer moments, gathered from the partitions (collective)."""
        if not self._partitioned(param):
            return moments(self.optimizer, param)
        from deepspeed.utils import safe_get_full_optimizer_state

        return {key: safe_get_full_optimizer_state(param, key) for key in self._link_state(param)}

    def copy_optimizer_state(self, source: nn.Parameter, target: nn.Parameter) -> None:
        """Give ``target`` ``source``'s optimizer state (moments; the step count is per group)."""
        if not self._partitioned(target):
            copy_optimizer_state(self.optimizer, source, target)
            return
        from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state

        check_same_shape(source, target)
        for key in self._link_state(source, target):
            value = safe_get_full_optimizer_state(source, key)
            safe_set_full_optimizer_state(target, value, key)

    def reset_optimizer_state(self, param: nn.Parameter) -> None:
        """Zero ``param``'s optimizer state (fully fresh only on the unwrapped ZeRO 0 fp32 path)."""
        if not self._partitioned(param):
            reset_optimizer_state(self.optimizer, param)
            return
        from deepspeed.utils import safe_set_full_optimizer_state

        zeros = torch.zeros_like(param, dtype=torch.float32)
        for key in self._link_state(param):
            safe_set_full_optimizer_state(param, zeros, key)

    def save_state(self, directory: Path) -> None:
        """DeepSpeed's checkpoint (module, optimizer partitions); every rank must call it."""
        self._ds.save_checkpoint(str(directory), tag=CHECKPOINT_TAG)

    def load_state(self, directory: Path) -> None:
        """Restore what ``save_state`` wrote; every rank must call it."""
        if not (directory / CHECKPOINT_TAG).is_dir():
            raise NtngError(f"no DeepSpeed engine state under {directory}")
        self._ds.load_checkpoint(str(directory), tag=CHECKPOINT_TAG)
