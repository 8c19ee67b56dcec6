"""LR multipliers as functions of RST progress."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from ntng_ray.config import ScheduleConfig
from ntng_ray.schedules import constant, lr_multiplier, one_cycle, warmup_cosine, warmup_linear

GRID = [i / 1000 for i in range(1001)]
T5 = {"warmup": 0.153, "start_factor": 0.5, "floor": 1e-5}


def assert_rises_then_falls(schedule: Callable[[float], float], turn: float) -> None:
    """Non-decreasing on [0, turn], non-increasing on [turn, 1]."""
    rising = [schedule(p) for p in GRID if p <= turn]
    falling = [schedule(p) for p in GRID if p >= turn]
    assert all(a <= b for a, b in itertools.pairwise(rising))
    assert all(a >= b for a, b in itertools.pairwise(falling))


def test_one_cycle() -> None:
    assert (one_cycle(0.0), one_cycle(0.25), one_cycle(0.5), one_cycle(1.0)) == (0.0, 0.5, 1.0, 0.0)
    assert one_cycle(0.75) == 0.5
    assert one_cycle(0.2, peak_at=0.2) == 1.0
    assert_rises_then_falls(one_cycle, 0.5)
    assert_rises_then_falls(lambda p: one_cycle(p, peak_at=0.3), 0.3)


def test_warmup_linear() -> None:
    assert warmup_linear(0.0, 0.1) == 0.0
    assert warmup_linear(0.05, 0.1) == 0.5
    assert warmup_linear(0.1, 0.1) == 1.0
    assert warmup_linear(0.5, 0.1) == pytest.approx(0.5 / 0.9)
    assert warmup_linear(1.0, 0.1) == 0.0
    assert warmup_linear(0.0, 0.1, start_factor=0.5) == 0.5
    assert_rises_then_falls(lambda p: warmup_linear(p, 0.1, 0.25), 0.1)


def test_warmup_cosine_at_the_t5_defaults() -> None:
    assert warmup_cosine(0.0, **T5) == 0.5
    assert warmup_cosine(0.153, **T5) == 1.0
    assert warmup_cosine(1.0, **T5) == 1e-5
    assert warmup_cosine(0.5, 0.0, floor=0.0) == pytest.approx(0.5)
    assert warmup_cosine(0.5, **T5) == pytest.approx(
        1e-5 + (1 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (0.5 - 0.153) / (1 - 0.153)))
    )
    assert_rises_then_falls(lambda p: warmup_cosine(p, **T5), 0.153)


@pytest.mark.parametrize("schedule", [warmup_linear, warmup_cosine])
def test_zero_warmup_starts_at_the_peak(schedule: Callable[..., float]) -> None:
    assert schedule(0.0, 0.0) == 1.0
    assert schedule(1.0, 0.0) == 0.0
    assert_rises_then_falls(lambda p: schedule(p, 0.0), 0.0)


def test_constant() -> None:
    assert [constant(p) for p in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_the_shapes_refuse_progress_outside_the_unit_interval(p: float) -> None:
    for schedule in (one_cycle, constant, lambda q: warmup_cosine(q, 0.1)):
        with pytest.raises(ValueError, match="progress"):
            schedule(p)


def test_lr_multiplier_maps_the_config_and_clamps_progress() -> None:
    bert = lr_multiplier(ScheduleConfig())
    assert (bert(0.0), bert(0.5), bert(1.0), bert(1.2), bert(-0.1)) == (0.0, 1.0, 0.0, 0.0, 0.0)
    t5 = lr_multiplier(ScheduleConfig(name="warmup_cosine", **T5))
    assert (t5(0.0), t5(0.153), t5(1.0), t5(1.0 + 1e-12)) == (0.5, 1.0, 1e-5, 1e-5)
    linear = lr_multiplier(ScheduleConfig(name="warmup_linear", warmup=0.25, start_factor=0.5))
    assert (linear(0.0), linear(0.25), linear(1.0)) == (0.5, 1.0, 0.0)
    assert lr_multiplier(ScheduleConfig(name="constant"))(0.7) == 1.0
    assert lr_multiplier(ScheduleConfig(name="one_cycle", peak_at=0.25))(0.25) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        bert(math.nan)
