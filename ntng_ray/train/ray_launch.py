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
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ntng_ray.config import RunConfig as NtngConfig
from ntng_ray.config import StrategyConfig
from ntng_ray.engines.device import pick_device
from ntng_ray.errors import NtngError
from ntng_ray.train.loop import Placement, Reporter, build_run
from ntng_ray.train.plan import RunPlan, plan_run
from ntng_ray.train.run import (
    begin_outputs,
    drop_lines_after,
    finish_outputs,
    rank0_sinks,
    read_summary,
    tracked,
)

DRIVER_CPUS = 1.0
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
    connect(cfg)
    check_fits(cfg)
    begin_outputs(plan)
    run_id = mlflow_run_id or _create_mlflow_run(plan)
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
        _end_mlflow_run(plan, run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
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
    params = cfg.strategy.params().model_dump(mode="json")
    strategy = StrategyConfig.model_validate({"name": cfg.strategy.name, **params})
    output_dir = str(resolve_output_dir(cfg).resolve())
    return cfg.model_copy(update={"output_dir": output_dir, "strategy": strategy})


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
    from ntng_ray.track.mlflow_run import resolve_tracking_uri

    tracking = cfg.tracking.model_copy(update={"uri": resolve_tracking_uri(cfg.tracking)})
    return cfg.model_copy(update={"data": data, "tracking": tracking})


def storage_path(cfg: NtngConfig, plan: RunPlan) -> str:
    """Where Ray Train keeps results and checkpoints: the configured URI, else the run folder."""
    if cfg.backend.storage_path:
        path = cfg.backend.storage_path
        return path if "://" in path else str(Path(path).expanduser().resolve())
    return str(plan.output_dir / "ray")


def _forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def required_resources(cfg: NtngConfig) -> dict[str, float]:
    """Logical resources the run needs: every worker's, plus a CPU for the driver."""
    need = {"CPU": cfg.backend.workers * cfg.backend.cpus_per_worker + DRIVER_CPUS}
    if cfg.backend.use_gpu:
        need["GPU"] = float(cfg.backend.workers)
    return need


def connect(cfg: NtngConfig) -> None:
    """Join the configured cluster, or start a local Ray instance sized for this run."""
    if ray.is_initialized():
        return
    address = cfg.backend.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    need = required_resources(cfg)
    ray.init(num_cpus=max(int(need["CPU"] + 0.999), os.cpu_count() or 1))


def check_fits(cfg: NtngConfig) -> None:
    """Refuse a run the cluster cannot hold, naming what is missing (Ray would wait forever).

    An autoscaling cluster (``backend.autoscaling``) starts nodes for a pending request, so
    there the request is left to wait for them.
    """
    if cfg.backend.autoscaling:
        return
    total = ray.cluster_resources()
    for resource, amount in required_resources(cfg).items():
        if total.get(resource, 0.0) < amount:
            raise NtngError(
                f"backend.workers = {cfg.backend.workers} with {cfg.backend.cpus_per_worker} CPU "
                f"per worker{' and a GPU each' if cfg.backend.use_gpu else ''} needs {amount:g} "
                f"{resource} (including {DRIVER_CPUS:g} CPU for the driver), but the Ray cluster "
                f"has {total.get(resource, 0.0):g}; reduce backend.workers, add nodes, or set "
                "backend.autoscaling=true where the cluster adds nodes on demand"
            )
    per_worker = {"CPU": cfg.backend.cpus_per_worker, "GPU": 1.0 if cfg.backend.use_gpu else 0.0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(all(n.get(r, 0.0) >= a for r, a in per_worker.items()) for n in nodes):
        raise NtngError(
            f"no Ray node can hold one worker ({per_worker['CPU']:g} CPU"
            f"{', 1 GPU' if cfg.backend.use_gpu else ''}); lower backend.cpus_per_worker"
        )


def _create_mlflow_run(plan: RunPlan) -> str | None:
    """The MLflow run is created here, so a restarted rank 0 reopens the same one."""
    if not plan.cfg.tracking.enabled:
        return None
    from ntng_ray.track.mlflow_run import MlflowRun, run_tags

    tags = run_tags(plan.cfg, plan.table.table_id, plan.table.content_hash)
    run = MlflowRun.start(plan.cfg, tags)
    return run.run_id


def _end_mlflow_run(plan: RunPlan, run_id: str | None, status: str) -> None:
    if run_id is None:
        return
    from ntng_ray.track.mlflow_run import MlflowRun

    MlflowRun.start(plan.cfg, {}, run_id=run_id).end(status)


def progress_metrics(source: dict[str, Any], budget: float, val_loss: float) -> dict[str, Any]:
    """What every report to Ray carries, under the names Tune's stoppers and searchers read:
    RST spent and budgeted, the step, and the latest validation loss."""
    return {
        "rst_seconds": source["rst_seconds"],
        "rst_progress": source["rst_progress"],
        "step": source["step"],
        "budget_rst_seconds": budget,
        "val_loss": val_loss,
    }


class WorkerReports:
    """A worker's reports to Ray Train: validation points (from every rank, as ``report`` is a
    barrier) and checkpoints, each with the latest validation loss."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.val_loss = math.nan

    def __call__(self, record: dict[str, Any]) -> None:
        if record["event"] != "validation":
            return
        self.val_loss = record["loss"]
        extra = {"train_eval_loss": record["train_eval_loss"], "progress_point": record["progress"]}
        ray.train.report(progress_metrics(record, self.budget, self.val_loss) | extra)

    def checkpoint(self, folder: Path, progress: dict[str, Any]) -> None:
        ray.train.report(
            progress | progress_metrics(progress, self.budget, self.val_loss),
            checkpoint=Checkpoint.from_directory(str(folder)),
            checkpoint_dir_name=f"step-{progress['step']:07d}",
        )


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: plan, engine, restore if Ray restarted us, run, report."""
    context = ray.train.get_context()
    placement = Placement(context.get_world_rank(), context.get_world_size())
    cfg = NtngConfig.model_validate(config["config"])
    # As many torch threads as CPUs the worker holds, unless the run says otherwise.
    torch.set_num_threads(cfg.train.threads or max(1, int(cfg.backend.cpus_per_worker)))
    plan = plan_run(cfg, check_output_dir=False)
    device = ray.train.torch.get_device() if cfg.backend.use_gpu else pick_device("cpu")
    reports = WorkerReports(cfg.budget.seconds)
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
