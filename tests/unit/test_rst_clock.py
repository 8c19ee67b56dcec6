"""The RST clock (exact sums, budget boundary, checkpoints) and the cost of units of work."""

from __future__ import annotations

import json
import math
import random

import pytest

from ntng_ray.errors import NtngError
from ntng_ray.rst import (
    ReferenceTable,
    RSTClock,
    TableUnit,
    forward_cost,
    hessian_cost,
    load_table,
    step_cost,
)


def excluding_table(**entries: object) -> ReferenceTable:
    """A 2-layer table timing 4-sequence microbatches without the optimizer."""
    return ReferenceTable(
        name="excl",
        preset="custom",
        description="test",
        unit=TableUnit("microbatch", 4, 8, None, includes_optimizer=False),
        train_seconds={1: 0.25, 2: 0.5},
        **entries,
    )


# --- the clock -------------------------------------------------------------------------------


def test_exactly_representable_charges_sum_exactly() -> None:
    clock = RSTClock(4.0)
    for seconds in (0.25, 0.5, 0.125, 1.0):
        clock.charge(seconds)
    assert clock.spent == 1.875
    assert clock.remaining == 2.125
    assert clock.progress == 1.875 / 4.0


def test_spent_is_the_correctly_rounded_sum_whatever_the_order() -> None:
    clock = RSTClock(10.0)
    for _ in range(10):
        clock.charge(0.1)
    assert sum([0.1] * 10) != 1.0
    assert clock.spent == math.fsum([0.1] * 10) == 1.0
    charges = [random.Random(seed).uniform(0.0, 0.01) for seed in range(500)]
    forward, backward = RSTClock(100.0), RSTClock(100.0)
    for seconds in charges:
        forward.charge(seconds, "train")
    for seconds in reversed(charges):
        backward.charge(seconds, "train")
    assert forward.spent == backward.spent == math.fsum(charges)
    assert forward == backward


def test_kinds_are_tallied_separately() -> None:
    clock = RSTClock(10.0)
    clock.charge(1.0)
    clock.charge(0.5, "forward")
    clock.charge_all({"train": 2.0, "optimizer": 0.25})
    assert clock.breakdown == {"train": 3.0, "forward": 0.5, "optimizer": 0.25}
    assert clock.spent == 3.75


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, "1.0", True, None])
def test_bad_charges_are_refused(bad: object) -> None:
    clock = RSTClock(1.0)
    with pytest.raises(ValueError, match=r"RST train charge"):
        clock.charge(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RST step cost"):
        clock.would_exceed(bad)  # type: ignore[arg-type]
    assert clock.spent == 0.0


def test_charge_all_checks_every_kind_before_charging() -> None:
    clock = RSTClock(1.0)
    with pytest.raises(ValueError, match=r"RST optimizer cost"):
        clock.charge_all({"train": 0.25, "optimizer": -1.0})
    assert clock.breakdown == {}
    with pytest.raises(ValueError, match=r"kind"):
        clock.charge(0.25, "")


@pytest.mark.parametrize("budget", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_budget_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match=r"RST budget"):
        RSTClock(budget)


def test_a_step_landing_exactly_on_the_budget_fits() -> None:
    clock = RSTClock(3.0)
    clock.charge_all({"train": 1.0, "optimizer": 1.0})
    assert not clock.would_exceed(1.0)
    assert clock.would_exceed(1.0 + 1e-6)
    assert not clock.exhausted
    clock.charge(1.0)
    assert clock.exhausted
    assert clock.remaining == 0.0
    assert clock.progress == 1.0
    assert clock.would_exceed(1e-6)
    assert not clock.would_exceed(0.0)


def test_float_error_at_the_boundary_counts_as_fitting() -> None:
    clock = RSTClock(0.3)
    clock.charge(0.1)
    clock.charge(0.1)
    assert math.fsum([0.1, 0.1, 0.1]) > 0.3
    assert not clock.would_exceed({"train": 0.1})
    clock.charge(0.1)
    assert clock.exhausted
    assert clock.progress == 1.0


def test_progress_is_capped_after_an_overshoot() -> None:
    clock = RSTClock(1.0)
    clock.charge(1.5)
    assert clock.progress == 1.0
    assert clock.remaining == 0.0
    assert clock.spent == 1.5


def test_state_dict_round_trips_exactly_through_json() -> None:
    clock = RSTClock(100.0)
    for seed in range(200):
        clock.charge(random.Random(seed).uniform(0.0, 0.3), random.Random(seed).choice("ab"))
    state = json.loads(json.dumps(clock.state_dict()))
    restored = RSTClock(100.0)
    restored.load_state_dict(state)
    assert restored == clock
    assert restored.spent == clock.spent
    assert restored.breakdown == clock.breakdown
    assert restored.wall_seconds >= state["wall_seconds"]
    for clock_ in (clock, restored):
        clock_.charge(0.1, "a")
    assert restored.spent == clock.spent


def test_wall_time_is_measured_but_not_part_of_equality() -> None:
    early = RSTClock(5.0)
    late = RSTClock(5.0)
    late.load_state_dict({**late.state_dict(), "wall_seconds": 1000.0})
    assert late.wall_seconds > early.wall_seconds >= 0.0
    assert early == late
    late.charge(0.5)
    assert early != late


def test_restoring_with_another_budget_is_refused() -> None:
    state = RSTClock(10.0).state_dict()
    with pytest.raises(NtngError, match=r"budget is 10.0 s but this run's is 20.0 s"):
        RSTClock(20.0).load_state_dict(state)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.pop("partials"),
        lambda s: s.update(partials={"train": ["x"]}),
        lambda s: s.update(partials={"train": [math.nan]}),
        lambda s: s.update(version=99),
    ],
)
def test_a_malformed_state_is_refused(edit) -> None:
    state = RSTClock(10.0).state_dict()
    edit(state)
    with pytest.raises(NtngError, match=r"RST clock state"):
        RSTClock(10.0).load_state_dict(state)


# --- step_cost and friends -------------------------------------------------------------------


def test_step_cost_scales_the_unit_by_sequences() -> None:
    table = excluding_table()
    assert step_cost(table, 2, 4) == {"train": 0.5}
    assert step_cost(table, 2, 8) == {"train": 1.0}
    assert step_cost(table, 1, 2) == {"train": 0.125}


def test_step_cost_adds_the_optimizer_once_per_step_when_the_table_has_it() -> None:
    table = excluding_table(optimizer_step_seconds={"adamw": 0.125, "lion": 0.0625})
    assert step_cost(table, 2, 16) == {"train": 2.0, "optimizer": 0.125}
    assert step_cost(table, 2, 16, "lion") == {"train": 2.0, "optimizer": 0.0625}
    assert step_cost(table, 2, 16, "sophia") == {"train": 2.0}


def test_step_cost_on_the_paper_bert_table() -> None:
    table = load_table("paper-bert-rtx3090-fixed")
    assert step_cost(table, 16, 1536) == {"train": 0.2253 * 12}
    assert step_cost(table, 7, 128) == {"train": 0.10526}


def test_step_cost_on_the_t5_table_scales_by_the_optimizer_ratio() -> None:
    table = load_table("paper-t5-a100")
    assert step_cost(table, 12, 144) == {"train": 1.031}
    assert step_cost(table, 12, 144, "lion")["train"] == pytest.approx(1.043, abs=1e-12)
    assert step_cost(table, 12, 144, "sophia")["train"] == pytest.approx(1.156, abs=1e-12)
    assert step_cost(table, 6, 288, "lion")["train"] == pytest.approx(
        0.538 * 2 * 1.043 / 1.031, rel=1e-12
    )


def test_step_cost_refuses_a_missing_optimizer_entry_naming_it() -> None:
    with pytest.raises(NtngError, match=r"no full_unit_seconds_by_optimizer entry for 'adafactor'"):
        step_cost(load_table("paper-t5-a100"), 12, 144, "adafactor")


def test_step_cost_refuses_a_missing_layer_count() -> None:
    with pytest.raises(NtngError, match=r"no train_seconds entry for 3 active layers.*1, 2"):
        step_cost(excluding_table(), 3, 4)


@pytest.mark.parametrize("sequences", [0, -4, 2.5, True])
def test_step_cost_refuses_bad_sequence_counts(sequences: object) -> None:
    with pytest.raises(ValueError, match=r"sequences"):
        step_cost(excluding_table(), 1, sequences)  # type: ignore[arg-type]


def test_forward_cost_reads_forward_seconds() -> None:
    table = load_table("paper-bert-rtx3090-fixed")
    assert forward_cost(table, 16, 128) == 0.09285
    assert forward_cost(table, 16, 256) == 0.09285 * 2
    with pytest.raises(NtngError, match=r"no forward_seconds entry for 12 active layers"):
        forward_cost(table, 12, 128)


def test_hessian_cost_needs_hessian_seconds() -> None:
    assert hessian_cost(excluding_table(hessian_seconds=0.5), 8) == 1.0
    with pytest.raises(NtngError, match=r"has no hessian_seconds"):
        hessian_cost(excluding_table(), 8)
