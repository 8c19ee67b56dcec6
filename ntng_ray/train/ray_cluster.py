"""Reaching Ray: one way to join a cluster or start a local instance, and the check that a
run's request fits the cluster (Ray would otherwise wait forever for resources it lacks)."""

from __future__ import annotations

import os
from typing import Any

import ray

from ntng_ray.config import RunConfig
from ntng_ray.errors import NtngError

DRIVER_CPUS = 1.0


def connect(
    address: str | None,
    num_cpus: float,
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool = True,
) -> None:
    """Join ``address`` (else ``$RAY_ADDRESS``), or start a local Ray with ``num_cpus`` CPUs
    (rounded up; at least the machine's CPUs). Nothing happens when Ray is up already."""
    if ray.is_initialized():
        return
    env = {} if runtime_env is None else {"runtime_env": runtime_env}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **env)
        return
    ray.init(
        num_cpus=max(int(num_cpus + 0.999), os.cpu_count() or 1),
        log_to_driver=log_to_driver,
        **env,
    )


def required_resources(cfg: RunConfig) -> dict[str, float]:
    """Logical resources the run needs: every worker's, plus a CPU for the driver."""
    need = {"CPU": cfg.backend.workers * cfg.backend.cpus_per_worker + DRIVER_CPUS}
    if cfg.backend.use_gpu:
        need["GPU"] = float(cfg.backend.workers)
    return need


def check_fits(cfg: RunConfig) -> None:
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
