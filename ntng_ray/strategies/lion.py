"""Lion: sign-of-momentum updates in place of AdamW.

What it does: trains the full model on every example with Lion (EvoLved Sign Momentum):
``c = b1 * m + (1 - b1) * g``; ``p = p * (1 - lr * wd) - lr * sign(c)``;
``m = b2 * m + (1 - b2) * g``, with decoupled weight decay on weight matrices only. The optimizer
is ``lion_pytorch.Lion`` (the maintained ``lion-pytorch`` package).
Paper: Chen et al., "Symbolic Discovery of Optimization Algorithms" (NeurIPS 2023); studied in
Kaddour et al., "No Train No Gain" (NeurIPS 2023).

Parameters: ``betas`` (default (0.9, 0.99), the paper's and the study's), each in [0, 1).
Peak learning rate, weight decay and gradient clipping come from the run's ``optimizer``
section when its ``name`` is ``adamw`` (its betas and eps are not used), so the schedule and a
sweep's LR search work as for the baseline; when the section is tuned for another optimizer
(t5-tiny-synthetic's RMS-scaled AdamW at 2e-2), the study's settings are used: BERT lr 7e-4,
weight decay 0.1; T5 lr 7.5e-4, weight decay 0. ``strategy_summary`` records the values the run
used and where they came from (``settings_from``).

RST: each step at full depth, plus the table's ``lion`` optimizer-step entry
(``optimizer_step_seconds.lion`` for calibrated tables; for a table whose unit includes the
optimizer, the unit scaled by ``full_unit_seconds_by_optimizer`` lion / adamw). A table that
prices other optimizers' steps but not Lion's is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ntng_ray.config import Betas
from ntng_ray.engines.optimizers import LION_BETAS, build_lion
from ntng_ray.strategies.base import StrategyParams
from ntng_ray.strategies.optimizer_method import OptimizerMethod


class LionParams(StrategyParams):
    betas: Betas = LION_BETAS


class LionStrategy(OptimizerMethod):
    name = "lion"
    optimizer_label = "Lion"
    brings_optimizer = "lion"
    Params = LionParams

    def make_optimizer(
        self, model: nn.Module, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        return build_lion(model, lr, weight_decay, self.params.betas)
