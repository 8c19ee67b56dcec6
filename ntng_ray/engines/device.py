"""The device a run or a fine-tuning job computes on, and the environment recorded with it."""

from __future__ import annotations

import platform
from typing import Any

import torch

from ntng_ray import __version__
from ntng_ray.errors import NtngError


def pick_device(choice: str, field: str = "train.device") -> torch.device:
    """The device ``choice`` (auto, cpu or cuda) names; on CPU, denormal floats are flushed.

    Denormals (tiny gradients of a fresh model) make CPU kernels several times slower, and by
    an amount that depends on the weights, which would make step times, and so calibrated
    reference tables, depend on training state rather than on the work done. ``field`` is the
    setting's name for the error message.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise NtngError(f"{field} = 'cuda' but torch sees no CUDA device; allowed: auto, cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, recorded with every run."""
    import transformers

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = platform.processor() or platform.machine()
    return {
        "ntng_ray": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "hardware": hardware,
        "torch_threads": torch.get_num_threads(),
    }
