"""What a run checks and builds before it writes anything: table, output folder, data, engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ntng_ray.config import RunConfig
from ntng_ray.data.prepare import PreparedData, prepare_data
from ntng_ray.engines.device import pick_device
from ntng_ray.engines.engine import Engine
from ntng_ray.engines.factory import build_engine as wrap_in_engine
from ntng_ray.engines.factory import engine_kind, planned_device
from ntng_ray.models.builders import TokenIds, build_model
from ntng_ray.rst.table import ReferenceTable, TableReport, resolve_table
from ntng_ray.strategies import ResolvedStrategy, check_strategy_supported, resolve_strategy
from ntng_ray.train.outputs import resolve_output_dir


@dataclass
class RunPlan:
    """Everything checked and built before the first output file is written."""

    cfg: RunConfig
    strategy: ResolvedStrategy
    table: ReferenceTable
    table_report: TableReport
    data: PreparedData
    output_dir: Path


def plan_run(cfg: RunConfig, check_output_dir: bool = True) -> RunPlan:
    """Check the table, the output folder and the data (building caches only), writing no output.

    Workers of a launched run skip the output-folder check: their driver made the folder. The
    strategy's parameters are validated here, once, and its facts checked against the engine
    the run will get.
    """
    strategy = checked_strategy(cfg)
    table, report = resolve_table(cfg.rst.table, cfg.model.preset, cfg.rst.allow_invalid_table)
    output_dir = resolve_output_dir(cfg) if check_output_dir else Path(cfg.output_dir or ".")
    data = prepare_data(cfg)
    return RunPlan(cfg, strategy, table, report, data, output_dir)


def checked_strategy(cfg: RunConfig) -> ResolvedStrategy:
    """The run's strategy with validated parameters, its facts checked against the engine the
    run will get (NtngError naming the setting otherwise)."""
    strategy = resolve_strategy(cfg)
    check_strategy_supported(cfg, strategy, engine_kind(cfg, planned_device(cfg)))
    return strategy


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
    cfg = plan.cfg
    tok = plan.data.tokenizer
    ids = TokenIds(pad_id=tok.pad_id, eos_id=tok.eos_id)
    model = build_model(cfg.preset, cfg.vocab_size, ids, cfg.seed)
    device = device or pick_device(cfg.train.device)
    model.to(device)
    optimizer = optimizer_for(model) if optimizer_for is not None else None
    changes_depth = plan.strategy.cls.changes_depth
    return wrap_in_engine(cfg, model, device, world_size, optimizer, changes_depth)
