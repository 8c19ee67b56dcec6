"""What a run checks and builds before it writes anything: table, output folder, data, engine."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntng_ray import __version__
from ntng_ray.config import RunConfig
from ntng_ray.data.prepare import PreparedData, prepare_data
from ntng_ray.errors import NtngError
from ntng_ray.models.builders import TokenIds, build_model
from ntng_ray.rst.table import ReferenceTable, TableReport, resolve_table
from ntng_ray.strategies import check_strategy_supported
from ntng_ray.train.engine import Engine
from ntng_ray.train.outputs import resolve_output_dir


@dataclass
class RunPlan:
    """Everything checked and built before the first output file is written."""

    cfg: RunConfig
    table: ReferenceTable
    table_report: TableReport
    data: PreparedData
    output_dir: Path


def plan_run(cfg: RunConfig, check_output_dir: bool = True) -> RunPlan:
    """Check the table, the output folder and the data (building caches only), writing no output.

    Workers of a launched run skip the output-folder check: their driver made the folder.
    """
    check_strategy_supported(cfg)
    table, report = resolve_table(cfg.rst.table, cfg.model.preset, cfg.rst.allow_invalid_table)
    output_dir = resolve_output_dir(cfg) if check_output_dir else Path(cfg.output_dir or ".")
    data = prepare_data(cfg)
    return RunPlan(cfg, table, report, data, output_dir)


def prepare_device(choice: str) -> torch.device:
    """The device to train on; on CPU, denormal floats are flushed to zero.

    Denormals (tiny gradients of a fresh model) make CPU kernels several times slower, and by
    an amount that depends on the weights, which would make step times, and so calibrated
    reference tables, depend on training state rather than on the work done.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise NtngError("train.device = 'cuda' but torch sees no CUDA device; use cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def build_engine(
    plan: RunPlan,
    world_size: int = 1,
    device: torch.device | None = None,
    optimizer_for: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> Engine:
    """The model at full depth with its optimizer, wrapped in the configured engine.

    ``optimizer_for`` builds the optimizer over the model (a strategy's choice); default:
    the configured one.
    """
    from ntng_ray.train.engine_factory import build_engine as wrap_in_engine

    cfg = plan.cfg
    tok = plan.data.tokenizer
    ids = TokenIds(pad_id=tok.pad_id, eos_id=tok.eos_id)
    model = build_model(cfg.preset, cfg.vocab_size, ids, cfg.seed)
    device = device or prepare_device(cfg.train.device)
    model.to(device)
    optimizer = optimizer_for(model) if optimizer_for is not None else None
    return wrap_in_engine(cfg, model, device, world_size, optimizer=optimizer)


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
