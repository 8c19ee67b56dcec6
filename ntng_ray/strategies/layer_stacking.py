"""Layer stacking: train a shallow model, then grow it by copying its blocks on top of itself.

What it does: training starts on the first ``initial_layers`` layers. When RST progress first
reaches each point of ``grow_at``, the depth L doubles: every parameter of block i is copied
into block i + L (i < L), in BERT's encoder and in both T5 stacks, and the new blocks' optimizer
state is reset ("fresh", the study's setting) or copied from their sources ("copied"), one
parameter at a time; the existing parameters' state is never touched. Growth happens in
``before_step`` and depends only on progress, so every data-parallel worker grows at the same
step without communicating.

Paper: Gong et al., "Efficient Training of BERT by Progressively Stacking" (ICML 2019), in the
setting of Kaddour et al., "No Train No Gain" (NeurIPS 2023), §3 and appendix C: BERT grows
4 -> 8 -> 16 layers and T5 3 -> 6 -> 12 at p = 0.125 and p = 0.3, with fresh optimizer state.

Parameters (``strategy.<param>=…``):
- ``initial_layers`` (default: the model's layers // 4, at least 1): the starting depth.
- ``grow_at`` (default [0.125, 0.3]): strictly increasing progress points in (0, 1); the depth
  doubles at each, and must reach the model's depth exactly at the last one.
- ``new_state`` (default fresh): the new blocks' optimizer state, ``fresh`` or ``copied``.

RST: each optimizer step is charged the reference table's cost at the active depth (the
table's optimizer-step entry, if any, as for the baseline); growing copies tensors and is free.
Validation and train-eval run the grown layers: blocks not yet grown into are untrained.

Engines: the torch engine (one process or DDP), and DeepSpeed with ZeRO 1 or 2 in any precision
or ZeRO 0 in fp32. DeepSpeed ZeRO 0 with bf16/fp16 is refused: its optimizer wrapper keeps
per-parameter state out of reach. Where DeepSpeed keeps state in flat partitions (ZeRO 1/2,
bf16/fp16), "fresh" zeroes the new blocks' moments but their Adam step count is the group's,
so their first updates lack the bias correction a truly fresh state would have. Under
DeepSpeed the layers not yet grown get zero gradients, so weight decay shrinks them before
they are overwritten by the copy; the result is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from ntng_ray.config import RunConfig
from ntng_ray.engines.engine import Engine
from ntng_ray.errors import NtngError
from ntng_ray.models.active_layers import layer_stacks
from ntng_ray.strategies.base import Strategy, StrategyContext, StrategyParams


class LayerStackingParams(StrategyParams):
    initial_layers: int | None = Field(
        None, ge=1, description="Starting depth; default: the model's layers // 4, at least 1."
    )
    grow_at: tuple[float, ...] = Field(
        (0.125, 0.3),
        description="Progress points in (0, 1), increasing; the depth doubles at each.",
    )
    new_state: Literal["fresh", "copied"] = Field(
        "fresh", description="New blocks' optimizer state: fresh (reset) or copied from sources."
    )

    @field_validator("grow_at")
    @classmethod
    def _increasing_inside_unit_interval(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("give at least one growth point; without growth, use the baseline")
        outside = [p for p in value if not 0.0 < p < 1.0]
        if outside:
            raise ValueError(f"growth points must lie in (0, 1); got {outside}")
        if any(later <= earlier for earlier, later in pairwise(value)):
            raise ValueError("growth points must be strictly increasing")
        return value


def initial_depth(params: LayerStackingParams, num_layers: int) -> int:
    """``initial_layers``, or the default: a quarter of the model's depth, at least 1."""
    return params.initial_layers or max(1, num_layers // 4)


def check_growth_plan(params: LayerStackingParams, cfg: RunConfig) -> None:
    """Refuse a start depth and growth points that do not end at the model's depth."""
    total, start = cfg.preset.num_layers, initial_depth(params, cfg.preset.num_layers)
    model = f"model.preset = {cfg.model.preset!r} has {total} layers"
    given = f"strategy.initial_layers = {start}" + ("" if params.initial_layers else " (default)")
    if start > total:
        raise NtngError(f"{given}: more than the model's depth ({model})")
    growths = len(params.grow_at)
    final = start * 2**growths
    if final != total:
        example = total // 2**growths
        hint = (
            f" (e.g. strategy.initial_layers = {example})" if example * 2**growths == total else ""
        )
        raise NtngError(
            f"{given} doubled at the {growths} points of "
            f"strategy.grow_at = {list(params.grow_at)} ends at {final} layers, but {model}; "
            f"choose them so that initial_layers * 2**len(grow_at) = {total}{hint}"
        )


def block_pairs(model: nn.Module, depth: int) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
    """(source, target) for every parameter of blocks i -> i + depth, i < depth, in every stack.

    Matched by name: T5's block 0 alone owns the relative position bias, which the others
    borrow, so a target block may have fewer parameters than its source.
    """
    for stack in layer_stacks(model):
        for index in range(depth):
            sources = dict(stack[index].named_parameters())
            for name, target in stack[index + depth].named_parameters():
                yield sources[name], target


class LayerStacking(Strategy):
    name = "layer_stacking"
    Params = LayerStackingParams
    changes_depth = True
    optimizer_access = "state"

    def __init__(self, params: LayerStackingParams, context: StrategyContext) -> None:
        super().__init__(params, context)
        self.params: LayerStackingParams = params
        self.initial = initial_depth(params, context.cfg.preset.num_layers)
        self.depth = self.initial
        self.growth_steps: list[int] = []

    @classmethod
    def check_supported(cls, cfg: RunConfig, params: LayerStackingParams) -> None:
        check_growth_plan(params, cfg)

    def active_layers(self, progress: float, step: int) -> int:
        return self.depth

    def eval_layers(self) -> int:
        """Evaluate the grown model: blocks not yet grown into have never been trained."""
        return self.depth

    def before_step(self, engine: Engine, progress: float, step: int) -> None:
        """Grow once for every growth point that progress has reached since the last step."""
        points = self.params.grow_at
        while len(self.growth_steps) < len(points) and progress >= points[len(self.growth_steps)]:
            self.grow(engine)
            self.growth_steps.append(step)

    def grow(self, engine: Engine) -> None:
        """Double the depth: copy each active block onto the next, with its optimizer state."""
        copied = self.params.new_state == "copied"
        for source, target in block_pairs(engine.model, self.depth):
            engine.copy_parameter(source, target)
            if copied:
                engine.copy_optimizer_state(source, target)
            else:
                engine.reset_optimizer_state(target)
        self.depth *= 2

    def summary_fields(self) -> dict[str, Any]:
        return {
            "initial_layers": self.initial,
            "final_layers": self.depth,
            "growth_steps": list(self.growth_steps),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "growth_steps": list(self.growth_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Come back at the checkpoint's depth; refuse one this run's growth plan cannot reach."""
        depth, steps = int(state["depth"]), [int(s) for s in state["growth_steps"]]
        if len(steps) > len(self.params.grow_at) or depth != self.initial * 2 ** len(steps):
            raise NtngError(
                f"the checkpoint's layer stacking is at depth {depth} after {len(steps)} growths, "
                f"which strategy.initial_layers = {self.initial} and strategy.grow_at = "
                f"{list(self.params.grow_at)} cannot reach; resume with the same strategy settings"
            )
        self.depth, self.growth_steps = depth, steps
