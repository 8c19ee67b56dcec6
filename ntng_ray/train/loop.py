"""The budgeted pretraining loop: it stops when the RST budget is spent, and knows no Ray.

Every decision (learning rate, validation points, checkpoints, the stop) reads progress from
the RST clock; wall time is recorded beside it and never decides anything. A step whose charge
would take the clock past the budget is not started, so no run gets more compute than its
budget and the final figure is at most one step's cost below it.

Data-parallel workers run the same loop. Every worker charges the whole data-parallel step
(all workers' sequences) to its own clock: charges come from the reference table, not from
measurements, so every clock advances identically without communication, and the stop, the
schedule, validation and checkpoints agree on every worker. Launchers (Ray Train) plug in
through reporters, a checkpoint sink, and a checkpoint folder to restore from.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntng_ray.config import RunConfig
from ntng_ray.data.prepare import PreparedData
from ntng_ray.engines.device import environment
from ntng_ray.engines.engine import Engine
from ntng_ray.errors import NtngError
from ntng_ray.models.builders import count_parameters
from ntng_ray.models.compile import compile_blocks
from ntng_ray.rst.clock import FORWARD, HESSIAN, OPTIMIZER, TRAIN, RSTClock, step_cost
from ntng_ray.schedules import lr_multiplier
from ntng_ray.strategies import Strategy, StrategyContext, build_strategy
from ntng_ray.strategies.base import Candidates, Cost
from ntng_ray.train.batches import BatchStream
from ntng_ray.train.evaluation import mean_token_loss
from ntng_ray.train.plan import RunPlan, build_engine
from ntng_ray.train.prefetch import ExampleSource, Prefetcher

Reporter = Callable[[dict[str, Any]], None]
# Called on every worker with a folder holding that worker's part of a checkpoint.
CheckpointSink = Callable[[Path, dict[str, Any]], None]
ENGINE_FOLDER = "engine"
RST_KINDS = frozenset({TRAIN, FORWARD, OPTIMIZER, HESSIAN})


@dataclass(frozen=True)
class Placement:
    """This worker's place in the data-parallel group."""

    rank: int = 0
    world_size: int = 1


def loop_state_file(rank: int) -> str:
    return f"loop-rank{rank}.pt"


class BudgetedRun:
    """One run's loop state: clock, data order, masks, evaluation and checkpoint points."""

    def __init__(
        self,
        plan: RunPlan,
        engine: Engine,
        strategy: Strategy,
        reporters: Sequence[Reporter] = (),
        placement: Placement = Placement(),
        checkpoint_sink: CheckpointSink | None = None,
    ) -> None:
        cfg = plan.cfg
        self.plan, self.cfg, self.engine, self.strategy = plan, cfg, engine, strategy
        self.reporters, self.placement, self.checkpoint_sink = reporters, placement, checkpoint_sink
        self.clock = RSTClock(cfg.budget.seconds)
        self.schedule = lr_multiplier(cfg.schedule)
        self.collator = plan.data.collator()
        source = ExampleSource(
            BatchStream(strategy.training_rows(plan.data.train_ids), seed=cfg.seed),
            plan.data.rows,
            self.collator,
            torch.Generator().manual_seed(cfg.seed * 1_000_003 + placement.rank),
            placement.rank,
            placement.world_size,
        )
        self.examples = Prefetcher(source, engine.device, prefetch_depth(cfg, engine.device))
        self.sequences_per_step = (
            cfg.train.microbatch_size * cfg.train.grad_accum * placement.world_size
        )
        self.candidates = Candidates(draw=self.examples.draw, microbatch=cfg.train.microbatch_size)
        self.eval_microbatch = cfg.eval.microbatch_size or cfg.train.microbatch_size
        self.val_rows = plan.data.rows[plan.data.val_ids]
        self.train_eval_rows = plan.data.rows[train_eval_sample(plan.data, cfg)]
        self.pending_points = list(cfg.eval.points)
        self.pending_checkpoints = list(cfg.backend.checkpoint_points)
        self.validation: list[dict[str, Any]] = []
        self.step = 0
        self.tokens = 0
        self.train_wall = 0.0
        self.eval_wall = 0.0
        self.restored_from_step: int | None = None
        self.last_step: tuple[list[torch.Tensor], float, torch.Tensor | None] = ([], 0.0, None)
        self.compile_seconds = 0.0
        self.started = time.perf_counter()

    def run(self) -> dict[str, Any]:
        """Train until the next step would pass the budget; return the run's summary."""
        try:
            if self.cfg.train.compile:
                self.compile_seconds = self._compile()
            self._train()
        finally:
            self.examples.close()
        return self._summary()

    def _compile(self) -> float:
        """Compile the model's blocks and run them once: seconds spent (not charged to RST).

        The warm-up batch comes from training rows with a generator of its own, so the run's
        data order and masks are untouched.
        """
        started = time.perf_counter()
        compile_blocks(self.engine.model)
        data = self.plan.data
        rows = data.rows[data.train_ids[: self.cfg.train.microbatch_size]]
        warm_up = self.collator(torch.from_numpy(rows).long(), torch.Generator().manual_seed(0))
        self.engine.warm_up(warm_up)
        return time.perf_counter() - started

    def _train(self) -> None:
        self._evaluate_due_points()
        while True:
            started = time.perf_counter()
            progress = self.clock.progress
            self.strategy.before_step(self.engine, progress, self.step)
            self.engine.set_active_layers(self.strategy.active_layers(progress, self.step))
            depth = len(self.engine.active_layers())
            cost = step_cost(
                self.plan.table,
                active_layers=depth,
                sequences=self.sequences_per_step,
                optimizer=self.strategy.table_optimizer(),
            )
            bound = self.strategy.max_extra_cost(depth)
            worst = _add(cost, {k: v * self.placement.world_size for k, v in bound.items()})
            if self.clock.would_exceed(worst):
                break
            self._train_step(cost, started)
            self._evaluate_due_points()
            self._checkpoint_if_due()
        # A run shorter than train.log_every steps, or steps since the last record.
        if self.last_step[0] and self.step % self.cfg.train.log_every:
            self._report_train()
        self._evaluate(1.0)

    def _train_step(self, cost: Cost, started: float) -> None:
        lr = self.strategy.peak_lr() * self.schedule(self.clock.progress)
        accum = self.cfg.train.grad_accum
        losses, extra = [], {}
        for _ in range(accum):
            examples, spent = self.strategy.select(self.candidates, self.engine)
            extra = _add(extra, spent)
            losses.append(self.engine.forward_backward(examples.batch, scale=1.0 / accum))
        grad_norm = self.engine.step(lr)
        extra = _add(extra, self.strategy.after_step(self.engine, self.step + 1, self.candidates))
        self.clock.charge_all(_add(cost, _sum_over_workers(extra, self.placement)))
        self.step += 1
        self.tokens += self.sequences_per_step * self.cfg.preset.seq_len
        self.train_wall += time.perf_counter() - started
        self.last_step = (losses, lr, grad_norm)
        if self.step % self.cfg.train.log_every == 0:
            self._report_train()

    def _report_train(self) -> None:
        """The train record of the latest step (every ``train.log_every`` steps, and the last).

        The step's losses and gradient norm stay on the device until here: reading them is
        the only host synchronisation of a step that makes no data-dependent choice.
        """
        losses, lr, grad_norm = self.last_step
        self._report(
            {
                "event": "train",
                "loss": torch.stack(losses).mean().item(),
                "lr": lr,
                "grad_norm": None if grad_norm is None else grad_norm.item(),
                "active_layers": len(self.engine.active_layers()),
                "tokens": self.tokens,
                "tokens_per_s": self.tokens / self.train_wall,
                **self.strategy.metrics(),
            }
        )

    def _evaluate_due_points(self) -> None:
        while self.pending_points and self.pending_points[0] < 1.0:
            if self.pending_points[0] > self.clock.progress:
                return
            self._evaluate(self.pending_points.pop(0))

    def _evaluate(self, point: float) -> None:
        started = time.perf_counter()
        seed = self.cfg.data.split_seed
        collator, microbatch = self.collator, self.eval_microbatch
        layers = self.strategy.eval_layers()
        loss = mean_token_loss(self.engine, self.val_rows, collator, microbatch, seed, layers)
        train_eval = mean_token_loss(
            self.engine, self.train_eval_rows, collator, microbatch, seed + 1, layers
        )
        self.eval_wall += time.perf_counter() - started
        record = {"progress": point, "loss": loss, "train_eval_loss": train_eval}
        self.validation.append(
            record
            | {
                "rst_progress": self.clock.progress,
                "rst_seconds": self.clock.spent,
                "step": self.step,
            }
        )
        self._report({"event": "validation", **record})

    def _checkpoint_if_due(self) -> None:
        due = False
        while self.pending_checkpoints and self.pending_checkpoints[0] <= self.clock.progress:
            self.pending_checkpoints.pop(0)
            due = True
        if due and self.checkpoint_sink is not None:
            with tempfile.TemporaryDirectory(prefix="ntng-ckpt-") as tmp:
                folder = Path(tmp)
                self.engine.save_state(folder / ENGINE_FOLDER)
                torch.save(self._loop_state(), folder / loop_state_file(self.placement.rank))
                self.checkpoint_sink(folder, self._progress_fields())

    def _loop_state(self) -> dict[str, Any]:
        return {
            "world_size": self.placement.world_size,
            "clock": self.clock.state_dict(),
            **self.examples.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "tokens": self.tokens,
            "validation": self.validation,
            "pending_points": self.pending_points,
            "pending_checkpoints": self.pending_checkpoints,
            "train_wall": self.train_wall,
            "eval_wall": self.eval_wall,
            "strategy": self.strategy.state_dict(),
        }

    def restore(self, folder: Path) -> None:
        """Continue from a checkpoint folder: weights, optimizer, clock, data position, RNGs."""
        path = folder / loop_state_file(self.placement.rank)
        if not path.is_file():
            raise NtngError(f"checkpoint {folder} has no {path.name}; was it written by this run?")
        state = torch.load(path, weights_only=True)
        if state["world_size"] != self.placement.world_size:
            raise NtngError(
                f"checkpoint {folder} was written by {state['world_size']} workers; this run has "
                f"{self.placement.world_size} (backend.workers must match to resume)"
            )
        self.engine.load_state(folder / ENGINE_FOLDER)
        self.clock.load_state_dict(state["clock"])
        self.examples.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"])
        for name in ("step", "tokens", "validation", "pending_points", "pending_checkpoints"):
            setattr(self, name, state[name])
        self.train_wall, self.eval_wall = state["train_wall"], state["eval_wall"]
        self.strategy.load_state_dict(state["strategy"])
        self.restored_from_step = self.step

    def _progress_fields(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rst_seconds": self.clock.spent,
            "rst_progress": self.clock.progress,
            "wall_seconds": time.perf_counter() - self.started,
        }

    def _report(self, record: dict[str, Any]) -> None:
        record |= self._progress_fields()
        for reporter in self.reporters:
            reporter(record)

    def _summary(self) -> dict[str, Any]:
        cfg, plan = self.cfg, self.plan
        final = self.validation[-1]
        return {
            "name": cfg.name,
            "preset": cfg.model.preset,
            "strategy": cfg.strategy.name,
            "strategy_params": plan.strategy.params_json(),
            "strategy_summary": self.strategy.summary_fields(),
            "preparation_rst_seconds": self.strategy.preparation_rst_seconds(),
            "seed": cfg.seed,
            "budget_rst_seconds": cfg.budget.seconds,
            "rst_seconds": self.clock.spent,
            "rst_progress": self.clock.progress,
            "rst_breakdown": self.clock.breakdown,
            "steps": self.step,
            "sequences_per_step": self.sequences_per_step,
            "workers": self.placement.world_size,
            "restored_from_step": self.restored_from_step,
            "tokens": self.tokens,
            "wall_seconds": time.perf_counter() - self.started,
            "train_wall_seconds": self.train_wall,
            "eval_wall_seconds": self.eval_wall,
            "tokens_per_s": self.tokens / self.train_wall if self.train_wall else 0.0,
            "compile_seconds": self.compile_seconds,
            "final_validation_loss": final["loss"],
            "final_train_eval_loss": final["train_eval_loss"],
            "validation": self.validation,
            "reference_table": {
                "id": plan.table.table_id,
                "sha256": plan.table.content_hash,
                "valid": plan.table_report.ok,
                "problems": plan.table_report.problems,
                "overridden": not plan.table_report.ok,
            },
            "data": {
                "train_sequences": len(plan.data.train_ids),
                "validation_sequences": len(plan.data.val_ids),
                "train_eval_sequences": len(self.train_eval_rows),
                "row_length": plan.data.row_length,
                "corpus_fingerprint": plan.data.corpus_fingerprint,
                **plan.data.learnability.to_dict(),
            },
            "model_parameters": count_parameters(self.engine.model),
            "environment": environment(self.engine.device),
        }


def build_run(
    plan: RunPlan,
    placement: Placement = Placement(),
    device: torch.device | None = None,
    reporters: Sequence[Reporter] = (),
    checkpoint_sink: CheckpointSink | None = None,
) -> BudgetedRun:
    """The run's strategy, its engine (the strategy picks the optimizer), and the loop."""
    context = StrategyContext(
        plan.cfg, plan.table, placement.rank, placement.world_size, extras={"data": plan.data}
    )
    strategy = build_strategy(context, plan.strategy)
    engine = build_engine(plan, placement.world_size, device, strategy.build_optimizer)
    return BudgetedRun(plan, engine, strategy, reporters, placement, checkpoint_sink)


def _add(a: Cost, b: Cost) -> Cost:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}


def _sum_over_workers(cost: Cost, placement: Placement) -> Cost:
    """The data-parallel group's total of a per-worker cost, identical on every worker."""
    if placement.world_size == 1:
        return cost
    import torch.distributed as dist

    kinds = sorted(RST_KINDS)
    unknown = set(cost) - RST_KINDS
    if unknown:
        raise ValueError(f"cost kinds {sorted(unknown)} are not RST kinds {kinds}")
    totals = torch.tensor([cost.get(k, 0.0) for k in kinds], dtype=torch.float64)
    dist.all_reduce(totals)
    return {k: float(v) for k, v in zip(kinds, totals.tolist(), strict=True) if v}


def prefetch_depth(cfg: RunConfig, device: torch.device) -> int:
    """Batches made ahead: ``train.prefetch``, or 2 on a GPU and none on a CPU by default.

    On a CPU there is no copy to overlap, and a thread waking beside the compute threads cost
    ~12% of the throughput on 2 cores (benchmarks/throughput.py, bert-tiny).
    """
    if cfg.train.prefetch is not None:
        return cfg.train.prefetch
    return 2 if device.type == "cuda" else 0


def train_eval_sample(data: PreparedData, cfg: RunConfig) -> np.ndarray:
    """A fixed, uniformly drawn sample of training rows, the same for every strategy and seed."""
    rng = np.random.default_rng(cfg.data.split_seed)
    count = min(cfg.eval.train_eval_sequences, len(data.train_ids))
    return np.sort(rng.choice(data.train_ids, size=count, replace=False))
