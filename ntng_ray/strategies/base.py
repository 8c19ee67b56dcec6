"""The strategy interface: the named points where a training method plugs into the one loop.

The loop calls, for every optimizer step:

1. ``active_layers(progress, step)``: which layers run (None: all); the step is charged at
   that depth. Called on every worker with the same arguments, so a strategy that derives its
   answer from (seed, step, progress) agrees across workers without communication.
2. ``before_step(engine, progress, step)``: change the model or optimizer (e.g. grow layers).
3. ``select(candidates, engine)`` per microbatch: choose the examples to train on from
   ``candidates.draw(n)``; returns the chosen ``Examples`` and the extra RST the choice cost.
4. the engine's forward+backward on the chosen examples, then the optimizer step.
5. ``after_step(engine, step, candidates)``: work after the update (e.g. a Hessian estimate),
   returning its extra RST.

Before a step starts, ``max_extra_cost`` bounds what steps 3 and 5 may charge, so a step that
could pass the budget is not started. Extra costs are summed over data-parallel workers (each
worker's choices are its own) and charged on every worker, so all clocks stay equal.
``build_optimizer`` and ``table_optimizer`` say which optimizer runs and how its step is
charged; ``training_rows`` which rows it may train on. ``metrics`` adds the strategy's own
figures to the train records and ``summary_fields`` to the summary; ``state_dict`` goes into
checkpoints.

Besides hooks, a strategy declares its facts as class attributes, which the run plan checks once
before any work (no strategy name appears outside this package): whether it changes the depth
that trains (``changes_depth``), the model families and precisions it supports, the optimizer it
brings (``brings_optimizer``, its reference-table entry) and what it needs of the optimizer
under an engine (``optimizer_access``), and the work it needs done before training
(``preparation``: RHO-loss's irreducible-loss model), which ``ntng prepare`` and sweeps run
without knowing the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ntng_ray.config import RunConfig
from ntng_ray.config.presets import Family
from ntng_ray.engines.engine import Engine
from ntng_ray.engines.factory import OptimizerAccess
from ntng_ray.engines.optimizers import TABLE_OPTIMIZER, build_optimizer
from ntng_ray.rst.table import ReferenceTable
from ntng_ray.strategies.examples import Examples

Cost = dict[str, float]


class StrategyParams(BaseModel):
    """A strategy's own parameters (``strategy.<param>=…``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Candidates:
    """This worker's source of training examples, in the run's shared data order.

    ``draw(n)`` returns the next n examples of this worker's share, collated with the run's
    masking generator; ``microbatch`` is the number one training microbatch holds.
    """

    draw: Callable[[int], Examples]
    microbatch: int


@dataclass
class StrategyContext:
    """What a strategy may read about its run."""

    cfg: RunConfig
    table: ReferenceTable
    rank: int = 0
    world_size: int = 1
    extras: dict[str, Any] = field(default_factory=dict)


class Preparation:
    """Work a strategy needs done before it can train, as one pretraining run and a step after it.

    ``ntng prepare`` (and a sweep's preparation stage, once per budget) runs ``run_config``'s
    pretraining into a subfolder of the preparation folder, then ``finish``, which writes what
    the strategy reads into that folder; the folder is handed to the strategy as
    ``strategy.<folder_setting>``. Its RST is reported apart from the run's budget, never
    charged to it and never hidden.
    """

    label: ClassVar[str]
    """What is prepared, for messages (e.g. 'irreducible-loss model')."""
    folder_setting: ClassVar[str]
    """The strategy parameter that receives the preparation folder."""
    command: ClassVar[str | None] = None
    """A command of its own beside ``ntng prepare`` (``ntng rho-prepare``), if any."""

    def __init__(self, cfg: RunConfig, params: StrategyParams) -> None:
        self.cfg = cfg
        self.params = params

    def budget_rst_seconds(self) -> float:
        """The RST the preparation's pretraining run may spend."""
        raise NotImplementedError

    def run_config(self, folder: Path) -> RunConfig:
        """The pretraining run to do, writing its outputs to ``folder``."""
        raise NotImplementedError

    def finish(self, run_cfg: RunConfig, summary: dict[str, Any], folder: Path) -> dict[str, Any]:
        """Write what the strategy reads into ``folder``; return metadata holding
        ``preparation_rst_seconds`` (the run's RST plus anything spent after it)."""
        raise NotImplementedError

    def describe(self, metadata: dict[str, Any], folder: Path) -> str:
        """One line for the terminal about what was prepared."""
        return (
            f"prepared the {self.label} in {folder} "
            f"({metadata['preparation_rst_seconds']:.2f} RST s, reported apart from the budget)"
        )


class Strategy:
    """The baseline behaviour; methods override the hooks they need and declare their facts.

    Subclasses set ``name`` (the value of ``strategy.name``) and ``Params``, and carry a
    docstring card: what the method does, its paper, its parameters, what it charges to RST.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    # False for helpers that other commands run (rho-prepare's IL model), not for comparison.
    listed: ClassVar[bool] = True
    changes_depth: ClassVar[bool] = False
    """Some steps train a subset of the layers (the engine stays full depth; DDP must then
    look for parameters without gradients)."""
    families: ClassVar[frozenset[Family]] = frozenset({"bert", "t5"})
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32", "bf16", "fp16"})
    precision_note: ClassVar[str] = ""
    """Why a precision is missing from ``precisions``, appended to the refusal."""
    brings_optimizer: ClassVar[str | None] = None
    """The optimizer the method brings, named as its reference-table entry; None: the run's."""
    optimizer_access: ClassVar[OptimizerAccess] = "none"
    """What the method needs of the optimizer, which some engines hide (see
    ``ntng_ray.engines.factory.optimizer_access_refusal``)."""
    preparation: ClassVar[type[Preparation] | None] = None

    def __init__(self, params: StrategyParams, context: StrategyContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def check_supported(cls, cfg: RunConfig, params: StrategyParams) -> None:
        """Refuse (NtngError) what the declared facts cannot express (e.g. a growth plan that
        does not fit the model)."""

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(self.context.cfg.optimizer, model)

    def peak_lr(self) -> float:
        """The learning rate the schedule multiplies (the optimizer section's, by default)."""
        return self.context.cfg.optimizer.lr

    def table_optimizer(self) -> str:
        """The reference-table optimizer entry this method's optimizer step is charged at."""
        return self.brings_optimizer or TABLE_OPTIMIZER[self.context.cfg.optimizer.name]

    def preparation_rst_seconds(self) -> float:
        """RST its preparation spent (reported apart from the budget); 0 without one."""
        return 0.0

    def training_rows(self, train_ids: np.ndarray) -> np.ndarray:
        """The training rows this method may draw from (RHO-loss holds some out)."""
        return train_ids

    def active_layers(self, progress: float, step: int) -> int | Sequence[int] | None:
        return None

    def before_step(self, engine: Engine, progress: float, step: int) -> None:
        return None

    def eval_layers(self) -> int | Sequence[int] | None:
        """The layers validation and train-eval run: the full model (None) unless the model
        does not have its full depth yet (layer stacking evaluates the layers it has grown)."""
        return None

    def max_extra_cost(self, active_layers: int) -> Cost:
        """An upper bound on the extra RST one step's ``select`` and ``after_step`` charge."""
        return {}

    def select(self, candidates: Candidates, engine: Engine) -> tuple[Examples, Cost]:
        return candidates.draw(candidates.microbatch), {}

    def after_step(self, engine: Engine, step: int, candidates: Candidates) -> Cost:
        return {}

    def metrics(self) -> dict[str, float]:
        """Figures logged with each train record (e.g. the selection ratio)."""
        return {}

    def summary_fields(self) -> dict[str, Any]:
        """Figures for the run's summary (e.g. a separately reported cost)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
