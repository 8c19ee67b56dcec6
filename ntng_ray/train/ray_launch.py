"""The loop on N Ray Train workers: a ``TorchTrainer`` around the same ``BudgetedRun``.

The driver checks everything a run checks in one process, builds the data caches once, makes
the output folder and the MLflow run, joins (``--address`` / ``$RAY_ADDRESS``) or starts a
Ray instance, refuses a request the cluster cannot hold (Ray would wait forever), and fits.
Workers rebuild the plan from the cached data, restore from Ray Train's latest checkpoint after
a failure, and run the loop; rank 0 writes the outputs and logs to MLflow; every rank reports
validation points and checkpoints to Ray Train.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ntng_ray.config import RunConfig as NtngConfig
from ntng_ray.engines.device import pick_device
from ntng_ray.strategies import resolve_strategy, with_resolved_params
from ntng_ray.track import schema, tracker
from ntng_ray.train.lifecycle import (
    begin_outputs,
    drop_lines_after,
    finish_outputs,
    rank0_sinks,
    read_summary,
    tracked,
)
from ntng_ray.train.loop import Placement, Reporter, build_run
from ntng_ray.train.plan import RunPlan, plan_run
from ntng_ray.train.progress_reports import worker_reports
from ntng_ray.train.ray_cluster import check_fits, connect, required_resources

FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "HF_HOME")


def pretrain_on_ray(
    cfg: NtngConfig,
    reporters: Sequence[Reporter] = (),
    *,
    mlflow_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run ``cfg`` on ``backend.workers`` Ray Train workers; returns the run's summary.

    A sweep trial passes its own MLflow run (reopened by rank 0) and Ray Train callbacks such as
    Tune's report forwarder; a Ray Train run of the same name in the same storage resumes from
    its latest checkpoint, which is how a restarted trial continues.
    """
    cfg = _pinned_for_workers(cfg)
    plan = plan_run(cfg)
    connect(cfg.backend.address, required_resources(cfg)["CPU"])
    check_fits(cfg)
    begin_outputs(plan)
    run_id = mlflow_run_id or _create_tracked_run(plan)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "mlflow_run_id": run_id,
            "reporters": list(reporters),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.backend.workers,
            use_gpu=cfg.backend.use_gpu,
            resources_per_worker={"CPU": cfg.backend.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.backend.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage_path(cfg, plan),
            failure_config=FailureConfig(max_failures=cfg.backend.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _forwarded_env()},
            callbacks=list(callbacks),
        ),
    )
    try:
        result = trainer.fit()
    except BaseException as exc:
        status = schema.KILLED if isinstance(exc, KeyboardInterrupt) else schema.FAILED
        _end_tracked_run(plan, run_id, status)
        raise
    summary = read_summary(plan.output_dir)
    summary["ray"] = {
        "storage_path": result.path,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
    }
    return summary


def _pinned_for_workers(cfg: NtngConfig) -> NtngConfig:
    """The config with every path and store made absolute, so workers find the same ones."""
    from ntng_ray.train.outputs import resolve_output_dir

    cfg = pin_shared_paths(cfg)
    # Strategy parameters come back from validation resolved (e.g. RHO-loss's il_dir absolute).
    cfg = with_resolved_params(cfg, resolve_strategy(cfg))
    output_dir = str(resolve_output_dir(cfg).resolve())
    return cfg.model_copy(update={"output_dir": output_dir})


def pin_shared_paths(cfg: NtngConfig) -> NtngConfig:
    """Data files, the data cache and the MLflow store made absolute, as other processes need."""
    data = cfg.data.model_copy(
        update={
            "cache_dir": str(cfg.data.resolved_cache_dir().resolve()),
            "files": [str(Path(f).expanduser().resolve()) for f in cfg.data.files],
        }
    )
    if not cfg.tracking.enabled:
        return cfg.model_copy(update={"data": data})
    tracking = cfg.tracking.model_copy(update={"uri": tracker.resolve_store(cfg.tracking)})
    return cfg.model_copy(update={"data": data, "tracking": tracking})


def storage_path(cfg: NtngConfig, plan: RunPlan) -> str:
    """Where Ray Train keeps results and checkpoints: the configured URI, else the run folder."""
    if cfg.backend.storage_path:
        path = cfg.backend.storage_path
        return path if "://" in path else str(Path(path).expanduser().resolve())
    return str(plan.output_dir / "ray")


def _forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def _create_tracked_run(plan: RunPlan) -> str | None:
    """The tracked run is created here, so a restarted rank 0 reopens the same one."""
    if not plan.cfg.tracking.enabled:
        return None
    tags = tracker.run_tags(plan.cfg, plan.table.table_id, plan.table.content_hash)
    return tracker.start_run(plan.cfg, tags).run_id


def _end_tracked_run(plan: RunPlan, run_id: str | None, status: str) -> None:
    if run_id is not None:
        tracker.end_run(plan.cfg, run_id, status)


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: plan, engine, restore if Ray restarted us, run, report."""
    context = ray.train.get_context()
    placement = Placement(context.get_world_rank(), context.get_world_size())
    cfg = NtngConfig.model_validate(config["config"])
    # As many torch threads as CPUs the worker holds, unless the run says otherwise.
    torch.set_num_threads(cfg.train.threads or max(1, int(cfg.backend.cpus_per_worker)))
    plan = plan_run(cfg, check_output_dir=False)
    device = ray.train.torch.get_device() if cfg.backend.use_gpu else pick_device("cpu")
    reports = worker_reports(cfg.budget.seconds)
    run = build_run(plan, placement, device, checkpoint_sink=reports.checkpoint)
    engine = run.engine
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.restore(Path(folder))
    is_rank0 = placement.rank == 0
    if is_rank0:
        drop_lines_after(plan.output_dir / "metrics.jsonl", run.restored_from_step)
    tracking = (
        tracked(plan, engine, run_id=config["mlflow_run_id"])
        if is_rank0
        else contextlib.nullcontext(None)
    )
    with tracking as mlflow_run, _sinks(plan, mlflow_run, is_rank0) as sinks:
        run.reporters = [*sinks, *(config["reporters"] if is_rank0 else []), reports]
        summary = run.run()
        if is_rank0:
            finish_outputs(plan, engine, summary, mlflow_run)


def _sinks(plan: RunPlan, mlflow_run: Any, is_rank0: bool) -> contextlib.AbstractContextManager:
    return rank0_sinks(plan, mlflow_run) if is_rank0 else contextlib.nullcontext([])
