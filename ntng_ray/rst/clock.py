"""The RST clock: the one clock every schedule, stop and checkpoint reads progress from.

Written by hand because no library keeps a budgeted, checkpointable, exactly summed clock.
Charges are summed exactly (the running sum is kept as Shewchuk partials, the algorithm behind
``math.fsum``), so ``spent`` is the correctly rounded sum of every charge whatever their order:
workers that charge the same work agree bit for bit, and a restored run neither loses nor
double-counts budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ntng_ray.errors import NtngError
from ntng_ray.rst.table import ReferenceTable

TRAIN = "train"
FORWARD = "forward"
OPTIMIZER = "optimizer"
HESSIAN = "hessian"

FIT_EPSILON = 1e-9
"""Relative slack of ``would_exceed``: a step landing on the budget up to float error fits."""

STATE_VERSION = 1


def _check_seconds(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"{what} must be a number of seconds, got {seconds!r}")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{what} must be finite and non-negative, got {seconds!r}")
    return float(seconds)


def _add_exact(partials: list[float], value: float) -> None:
    """Add ``value`` to the non-overlapping partials in place, losing no bits (Shewchuk)."""
    kept = 0
    for other in partials:
        if abs(value) < abs(other):
            value, other = other, value
        high = value + other
        low = other - (high - value)
        if low:
            partials[kept] = low
            kept += 1
        value = high
    partials[kept:] = [value]


def _costs(cost: float | Mapping[str, float]) -> list[float]:
    items = cost.items() if isinstance(cost, Mapping) else [("step", cost)]
    return [_check_seconds(seconds, f"RST {kind} cost") for kind, seconds in items]


class RSTClock:
    """RST spent against a budget, tallied by kind (train, forward, optimizer, hessian, ...).

    Wall time since construction is measured beside it for the record; it never drives a
    decision and is not part of equality.
    """

    def __init__(self, budget_seconds: float) -> None:
        budget = _check_seconds(budget_seconds, "RST budget")
        if budget == 0:
            raise ValueError("RST budget must be positive, got 0")
        self.budget_seconds = budget
        self._partials: dict[str, list[float]] = {}
        self._wall_before = 0.0
        self._wall_start = time.monotonic()

    def charge(self, seconds: float, kind: str = TRAIN) -> None:
        """Add ``seconds`` of RST under ``kind``; negative or non-finite charges are refused."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"RST charge kind must be a non-empty string, got {kind!r}")
        _add_exact(
            self._partials.setdefault(kind, []), _check_seconds(seconds, f"RST {kind} charge")
        )

    def charge_all(self, costs: Mapping[str, float]) -> None:
        """Charge every kind of a ``step_cost`` result; all are checked before any is charged."""
        _costs(costs)
        for kind, seconds in costs.items():
            self.charge(seconds, kind)

    def _all_partials(self) -> Iterable[float]:
        return (p for parts in self._partials.values() for p in parts)

    @property
    def spent(self) -> float:
        """RST seconds charged so far, the correctly rounded sum of every charge."""
        return math.fsum(self._all_partials())

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget_seconds - self.spent)

    @property
    def progress(self) -> float:
        """spent / budget, capped at 1.0: the p every schedule reads."""
        return min(1.0, self.spent / self.budget_seconds)

    @property
    def exhausted(self) -> bool:
        """True once the budget is spent, up to float error (``FIT_EPSILON``)."""
        return self.spent >= self.budget_seconds * (1.0 - FIT_EPSILON)

    def would_exceed(self, cost: float | Mapping[str, float]) -> bool:
        """Whether charging ``cost`` would pass the budget: such a step must not start.

        ``cost`` is seconds or a ``step_cost`` mapping. The sum is exact, and a total that lands
        on the budget within a relative ``FIT_EPSILON`` still fits.
        """
        total = math.fsum([*self._all_partials(), *_costs(cost)])
        return total > self.budget_seconds * (1.0 + FIT_EPSILON)

    @property
    def breakdown(self) -> dict[str, float]:
        """RST seconds per kind, in the order kinds were first charged."""
        return {kind: math.fsum(parts) for kind, parts in self._partials.items()}

    @property
    def wall_seconds(self) -> float:
        """Wall time measured beside RST (carried over a restore), for the record only."""
        return self._wall_before + time.monotonic() - self._wall_start

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; ``load_state_dict`` restores the RST sums exactly."""
        return {
            "version": STATE_VERSION,
            "budget_seconds": self.budget_seconds,
            "partials": {kind: list(parts) for kind, parts in self._partials.items()},
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpointed clock; a different budget is refused (progress would change)."""
        try:
            version, budget = state["version"], float(state["budget_seconds"])
            partials = {str(k): [float(p) for p in v] for k, v in state["partials"].items()}
            wall = float(state["wall_seconds"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NtngError(f"RST clock state in the checkpoint is malformed: {exc!r}") from None
        if version != STATE_VERSION:
            raise NtngError(
                f"RST clock state version {version!r}: this version reads {STATE_VERSION}"
            )
        if not all(math.isfinite(p) for parts in partials.values() for p in parts):
            raise NtngError("RST clock state in the checkpoint holds non-finite charges")
        if budget != self.budget_seconds:
            raise NtngError(
                f"the checkpoint's RST budget is {budget!r} s but this run's is "
                f"{self.budget_seconds!r} s; resume with the same budget (progress depends on it)"
            )
        self._partials = partials
        self._wall_before = wall
        self._wall_start = time.monotonic()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RSTClock):
            return NotImplemented
        return (self.budget_seconds, self.breakdown) == (other.budget_seconds, other.breakdown)

    def __repr__(self) -> str:
        return (
            f"RSTClock(spent={self.spent!r}, budget_seconds={self.budget_seconds!r}, "
            f"breakdown={self.breakdown!r})"
        )


# ---------------------------------------------------------------------------------------------
# What one unit of work costs, read from a reference table.


def _check_sequences(sequences: int) -> int:
    if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences <= 0:
        raise ValueError(f"sequences must be a positive integer, got {sequences!r}")
    return sequences


def _entry(table: ReferenceTable, field: str, key: Any, purpose: str) -> float:
    """``table.<field>[key]``, or an NtngError naming the missing entry and what it is for."""
    entries = getattr(table, field)
    if key not in entries:
        have = ", ".join(map(str, entries)) or "none"
        label = f"{key} active layers" if isinstance(key, int) else repr(key)
        raise NtngError(
            f"reference table {table.table_id!r} has no {field} entry for {label} "
            f"(it has: {have}); {purpose} needs it: use a table that gives it (ntng calibrate)"
        )
    return entries[key]


def step_cost(
    table: ReferenceTable, active_layers: int, sequences: int, optimizer: str = "adamw"
) -> dict[str, float]:
    """RST of one optimizer step over ``sequences`` sequences, by kind (``train``, ``optimizer``).

    As in the study, the unit's time is scaled by ``sequences / unit.sequences``. For a unit that
    excludes the optimizer, ``optimizer_step_seconds[optimizer]`` is added once per step when the
    table has it; when it does not, the optimizer is charged nothing (the study's BERT table gives
    no optimizer time), so a table meant to charge it must say so explicitly. For a unit that
    includes the optimizer, another optimizer than ``unit.reference_optimizer`` scales the step by
    ``full_unit_seconds_by_optimizer[optimizer] / full_unit_seconds_by_optimizer[reference]``.
    """
    unit = table.unit
    train = _entry(table, "train_seconds", active_layers, "a training step")
    train *= _check_sequences(sequences) / unit.sequences
    if not unit.includes_optimizer:
        extra = table.optimizer_step_seconds.get(optimizer)
        return {TRAIN: train} if extra is None else {TRAIN: train, OPTIMIZER: extra}
    if optimizer != unit.reference_optimizer:
        train *= _optimizer_ratio(table, optimizer)
    return {TRAIN: train}


def _optimizer_ratio(table: ReferenceTable, optimizer: str) -> float:
    """Full-unit time with ``optimizer`` relative to the reference optimizer the unit timed."""
    field, purpose = "full_unit_seconds_by_optimizer", f"charging optimizer {optimizer!r}"
    reference = _entry(table, field, table.unit.reference_optimizer, purpose)
    return _entry(table, field, optimizer, purpose) / reference


def forward_cost(table: ReferenceTable, active_layers: int, sequences: int) -> float:
    """RST of a no-grad forward over ``sequences`` sequences (batch selection's scoring passes)."""
    scale = _check_sequences(sequences) / table.unit.sequences
    return _entry(table, "forward_seconds", active_layers, "a scoring forward pass") * scale


def hessian_cost(table: ReferenceTable, sequences: int) -> float:
    """RST of one Sophia Hessian estimate over ``sequences`` sequences."""
    if table.hessian_seconds is None:
        raise NtngError(
            f"reference table {table.table_id!r} has no hessian_seconds; charging Sophia's "
            "Hessian estimate needs it: use a table that gives it (ntng calibrate)"
        )
    return table.hessian_seconds * _check_sequences(sequences) / table.unit.sequences
