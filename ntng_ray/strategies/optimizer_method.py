"""What the optimizer methods (Lion, Sophia) share as strategies: full depth, every example,
their own optimizer and reference-table entry.

Both take the peak learning rate, weight decay and gradient clipping from the run's
``optimizer`` section when it is set up for AdamW (so a sweep tunes the same knob for every
strategy), and the study's settings for the model family when it is tuned for another optimizer
(T5's RMS-scaled AdamW); the optimizer's own hyper-parameters (betas, Sophia's rho) are strategy
parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ntng_ray.errors import NtngError
from ntng_ray.rst.table import ReferenceTable
from ntng_ray.strategies.base import Strategy, StrategyContext, StrategyParams

# The study's settings (No Train No Gain, appendix C), per model family: what to set
# optimizer.lr and optimizer.weight_decay to when reproducing it.
STUDY_SETTINGS: dict[str, dict[str, dict[str, float]]] = {
    "lion": {"bert": {"lr": 7e-4, "weight_decay": 0.1}, "t5": {"lr": 7.5e-4, "weight_decay": 0.0}},
    "sophia": {"bert": {"lr": 4e-4, "weight_decay": 0.015}, "t5": {"lr": 1e-3}},
}


class OptimizerMethod(Strategy):
    """A method that changes only the optimizer: full depth, every example, its own table entry.

    Subclasses set ``name``, ``brings_optimizer`` (the reference-table optimizer entry),
    ``Params`` with ``betas``, and ``make_optimizer``.
    """

    optimizer_label: ClassVar[str]
    brings_optimizer: ClassVar[str]

    def __init__(self, params: StrategyParams, context: StrategyContext) -> None:
        super().__init__(params, context)
        check_table_entry(context.table, self.brings_optimizer)

    def settings(self) -> tuple[float, float, str]:
        """(peak lr, weight decay, where they came from).

        The optimizer section's when it is set up for AdamW (``optimizer.name=adamw``), so a
        sweep tunes the same knob for every strategy; when it is tuned for another optimizer
        (T5's RMS-scaled AdamW at 2e-2 would be far too large for these methods), the study's
        settings for this method and model family.
        """
        section = self.context.cfg.optimizer
        if section.name == "adamw":
            return section.lr, section.weight_decay, "optimizer section"
        family = self.context.cfg.preset.family
        study = STUDY_SETTINGS[self.name][family]
        source = f"the study's {family} settings (optimizer.name = {section.name!r})"
        return study["lr"], study.get("weight_decay", 0.0), source

    def peak_lr(self) -> float:
        return self.settings()[0]

    def make_optimizer(
        self, model: nn.Module, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        lr, weight_decay, _ = self.settings()
        return self.make_optimizer(model, lr, weight_decay)

    def summary_fields(self) -> dict[str, Any]:
        """The settings the optimizer really ran with, wherever each came from."""
        lr, weight_decay, source = self.settings()
        return {
            "optimizer": self.optimizer_label,
            "peak_lr": lr,
            "weight_decay": weight_decay,
            "settings_from": source,
            "grad_clip": self.context.cfg.optimizer.grad_clip,
            **self.params.model_dump(mode="json"),
        }


def check_table_entry(table: ReferenceTable, optimizer: str) -> None:
    """Refuse a table that prices some optimizers' steps but not ``optimizer``'s.

    ``step_cost`` charges nothing for an optimizer a table has no entry for (the study's BERT
    table prices none); on a table that prices AdamW, that would make this optimizer free.
    """
    for field in ("optimizer_step_seconds", "full_unit_seconds_by_optimizer"):
        entries = getattr(table, field)
        if entries and optimizer not in entries:
            raise NtngError(
                f"reference table {table.table_id!r} gives {field} for {', '.join(entries)} but "
                f"not for {optimizer!r}, so its steps would be charged unfairly; use a table "
                "that prices it (ntng calibrate measures adamw, lion and sophia)"
            )
