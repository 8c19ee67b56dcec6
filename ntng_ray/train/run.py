"""Run a pretraining job: in this process, or on Ray Train workers when the backend asks.

Both paths share how a run's outputs begin and end (``ntng_ray.train.lifecycle``), so a run's
folder looks the same however it was launched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ntng_ray.config import RunConfig
from ntng_ray.errors import NtngError
from ntng_ray.train.lifecycle import (
    begin_outputs,
    drop_lines_after,
    finish_outputs,
    keep_latest_checkpoint,
    rank0_sinks,
    tracked,
)
from ntng_ray.train.loop import CheckpointSink, Reporter, build_run
from ntng_ray.train.plan import plan_run

CHECKPOINT_FOLDER = "checkpoints"


def uses_ray(cfg: RunConfig) -> bool:
    """One CPU worker runs in this process unless Ray is asked for; anything more needs Ray."""
    backend = cfg.backend
    wants_ray = backend.launcher == "ray" or backend.workers > 1 or backend.use_gpu
    if backend.launcher == "local" and wants_ray:
        raise NtngError(
            f"backend.launcher = 'local' runs one process, but backend.workers = {backend.workers}"
            f" and backend.use_gpu = {backend.use_gpu} need Ray Train; use launcher auto or ray"
        )
    return wants_ray


def pretrain(cfg: RunConfig, reporters: Sequence[Reporter] = ()) -> dict[str, Any]:
    """Run one budgeted pretraining job; returns (and writes) its summary."""
    if uses_ray(cfg):
        from ntng_ray.train.ray_launch import pretrain_on_ray

        return pretrain_on_ray(cfg, reporters)
    return pretrain_in_process(cfg, reporters)


def pretrain_in_process(
    cfg: RunConfig,
    reporters: Sequence[Reporter] = (),
    *,
    mlflow_run_id: str | None = None,
    checkpoint_sink: CheckpointSink | None = None,
    restore_from: Path | None = None,
) -> dict[str, Any]:
    """The run in this process, with no Ray: the core loop, its outputs and its MLflow run.

    A caller that owns the run's lifecycle (a sweep trial) passes the MLflow run to reopen,
    where checkpoints go, and the checkpoint to continue from after a restart.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    plan = plan_run(cfg, check_output_dir=restore_from is None)
    sink = checkpoint_sink or keep_latest_checkpoint(plan.output_dir / CHECKPOINT_FOLDER)
    run = build_run(plan, checkpoint_sink=sink)
    if restore_from is not None:
        run.restore(restore_from)
    begin_outputs(plan)
    drop_lines_after(plan.output_dir / "metrics.jsonl", run.restored_from_step)
    with (
        tracked(plan, run.engine, run_id=mlflow_run_id) as mlflow_run,
        rank0_sinks(plan, mlflow_run) as sinks,
    ):
        run.reporters = [*sinks, *reporters]
        summary = run.run()
        finish_outputs(plan, run.engine, summary, mlflow_run)
    return summary
