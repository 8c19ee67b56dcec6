"""Selective backprop: train on the examples the model currently gets most wrong.

What it does: every candidate example is scored with a no-grad forward (its mean token loss);
it is kept with probability ``percentile(loss among the last history_size losses) ** beta``,
and kept examples accumulate until they fill a training microbatch (a surplus waits for the
next one). The percentile is scipy's "rank" percentile of the loss among the history, which
already holds the loss being ranked (the reference implementation appends each loss first).
Paper: Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest Losers" (2019);
the settings are those of Kaddour et al., "No Train No Gain" (NeurIPS 2023), §3.

Parameters (``strategy.<param>=…``):
- ``history_size`` (5000): how many recent losses the percentile is taken among.
- ``beta`` (1.0): the exponent on the percentile; larger keeps fewer low-loss examples.
- ``max_candidates_factor`` (8): at most this many microbatches of candidates are scored for
  one training microbatch; when they do not fill it, it is topped up with the highest-loss
  candidates scored and the event is counted (``capped_microbatches``). This makes the extra
  RST of a step boundable, so the loop never starts a step that could pass the budget.
- ``free_scoring`` (false): ablation; scoring forwards cost nothing and the summary says so.

RST: each optimizer step as the baseline's (full microbatches of kept examples), plus, unless
``free_scoring``, the forward-only cost of every example scored (kind ``forward``), summed
over data-parallel workers.

Reproducibility: keep decisions come from a generator seeded by (``seed``, worker rank), so a
rerun makes the same choices and workers make different ones; the generator, the loss history
and the waiting kept examples are checkpointed. Each worker selects from its own draws; draws
are always one microbatch, so workers' shares of the run's data order never overlap (a worker
that rejects more moves through the order faster). Works with the torch and DeepSpeed engines,
in one process and on Ray Train workers; nothing is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ntng_ray.engines.engine import Engine
from ntng_ray.errors import NtngError
from ntng_ray.strategies.base import Candidates, Cost, Examples, Strategy, StrategyContext
from ntng_ray.strategies.scoring import (
    ScoringParams,
    derived_seed,
    per_example_losses,
    scoring_cost,
    scoring_note,
)

KEEP_STREAM = 0x5B  # separates the keep draws' seed from other seeded streams of the run


class LossHistory:
    """The most recent scoring losses (a ring buffer), and percentiles of losses among them."""

    def __init__(self, size: int) -> None:
        self.values = torch.zeros(size, dtype=torch.float64)
        self.count = 0

    def add(self, losses: torch.Tensor) -> None:
        size = len(self.values)
        recent = losses.double().flatten()[-size:]
        start = self.count + len(losses) - len(recent)
        self.values[(start + torch.arange(len(recent))) % size] = recent
        self.count += len(losses)

    def percentiles(self, losses: torch.Tensor) -> torch.Tensor:
        """scipy's "rank" percentile of each loss among the history, in [0, 1]."""
        history = self.values[: min(self.count, len(self.values))].sort().values
        if len(history) == 0:
            return torch.ones(len(losses), dtype=torch.float64)
        losses = losses.double()
        below = torch.searchsorted(history, losses, right=False)
        at_or_below = torch.searchsorted(history, losses, right=True)
        return (below + at_or_below).double() / (2 * len(history))

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["values"]) != len(self.values):
            raise NtngError(
                f"strategy.history_size = {len(self.values)} but the checkpoint's history holds "
                f"{len(state['values'])}; resume with the same history_size"
            )
        self.values, self.count = state["values"].clone(), int(state["count"])


def keep_probabilities(history: LossHistory, losses: torch.Tensor, beta: float) -> torch.Tensor:
    """Add ``losses`` to the history, then each one's keep probability, percentile ** beta."""
    history.add(losses)
    return history.percentiles(losses) ** beta


class SelectiveBackprop(Strategy):
    """Selective backprop; the module docstring is its card."""

    name = "selective_backprop"

    class Params(ScoringParams):
        history_size: int = Field(5000, ge=1, description="Recent losses the percentile uses.")
        beta: float = Field(1.0, gt=0.0, description="Keep probability: percentile ** beta.")
        max_candidates_factor: int = Field(
            8, ge=1, description="Candidates scored per microbatch, at most, in microbatches."
        )

    params: Params

    def __init__(self, params: Params, context: StrategyContext) -> None:
        super().__init__(params, context)
        self.history = LossHistory(params.history_size)
        self.generator = torch.Generator().manual_seed(
            derived_seed(context.cfg.seed, context.rank, KEEP_STREAM)
        )
        self.pending: Examples | None = None
        self.counts = {"scored": 0, "kept": 0, "filled": 0, "capped": 0}

    def max_extra_cost(self, active_layers: int) -> Cost:
        train = self.context.cfg.train
        most = self.params.max_candidates_factor * train.microbatch_size * train.grad_accum
        return scoring_cost(self.context.table, active_layers, most, self.params.free_scoring)

    def select(self, candidates: Candidates, engine: Engine) -> tuple[Examples, Cost]:
        size = candidates.microbatch
        carried = 0 if self.pending is None else len(self.pending)
        kept = [] if self.pending is None else [self.pending]
        rejected: list[tuple[Examples, torch.Tensor]] = []
        have, scored = carried, 0
        while have < size and scored < self.params.max_candidates_factor * size:
            chunk = candidates.draw(size)
            losses = per_example_losses(engine, chunk.batch)
            keep = self._keep(losses)
            kept.append(chunk.take(keep.nonzero()[:, 0]))
            rejected.append((chunk.take((~keep).nonzero()[:, 0]), losses[~keep]))
            have += int(keep.sum())
            scored += len(chunk)
        self.counts["scored"] += scored
        self.counts["kept"] += have - carried
        if have < size:
            kept.append(self._highest_losses(rejected, size - have))
        chosen = Examples.concat(kept)
        self.pending = chosen.take(range(size, len(chosen))) if len(chosen) > size else None
        cost = scoring_cost(
            self.context.table, len(engine.active_layers()), scored, self.params.free_scoring
        )
        return chosen.take(range(size)), cost

    def _keep(self, losses: torch.Tensor) -> torch.Tensor:
        """Which of the scored examples to keep: a seeded draw against each keep probability."""
        probabilities = keep_probabilities(self.history, losses, self.params.beta)
        draws = torch.rand(len(losses), generator=self.generator, dtype=torch.float64)
        return draws < probabilities

    def _highest_losses(
        self, rejected: list[tuple[Examples, torch.Tensor]], count: int
    ) -> Examples:
        """Top up a microbatch the candidate cap left short, counting the event."""
        self.counts["capped"] += 1
        self.counts["filled"] += count
        losses = torch.cat([losses for _, losses in rejected])
        return Examples.concat([examples for examples, _ in rejected]).take(
            losses.topk(count).indices
        )

    def _selection_ratio(self) -> float:
        return self.counts["kept"] / self.counts["scored"] if self.counts["scored"] else 1.0

    def metrics(self) -> dict[str, float]:
        return {
            "selection_ratio": self._selection_ratio(),
            "scored_examples": float(self.counts["scored"]),
            "capped_microbatches": float(self.counts["capped"]),
            "filled_examples": float(self.counts["filled"]),
        }

    def summary_fields(self) -> dict[str, Any]:
        return {
            "scoring": scoring_note(self.params.free_scoring),
            "selection_ratio": self._selection_ratio(),
            "scored_examples": self.counts["scored"],
            "kept_examples": self.counts["kept"],
            "capped_microbatches": self.counts["capped"],
            "filled_examples": self.counts["filled"],
        }

    def state_dict(self) -> dict[str, Any]:
        pending = None
        if self.pending is not None:
            pending = {"ids": torch.from_numpy(self.pending.ids), "batch": self.pending.batch}
        return {
            "history": self.history.state_dict(),
            "generator": self.generator.get_state(),
            "pending": pending,
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state["history"])
        self.generator.set_state(state["generator"])
        pending = state["pending"]
        self.pending = None
        if pending is not None:
            self.pending = Examples(pending["ids"].numpy(), dict(pending["batch"]))
        self.counts = {key: int(value) for key, value in state["counts"].items()}
