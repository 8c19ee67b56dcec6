"""Per-example scoring for batch selection: no-grad losses, and what the scoring costs in RST.

Shared by selective backprop and RHO-loss; infrastructure, not a strategy. Both score
candidates with a no-grad forward and charge it at the reference table's forward-only cost
(kind ``forward``) unless their ``free_scoring`` ablation flag is set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ntng_ray.engines.engine import Batch, Engine
from ntng_ray.models.sparse_prediction import labelled_positions
from ntng_ray.rst.clock import FORWARD, forward_cost
from ntng_ray.rst.table import ReferenceTable
from ntng_ray.strategies.base import Cost, Examples, StrategyParams
from ntng_ray.strategies.examples import POSITIONS

IGNORE = -100  # the label of an unscored position (the collators' and cross_entropy's)


class ScoringParams(StrategyParams):
    """The parameter every scoring strategy has."""

    free_scoring: bool = Field(
        False, description="Ablation: scoring forwards cost no RST (the summary says so)."
    )


def example_losses(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean token loss of each example, on the CPU, in float32.

    ``logits`` is dense, [B, T, V] against ``labels`` [B, T] (T5), or sparse, one row per
    labelled position in row-major order (the BERT heads), whose flat indices ``positions``
    (the batch's ``masked_positions``) name without a search on the device. An example with no
    labelled token has loss 0: it carries no signal to rank it by. The copy to the CPU is the
    one host read of a selection.
    """
    labels = labels.to(logits.device)
    if logits.dim() == 3:
        if logits.shape[:2] != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match labels {labels.shape}")
        token_losses = F.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
        )
        sums = token_losses.sum(dim=1)
    else:
        if positions is None:
            positions = labelled_positions(labels)
        if logits.dim() != 2 or logits.shape[0] != positions.numel():
            raise ValueError(
                f"logits {tuple(logits.shape)}: expected [B, T, V] or one row per labelled "
                f"token ({positions.numel()})"
            )
        positions = positions.to(logits.device)
        targets = labels.flatten().index_select(0, positions)
        token_losses = F.cross_entropy(logits.float(), targets, reduction="none")
        rows = torch.div(positions, labels.shape[1], rounding_mode="floor")
        sums = torch.zeros(labels.shape[0], device=logits.device).index_add_(0, rows, token_losses)
    counts = (labels != IGNORE).sum(dim=1).clamp_min(1)
    return (sums / counts).cpu()


def per_example_losses(engine: Engine, batch: Batch) -> torch.Tensor:
    """Each example's mean token loss under the engine's model: no grad, eval mode."""
    output: Any = engine.forward_no_grad(batch)
    return example_losses(output.logits, batch["labels"], batch.get(POSITIONS))


def score_examples(engine: Engine, examples: Examples, chunk: int) -> torch.Tensor:
    """``per_example_losses`` over ``examples`` in forwards of at most ``chunk`` examples."""
    total = len(examples)
    parts = [
        per_example_losses(engine, examples.take(range(start, min(start + chunk, total))).batch)
        for start in range(0, total, chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def scoring_cost(table: ReferenceTable, active_layers: int, sequences: int, free: bool) -> Cost:
    """RST of scoring ``sequences`` examples: a forward-only pass, or nothing when ``free``."""
    if free or sequences == 0:
        return {}
    return {FORWARD: forward_cost(table, active_layers, sequences)}


def derived_seed(*keys: int) -> int:
    """A 32-bit seed for one of a run's random streams, from its keys (seed, rank, stream id)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def scoring_note(free: bool) -> str:
    """How scoring was charged, for the run's summary."""
    if free:
        return "free (ablation): scoring forwards were not charged to RST"
    return "charged to RST at the forward-only cost (kind 'forward')"
