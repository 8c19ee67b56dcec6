"""Learning-rate multipliers as pure functions of RST progress p in [0, 1].

Schedules read progress, not steps, so every run is fully decayed exactly when its budget is
spent, whatever the hardware's speed: the study's point about fair baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from ntng_ray.config import ScheduleConfig
from ntng_ray.errors import NtngError

Schedule = Callable[[float], float]


def _check_fraction(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must lie in [0, 1], got {value!r}")


def _check_warmup(p: float, warmup: float, start_factor: float) -> None:
    _check_fraction(p, "progress")
    _check_fraction(warmup, "warmup")
    _check_fraction(start_factor, "start_factor")


def _warmup(p: float, warmup: float, start_factor: float) -> float:
    """Linear rise from ``start_factor`` at p = 0 to 1 at p = ``warmup``."""
    return start_factor + (1.0 - start_factor) * p / warmup


def _decay_fraction(p: float, start: float) -> float:
    """How far p is through the decay that runs from ``start`` to 1 (1 when it has no length)."""
    return (p - start) / (1.0 - start) if start < 1.0 else 1.0


def one_cycle(p: float, peak_at: float = 0.5) -> float:
    """0 at p = 0, rising linearly to 1 at ``peak_at``, falling linearly to 0 at p = 1 (BERT)."""
    _check_fraction(p, "progress")
    _check_fraction(peak_at, "peak_at")
    if p < peak_at:
        return p / peak_at
    return 1.0 - _decay_fraction(p, peak_at)


def warmup_linear(p: float, warmup: float, start_factor: float = 0.0) -> float:
    """Linear warm-up from ``start_factor`` to 1 over [0, warmup], then linear decay to 0 at 1."""
    _check_warmup(p, warmup, start_factor)
    if p < warmup:
        return _warmup(p, warmup, start_factor)
    return 1.0 - _decay_fraction(p, warmup)


def warmup_cosine(p: float, warmup: float, start_factor: float = 0.0, floor: float = 0.0) -> float:
    """Linear warm-up from ``start_factor`` to 1, then cosine decay to ``floor`` at p = 1 (T5).

    The study's T5 setting: warmup 0.153, start_factor 0.5, floor 1e-5.
    """
    _check_warmup(p, warmup, start_factor)
    _check_fraction(floor, "floor")
    if p < warmup:
        return _warmup(p, warmup, start_factor)
    cosine = 0.5 * (1.0 + math.cos(math.pi * _decay_fraction(p, warmup)))
    return floor + (1.0 - floor) * cosine


def constant(p: float) -> float:
    """1 throughout: a schedule that never decays, for ablations only."""
    _check_fraction(p, "progress")
    return 1.0


def _clamped(schedule: Schedule) -> Schedule:
    """Progress can overshoot 1 by float error or a last step; the multiplier must not."""

    def multiplier(p: float) -> float:
        if math.isnan(p):
            raise ValueError("progress is NaN")
        return schedule(min(1.0, max(0.0, p)))

    return multiplier


def lr_multiplier(cfg: ScheduleConfig) -> Schedule:
    """The multiplier of the peak LR the config names, as a function of progress (clamped)."""
    shapes: dict[str, Schedule] = {
        "one_cycle": partial(one_cycle, peak_at=cfg.peak_at),
        "warmup_linear": partial(warmup_linear, warmup=cfg.warmup, start_factor=cfg.start_factor),
        "warmup_cosine": partial(
            warmup_cosine, warmup=cfg.warmup, start_factor=cfg.start_factor, floor=cfg.floor
        ),
        "constant": constant,
    }
    if cfg.name not in shapes:
        raise NtngError(f"schedule.name = {cfg.name!r}: allowed: {', '.join(shapes)}")
    return _clamped(shapes[cfg.name])
