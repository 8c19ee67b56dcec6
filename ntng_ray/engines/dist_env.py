"""The process environment DeepSpeed and torch.distributed expect, set before they look at it.

DeepSpeed reads ``MASTER_ADDR`` and friends even in one process (without them it tries MPI
discovery and fails on a missing ``mpi4py``), and it picks its accelerator once, from
``DS_ACCELERATOR``, the first time it is asked. Under Ray Train or a launcher these are already
set, and nothing here overrides them.
"""

from __future__ import annotations

import os
import socket
import sys

import torch

from ntng_ray.errors import NtngError

DISTRIBUTED_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_single_process_env() -> None:
    """Describe a world of one process, for each variable a launcher has not set."""
    if all(name in os.environ for name in DISTRIBUTED_VARIABLES):
        return
    defaults = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def deepspeed_accelerator_name(device: torch.device) -> str:
    """DeepSpeed's name for the accelerator that runs on ``device``."""
    return "cpu" if device.type == "cpu" else device.type


def ensure_deepspeed_accelerator(device: torch.device) -> None:
    """Make DeepSpeed use ``device``'s accelerator: set it before it is chosen, or check it.

    On a CPU-only machine DeepSpeed guesses (with a warning); on a machine with a GPU it would
    pick CUDA even for a CPU run. Once chosen it cannot change in this process.
    """
    wanted = deepspeed_accelerator_name(device)
    accelerator_module = sys.modules.get("deepspeed.accelerator.real_accelerator")
    chosen = getattr(accelerator_module, "ds_accelerator", None)
    if chosen is None:
        os.environ["DS_ACCELERATOR"] = wanted
        return
    if chosen.device_name() != wanted:
        raise NtngError(
            f"DeepSpeed already runs on {chosen.device_name()!r} in this process and cannot "
            f"switch to {wanted!r}; run the {device.type} job in a fresh process"
        )
