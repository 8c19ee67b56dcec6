"""Ray Tune stoppers that guard the protocol, and how a trial's last result reads as an outcome.

The loop stops itself at its RST budget; the budget stopper is the guard for a trial that does
not (a bug, a table mismatch), ending it once its reported RST passes budget * (1 + tolerance).
The divergence stopper ends a trial whose loss is NaN or above a bound, so one bad learning
rate costs a few reports instead of a whole budget and never fails the sweep.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Stopper

from ntng_ray.track import schema


def over_budget(result: dict[str, Any], tolerance: float) -> bool:
    rst, budget = result.get(schema.RESULT_RST_SECONDS), result.get(schema.RESULT_BUDGET)
    return rst is not None and budget is not None and rst > budget * (1.0 + tolerance)


def diverged(result: dict[str, Any], max_loss: float) -> bool:
    """A reported loss that is not finite or is above ``max_loss``."""
    losses = [result.get(schema.RESULT_TRAIN_LOSS), result.get(schema.RESULT_VAL_LOSS)]
    return any(v is not None and (not math.isfinite(v) or v > max_loss) for v in losses)


class RSTBudgetStopper(Stopper):
    """Stop a trial whose reported RST is past its budget by more than ``tolerance``."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return over_budget(result, self.tolerance)

    def stop_all(self) -> bool:
        return False


class DivergenceStopper(Stopper):
    """Stop a trial whose loss is NaN, infinite or above ``max_loss``."""

    def __init__(self, max_loss: float) -> None:
        self.max_loss = max_loss

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return diverged(result, self.max_loss)

    def stop_all(self) -> bool:
        return False


def outcome(result: dict[str, Any] | None, errored: bool, tolerance: float, max_loss: float) -> str:
    """How a trial ended, from its last result: completed, diverged, over_budget, failed or
    interrupted (stopped from outside, e.g. the sweep was interrupted before it finished)."""
    if errored:
        return schema.OUTCOME_FAILED
    result = result or {}
    if diverged(result, max_loss):
        return schema.OUTCOME_DIVERGED
    if over_budget(result, tolerance):
        return schema.OUTCOME_OVER_BUDGET
    if result.get(schema.RESULT_FINAL):
        return schema.OUTCOME_COMPLETED
    return schema.OUTCOME_INTERRUPTED
