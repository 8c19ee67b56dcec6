"""Layer dropping (progressive layer dropping): skip random layers, more of the deep ones.

What it does: at progress p the keep level is theta(p) = theta_min + (1 - theta_min) *
exp(-gamma_f * p), falling from 1 towards theta_min; each optimizer step, layer i of L
(1-based) is dropped with probability (1 - theta) * i / L, so deeper layers are dropped more.
For T5, layer i is encoder block i and decoder block i together. At least one layer always
runs: if every layer is drawn as dropped, layer 1 (the least likely to be dropped) is kept.
The draw is made from (seed, step) alone, so every data-parallel worker drops the same layers
without communicating. Validation and train-eval always use the full model.

Paper: Zhang & He, "Accelerating Training of Transformer-Based Language Models with
Progressive Layer Dropping" (NeurIPS 2020), in the setting of Kaddour et al., "No Train No
Gain" (NeurIPS 2023), §3 and appendix C: theta_min 0.5, gamma_f 100 for BERT and 20 for T5.

Parameters (``strategy.<param>=…``):
- ``theta_min`` (default 0.5): the keep level theta tends to, in (0, 1]; 1 drops nothing.
- ``gamma_f`` (default: the study's value for the model family, 100 for BERT, 20 for T5): how
  fast theta falls with progress; 0 or more. The resolved value is in the run's summary.

RST: each optimizer step is charged the reference table's cost at the number of layers that
ran in it (the table's optimizer-step entry, if any, as for the baseline). Logged with each
train record: ``active_layers`` (by the loop) and ``theta``; in the summary: ``gamma_f``,
``theta_min`` and the mean number of active layers per step.

Engines: the torch engine (one process or DDP) and DeepSpeed (any ZeRO stage and precision).
Under the torch engine a dropped layer has no gradient and the optimizer leaves it alone that
step. DeepSpeed fills missing gradients with zeros, so there AdamW still moves a dropped layer
that step by its momentum and weight decay. This is accepted, not refused: the forward pass
and the charged RST are the same, and a zero gradient is what any optimizer over flat gradient
buffers sees; but the two engines' runs differ, so compare methods within one engine (the
engine is recorded with every run).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from ntng_ray.engines.engine import Engine
from ntng_ray.strategies.base import (
    Candidates,
    Cost,
    Strategy,
    StrategyContext,
    StrategyParams,
)

# gamma_f the study used, by model family (DESIGN.md §2).
STUDY_GAMMA_F = {"bert": 100.0, "t5": 20.0}
# Tags this strategy's random stream, so it is independent of others seeded from cfg.seed.
DROP_STREAM = 0x6C64726F70


class LayerDroppingParams(StrategyParams):
    theta_min: float = Field(
        0.5, gt=0.0, le=1.0, description="Keep level theta tends to, in (0, 1]; 1 drops nothing."
    )
    gamma_f: float | None = Field(
        None, ge=0.0, description="Decay rate of theta; default: the study's (BERT 100, T5 20)."
    )


def keep_level(progress: float, theta_min: float, gamma_f: float) -> float:
    """theta(p) = theta_min + (1 - theta_min) * exp(-gamma_f * p)."""
    return theta_min + (1.0 - theta_min) * math.exp(-gamma_f * progress)


def drop_probabilities(theta: float, num_layers: int) -> np.ndarray:
    """P(drop layer i) = (1 - theta) * i / L for layers i = 1..L."""
    return (1.0 - theta) * np.arange(1, num_layers + 1) / num_layers


def draw_active(probabilities: np.ndarray, seed: int, step: int) -> tuple[int, ...]:
    """The 0-based indices of the layers kept at ``step``: a function of (seed, step) only."""
    rng = np.random.default_rng([DROP_STREAM, seed % 2**64, step])
    dropped = rng.random(len(probabilities)) < probabilities
    if dropped.all():
        dropped[0] = False
    return tuple(int(i) for i in np.flatnonzero(~dropped))


class LayerDropping(Strategy):
    name = "layer_dropping"
    Params = LayerDroppingParams
    changes_depth = True

    def __init__(self, params: LayerDroppingParams, context: StrategyContext) -> None:
        super().__init__(params, context)
        self.params: LayerDroppingParams = params
        family = context.cfg.preset.family
        self.gamma_f = STUDY_GAMMA_F[family] if params.gamma_f is None else params.gamma_f
        self.num_layers = context.cfg.preset.num_layers
        self.theta = 1.0
        self.steps = 0
        self.layer_steps = 0

    def active_layers(self, progress: float, step: int) -> tuple[int, ...]:
        self.theta = keep_level(progress, self.params.theta_min, self.gamma_f)
        probabilities = drop_probabilities(self.theta, self.num_layers)
        return draw_active(probabilities, self.context.cfg.seed, step)

    def after_step(self, engine: Engine, step: int, candidates: Candidates) -> Cost:
        """Count the layers this step ran, for the run's mean depth."""
        self.steps += 1
        self.layer_steps += len(engine.active_layers())
        return {}

    def metrics(self) -> dict[str, float]:
        return {"theta": self.theta}

    def summary_fields(self) -> dict[str, Any]:
        mean = self.layer_steps / self.steps if self.steps else float(self.num_layers)
        return {
            "theta_min": self.params.theta_min,
            "gamma_f": self.gamma_f,
            "mean_active_layers": mean,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "layer_steps": self.layer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.layer_steps = int(state["steps"]), int(state["layer_steps"])
