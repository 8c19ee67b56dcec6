"""A training step reads nothing back from the device, except where it logs.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``if t:``, a
boolean-mask index, ``nonzero``) waits for every queued kernel: the host stops queueing work
and the GPU idles until it resumes. The loop keeps losses and gradient norms on the device
until a log point. Counted here on the CPU, in the loop's thread (the prefetch thread collates
on the host, which is not a device round trip), for the strategies whose decisions do not
depend on the data; a selection strategy reads its candidates' scores once per selection.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from fast import SMALL_DATA

from ntng_ray.config import load_config
from ntng_ray.train.loop import build_run
from ntng_ray.train.plan import plan_run

READS = ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__", "nonzero")
QUICK = [
    *SMALL_DATA,
    "eval.points=[]",
    "train.microbatch_size=8",
    "train.threads=1",
    "train.prefetch=2",  # collation on the prefetch thread, as on a GPU (the default there)
    "tracking.enabled=false",
    "budget.rst_seconds=1.2",
]


@contextmanager
def counting_reads(counts: Counter, active: list[bool]) -> Iterator[None]:
    """Count host reads of tensors made in this thread while ``active[0]`` is set."""
    thread = threading.get_ident()
    originals = {name: getattr(torch.Tensor, name) for name in (*READS, "__getitem__")}

    def counted(name: str) -> Any:
        original = originals[name]

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if active[0] and threading.get_ident() == thread:
                if name != "__getitem__":
                    counts[name] += 1
                elif isinstance(args[0], torch.Tensor) and args[0].dtype == torch.bool:
                    counts["boolean index"] += 1
            return original(self, *args, **kwargs)

        return read

    for name in originals:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize(
    ("strategy", "settings"),
    [
        ("baseline", []),
        ("layer_stacking", ["strategy.grow_at=[0.3,0.6]"]),
        ("layer_dropping", []),
        ("lion", []),
        ("sophia", ["strategy.k=1000"]),
    ],
)
def test_steps_between_log_points_read_nothing_back(
    strategy: str, settings: list[str], tmp_path: Any
) -> None:
    cfg = load_config(
        "bert-crammed-tiny-synthetic",
        [*QUICK, f"strategy.name={strategy}", *settings, f"output_dir={tmp_path / 'run'}"],
    )
    run = build_run(plan_run(cfg, check_output_dir=False))
    counts: Counter = Counter()
    active = [False]
    train_step = run._train_step

    def step(*args: Any) -> None:
        active[0] = run.step + 1 < run.cfg.train.log_every
        try:
            train_step(*args)
        finally:
            active[0] = False

    run._train_step = step  # type: ignore[method-assign]
    with counting_reads(counts, active):
        summary = run.run()
    assert summary["steps"] >= 3
    assert not counts, dict(counts)
