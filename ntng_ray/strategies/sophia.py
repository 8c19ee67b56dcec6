"""Sophia-G: a clipped, diagonally preconditioned update with a cheap Hessian estimate.

What it does: trains the full model on every example with Sophia-G. Every ``k`` optimizer
steps (after steps k, 2k, ...), a Gauss-Newton-Bartlett estimate of the Hessian diagonal is
formed on fresh training examples: labels are sampled from the model's own predictions at every
labelled position, the summed cross-entropy against them is back-propagated, and
``h_hat = B * g_hat**2`` (``g_hat`` the mean gradient over the B positions) is folded into an
EMA ``h``. Each step then moves ``p -= lr * sign(m) * min(|m| / (rho * h + 1e-15), 1)`` with
decoupled weight decay (``ntng_ray.engines.optimizers.SophiaG``, the official SophiaG's update).
Paper: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training" (2023); studied in Kaddour et al., "No Train No Gain" (NeurIPS 2023).

Parameters:
- ``betas`` (0.965, 0.99): EMA coefficients of the gradient and of the Hessian, each in [0, 1).
- ``rho`` (0.01): clipping scale, > 0.
- ``k`` (10): optimizer steps between Hessian estimates, >= 1.
- ``hessian_microbatches`` (null: ``train.grad_accum``, a step's share, as the official code):
  microbatches of ``train.microbatch_size`` per worker in each estimate.
- ``free_hessian`` (false): the ablation that charges the Hessian passes nothing.
Peak learning rate, weight decay and clipping come from the run's ``optimizer`` section when
its ``name`` is ``adamw``; when it is tuned for another optimizer, the study's settings: BERT lr
4e-4, weight decay 0.015; T5 lr 1e-3. ``strategy_summary`` records them and their source.

Refused: fp16 (it diverged in the study); DeepSpeed with ZeRO > 0 or bf16, whose optimizer
wrappers keep flat copies of the parameters, so a per-parameter Hessian cannot be applied
(checked when the run is planned, against the engine ``backend.engine`` resolves to, and again
on the built engine). Supported: the torch engine in fp32 or bf16 on any number of workers
(each worker's gradient sums are all-reduced, so every worker holds the same estimate), and
DeepSpeed ZeRO 0 in fp32.

RST: each step at full depth plus the table's ``sophia`` optimizer-step entry; each Hessian
pass under kind ``hessian``: ``hessian_seconds`` scaled to the sequences used when the table
has it; else, for a table whose unit includes the optimizer (the study's T5 table), nothing
extra, since the study measured Sophia's whole step with the pass amortised and charged only
that; else the table's forward+backward cost of the sequences used, at the active depth (as the
study's BERT code did). ``max_extra_cost`` includes the pass on the steps that run it.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from ntng_ray.config import Betas
from ntng_ray.engines.engine import Engine
from ntng_ray.engines.optimizers import (
    SOPHIA_BETAS,
    SOPHIA_RHO,
    SophiaG,
    build_sophia,
    gnb_gradient_sums,
)
from ntng_ray.errors import NtngError
from ntng_ray.rst.clock import HESSIAN, TRAIN, hessian_cost, step_cost
from ntng_ray.strategies.base import Candidates, Cost, StrategyContext, StrategyParams
from ntng_ray.strategies.optimizer_method import OptimizerMethod

WRAPPED_OPTIMIZER = (
    "the per-parameter Hessian estimate cannot be applied where DeepSpeed's ZeRO or bf16 "
    "optimizer wrapper keeps flat copies of the parameters; use backend.engine=torch (fp32 or "
    "bf16, any number of workers), or backend.engine=deepspeed with zero_stage=0 and fp32"
)


class SophiaParams(StrategyParams):
    betas: Betas = SOPHIA_BETAS
    rho: float = Field(SOPHIA_RHO, gt=0.0, description="Clipping scale of the update.")
    k: int = Field(10, ge=1, description="Optimizer steps between Hessian estimates.")
    hessian_microbatches: int | None = Field(
        None, ge=1, description="Microbatches per worker in an estimate; null: train.grad_accum."
    )
    free_hessian: bool = Field(False, description="Ablation: charge the Hessian passes nothing.")


class SophiaStrategy(OptimizerMethod):
    name = "sophia"
    optimizer_label = "Sophia-G"
    brings_optimizer = "sophia"
    precisions = frozenset({"fp32", "bf16"})
    precision_note = " (fp16 diverged in the study)"
    optimizer_access = "parameters"
    Params = SophiaParams
    params: SophiaParams

    def __init__(self, params: SophiaParams, context: StrategyContext) -> None:
        super().__init__(params, context)
        train = context.cfg.train
        self.microbatches = params.hessian_microbatches or train.grad_accum
        self.sequences = self.microbatches * train.microbatch_size
        self.passes = 0
        self.hessian_rst = 0.0
        self.upcoming_step = 1
        self.engine_checked = False

    def make_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> SophiaG:
        p = self.params
        return build_sophia(model, lr, weight_decay, p.betas, p.rho)

    def before_step(self, engine: Engine, progress: float, step: int) -> None:
        if not self.engine_checked:
            check_engine(engine)
            self.engine_checked = True
        self.upcoming_step = step + 1

    def runs_hessian(self, step: int) -> bool:
        """Whether the estimate follows optimizer step ``step`` (1-based): steps k, 2k, ..."""
        return step % self.params.k == 0

    def max_extra_cost(self, active_layers: int) -> Cost:
        if not self.runs_hessian(self.upcoming_step) or self.params.free_hessian:
            return {}
        return {HESSIAN: self.pass_cost(active_layers)}

    def pass_cost(self, active_layers: int) -> float:
        """RST of this worker's share of one Hessian pass (see the card for the rule)."""
        table = self.context.table
        if table.hessian_seconds is not None:
            return hessian_cost(table, self.sequences)
        if table.unit.includes_optimizer:
            return 0.0
        return step_cost(table, active_layers, self.sequences)[TRAIN]

    def after_step(self, engine: Engine, step: int, candidates: Candidates) -> Cost:
        if not self.runs_hessian(step):
            return {}
        batches = [candidates.draw(candidates.microbatch).batch for _ in range(self.microbatches)]
        generator = torch.Generator(device=engine.device).manual_seed(self.sampling_seed(step))
        precision = self.context.cfg.train.precision
        sums = gnb_gradient_sums(engine.model, batches, generator, precision)
        if self.context.world_size > 1:
            sums = sums.all_reduce()
        engine.optimizer.update_hessian(sums)
        cost = self.pass_cost(len(engine.active_layers()))
        self.passes += 1
        self.hessian_rst += cost * self.context.world_size
        return {} if self.params.free_hessian else {HESSIAN: cost}

    def sampling_seed(self, step: int) -> int:
        """A seed per (run seed, worker, step): label samples repeat exactly after a restore."""
        return (self.context.cfg.seed * 1_000_003 + self.context.rank) * 1_000_033 + step

    def metrics(self) -> dict[str, float]:
        return {"hessian_passes": self.passes}

    def summary_fields(self) -> dict[str, Any]:
        return super().summary_fields() | {
            "hessian_microbatches": self.microbatches,
            "hessian_passes": self.passes,
            "hessian_sequences_per_worker": self.sequences,
            "hessian_rst_seconds": self.hessian_rst,
            "hessian_rst_charged": not self.params.free_hessian,
            "hessian_priced_by": self.pricing(),
        }

    def pricing(self) -> str:
        table = self.context.table
        if table.hessian_seconds is not None:
            return "hessian_seconds"
        return "included_in_step" if table.unit.includes_optimizer else "train_seconds"

    def state_dict(self) -> dict[str, Any]:
        return {"hessian_passes": self.passes, "hessian_rst": self.hessian_rst}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes, self.hessian_rst = state["hessian_passes"], state["hessian_rst"]


def check_engine(engine: Engine) -> None:
    """Refuse an engine whose optimizer is not a SophiaG stepping the model's own parameters."""
    optimizer = engine.optimizer
    if not isinstance(optimizer, SophiaG):
        raise NtngError(
            f"strategy sophia: the engine steps a {type(optimizer).__name__}, not SophiaG"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) not in held for p in engine.model.parameters() if p.requires_grad):
        raise NtngError(f"strategy sophia: {WRAPPED_OPTIMIZER}")
