"""Run a strategy's preparation: its pretraining run, then the step that stores what the
strategy reads, into one folder that is whole or absent.

The strategy describes the work (``Strategy.preparation``); this module runs it without knowing
the method, for ``ntng prepare`` / ``ntng rho-prepare`` and for a sweep's preparation stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ntng_ray.atomic import hidden_sibling, replace_folder
from ntng_ray.config import RunConfig, load_config
from ntng_ray.errors import NtngError
from ntng_ray.strategies import Preparation, resolve_strategy
from ntng_ray.train.outputs import resolve_output_dir
from ntng_ray.train.run import pretrain

PREPARED_SETTING_PREFIX = "strategy."


def preparation_for(cfg: RunConfig) -> Preparation | None:
    """The preparation ``cfg``'s strategy needs before it trains; None when it needs none."""
    strategy = resolve_strategy(cfg)
    kind = strategy.cls.preparation
    return None if kind is None else kind(cfg, strategy.params)


def prepared_setting(preparation: type[Preparation] | Preparation, folder: Path) -> dict[str, str]:
    """The setting that hands the prepared folder to the strategy (``strategy.il_dir=…``)."""
    return {f"{PREPARED_SETTING_PREFIX}{preparation.folder_setting}": str(folder)}


def required_preparation(cfg: RunConfig) -> Preparation:
    """The preparation of ``cfg``'s strategy; refused for a strategy that needs none."""
    preparation = preparation_for(cfg)
    if preparation is None:
        raise NtngError(
            f"strategy.name = {cfg.strategy.name!r} needs no preparation; nothing to prepare"
        )
    return preparation


def run_preparation(preparation: Preparation, output_dir: Path) -> dict[str, Any]:
    """Run ``preparation`` into ``output_dir``; returns its metadata.

    The work happens in a hidden folder beside ``output_dir`` that is renamed at the end, so the
    folder is whole or absent; a non-empty ``output_dir`` is refused unless the run config says
    overwrite.
    """
    cfg = preparation.cfg
    target = resolve_output_dir(cfg.model_copy(update={"output_dir": str(output_dir)}))
    staging = hidden_sibling(target, "tmp")
    staging.mkdir(parents=True)
    try:
        run_cfg = preparation.run_config(staging)
        summary = pretrain(run_cfg)
        metadata = preparation.finish(run_cfg, summary, staging)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata


def prepare(cfg: RunConfig, output_dir: Path) -> dict[str, Any]:
    """Run the preparation of ``cfg``'s strategy into ``output_dir``; returns its metadata."""
    return run_preparation(required_preparation(cfg), output_dir)


def run_prepare_cli(
    config: str, overrides: list[str], command: str = "prepare", strategy: str | None = None
) -> int:
    """``ntng prepare <config> output_dir=DIR [key=value ...]``: the strategy's prepared folder.

    ``strategy`` fixes the strategy a command prepares for (``ntng rho-prepare``: rho_loss).
    """
    fixed = [] if strategy is None else [f"strategy.name={strategy}"]
    cfg = load_config(config, [*fixed, *overrides])
    if strategy is not None and cfg.strategy.name != strategy:
        raise NtngError(
            f"strategy.name = {cfg.strategy.name!r}: {command} prepares for {strategy}; "
            f"leave strategy.name unset or set it to {strategy}"
        )
    if cfg.output_dir is None:
        raise NtngError(f"output_dir: {command} needs output_dir=DIR, the folder to write")
    preparation = required_preparation(cfg)
    folder = Path(cfg.output_dir)
    metadata = run_preparation(preparation, folder)
    print(preparation.describe(metadata, folder))
    setting = " ".join(f"{k}={v}" for k, v in prepared_setting(preparation, folder).items())
    print(f"train with: strategy.name={cfg.strategy.name} {setting}")
    return 0
