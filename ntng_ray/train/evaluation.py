"""Validation and train-eval losses: the full model on fixed rows with fixed masks.

Masks (and T5 spans) are drawn from a generator seeded the same way at every evaluation, so
two evaluations of the same weights give the same number and curves are comparable across
strategies and seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ntng_ray.engines.engine import Batch, Engine

Collator = Callable[[torch.Tensor, torch.Generator], Batch]


def mean_token_loss(
    engine: Engine,
    rows: np.ndarray,
    collator: Collator,
    microbatch: int,
    seed: int,
    layers: int | Sequence[int] | None = None,
) -> float:
    """Token-weighted mean loss over ``rows`` of the model at ``layers`` (None: all layers)."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    active = engine.active_layers()
    engine.set_active_layers(layers)
    try:
        for start in range(0, len(rows), microbatch):
            batch = collator(torch.from_numpy(rows[start : start + microbatch]).long(), generator)
            batch_sum, batch_count = engine.loss_sum(batch)
            total += batch_sum
            count += batch_count
    finally:
        engine.set_active_layers(active)
    return total / max(count, 1)
