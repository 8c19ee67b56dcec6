"""The budgeted pretraining loop: one process, no Ray, stops when the RST budget is spent.

Every decision (learning rate, validation points, the stop) reads progress from the RST clock;
wall time is recorded beside it and never decides anything. A step whose charge would take the
clock past the budget is not started, so no run gets more compute than its budget and the
final figure is at most one step's cost below it.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntng_ray import __version__
from ntng_ray.config import RunConfig
from ntng_ray.data.prepare import PreparedData, prepare_data
from ntng_ray.errors import NtngError
from ntng_ray.models.builders import TokenIds, build_model, count_parameters
from ntng_ray.rst.clock import RSTClock, step_cost
from ntng_ray.rst.table import ReferenceTable, TableReport, resolve_table
from ntng_ray.schedules import lr_multiplier
from ntng_ray.train.batches import BatchStream
from ntng_ray.train.engine import Engine, TorchEngine
from ntng_ray.train.evaluation import mean_token_loss
from ntng_ray.train.optim import TABLE_OPTIMIZER, build_optimizer
from ntng_ray.train.outputs import (
    JsonlWriter,
    resolve_output_dir,
    write_json_atomic,
    write_text_atomic,
)

Reporter = Callable[[dict[str, Any]], None]


@dataclass
class RunPlan:
    """Everything checked and built before the first output file is written."""

    cfg: RunConfig
    table: ReferenceTable
    table_report: TableReport
    data: PreparedData
    output_dir: Path


def plan_run(cfg: RunConfig) -> RunPlan:
    """Check the table, the output folder and the data (building caches only), writing no output."""
    table, report = resolve_table(cfg.rst.table, cfg.model.preset, cfg.rst.allow_invalid_table)
    output_dir = resolve_output_dir(cfg)
    data = prepare_data(cfg)
    return RunPlan(cfg, table, report, data, output_dir)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise NtngError("train.device = 'cuda' but torch sees no CUDA device; use cpu or auto")
    return torch.device(choice)


def build_engine(plan: RunPlan) -> Engine:
    """The model at full depth with its optimizer, on the configured device and precision."""
    cfg = plan.cfg
    tok = plan.data.tokenizer
    model = build_model(
        cfg.preset, cfg.vocab_size, TokenIds(pad_id=tok.pad_id, eos_id=tok.eos_id), cfg.seed
    )
    device = pick_device(cfg.train.device)
    model.to(device)
    optimizer = build_optimizer(cfg.optimizer, model)
    return TorchEngine(model, optimizer, device, cfg.train.precision, cfg.optimizer.grad_clip)


def pretrain(cfg: RunConfig, reporters: Sequence[Reporter] = ()) -> dict[str, Any]:
    """Run one budgeted pretraining job in this process; returns (and writes) its summary."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    plan = plan_run(cfg)
    engine = build_engine(plan)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan.output_dir / "config.yaml", cfg.to_yaml())
    metrics = JsonlWriter(plan.output_dir / "metrics.jsonl")
    try:
        summary = BudgetedRun(plan, engine, [metrics, *reporters]).run()
    finally:
        metrics.close()
    write_json_atomic(plan.output_dir / "summary.json", summary)
    return summary


class BudgetedRun:
    """The loop's state for one run: clock, data order, evaluation points, counters."""

    def __init__(self, plan: RunPlan, engine: Engine, reporters: Sequence[Reporter]) -> None:
        cfg = plan.cfg
        self.plan, self.cfg, self.engine, self.reporters = plan, cfg, engine, reporters
        self.clock = RSTClock(cfg.budget.seconds)
        self.schedule = lr_multiplier(cfg.schedule)
        self.collator = plan.data.collator()
        self.stream = BatchStream(plan.data.train_ids, seed=cfg.seed)
        self.mask_generator = torch.Generator().manual_seed(cfg.seed)
        self.sequences_per_step = cfg.train.microbatch_size * cfg.train.grad_accum
        self.eval_microbatch = cfg.eval.microbatch_size or cfg.train.microbatch_size
        self.val_rows = plan.data.rows[plan.data.val_ids]
        self.train_eval_rows = plan.data.rows[_train_eval_sample(plan.data, cfg)]
        self.pending_points = list(cfg.eval.points)
        self.validation: list[dict[str, Any]] = []
        self.step = 0
        self.tokens = 0
        self.train_wall = 0.0
        self.eval_wall = 0.0
        self.started = time.perf_counter()

    def run(self) -> dict[str, Any]:
        self._evaluate_due_points()
        while True:
            cost = step_cost(
                self.plan.table,
                active_layers=len(self.engine.active_layers()),
                sequences=self.sequences_per_step,
                optimizer=TABLE_OPTIMIZER[self.cfg.optimizer.name],
            )
            if self.clock.would_exceed(cost):
                break
            self._train_step(cost)
            self._evaluate_due_points()
        self._evaluate(1.0)
        return self._summary()

    def _train_step(self, cost: dict[str, float]) -> None:
        started = time.perf_counter()
        lr = self.cfg.optimizer.lr * self.schedule(self.clock.progress)
        accum = self.cfg.train.grad_accum
        losses = []
        for _ in range(accum):
            ids = self.stream.take(self.cfg.train.microbatch_size)
            rows = torch.from_numpy(self.plan.data.rows[ids]).long()
            batch = self.collator(rows, self.mask_generator)
            losses.append(self.engine.forward_backward(batch, scale=1.0 / accum))
        grad_norm = self.engine.step(lr)
        self.clock.charge_all(cost)
        self.step += 1
        self.tokens += self.sequences_per_step * self.cfg.preset.seq_len
        self.train_wall += time.perf_counter() - started
        if self.step % self.cfg.train.log_every == 0:
            self._report(
                {
                    "event": "train",
                    "loss": float(np.mean(losses)),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": self.tokens,
                    "tokens_per_s": self.tokens / self.train_wall,
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
        loss = mean_token_loss(
            self.engine, self.val_rows, self.collator, self.eval_microbatch, seed
        )
        train_eval = mean_token_loss(
            self.engine, self.train_eval_rows, self.collator, self.eval_microbatch, seed + 1
        )
        self.eval_wall += time.perf_counter() - started
        record = {"progress": point, "loss": loss, "train_eval_loss": train_eval}
        self.validation.append(
            record
            | {
                "rst_progress": self.clock.progress,
                "step": self.step,
                "rst_seconds": self.clock.spent,
            }
        )
        self._report({"event": "validation", **record})

    def _report(self, record: dict[str, Any]) -> None:
        record |= {
            "step": self.step,
            "rst_seconds": self.clock.spent,
            "rst_progress": self.clock.progress,
            "wall_seconds": time.perf_counter() - self.started,
        }
        for reporter in self.reporters:
            reporter(record)

    def _summary(self) -> dict[str, Any]:
        cfg, plan = self.cfg, self.plan
        final = self.validation[-1]
        return {
            "name": cfg.name,
            "preset": cfg.model.preset,
            "strategy": cfg.strategy.name,
            "seed": cfg.seed,
            "budget_rst_seconds": cfg.budget.seconds,
            "rst_seconds": self.clock.spent,
            "rst_progress": self.clock.progress,
            "rst_breakdown": self.clock.breakdown,
            "steps": self.step,
            "sequences_per_step": self.sequences_per_step,
            "tokens": self.tokens,
            "wall_seconds": time.perf_counter() - self.started,
            "train_wall_seconds": self.train_wall,
            "eval_wall_seconds": self.eval_wall,
            "tokens_per_s": self.tokens / self.train_wall if self.train_wall else 0.0,
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
            },
            "model_parameters": count_parameters(self.engine.model),
            "environment": environment(self.engine.device),
        }


def _train_eval_sample(data: PreparedData, cfg: RunConfig) -> np.ndarray:
    """A fixed, uniformly drawn sample of training rows, the same for every strategy and seed."""
    rng = np.random.default_rng(cfg.data.split_seed)
    count = min(cfg.eval.train_eval_sequences, len(data.train_ids))
    return np.sort(rng.choice(data.train_ids, size=count, replace=False))


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, recorded with every run."""
    import transformers

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "ntng_ray": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "hardware": hardware or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
