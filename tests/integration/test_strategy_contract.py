"""The contract every registered strategy keeps, checked on tiny crammed BERT for each one.

A new strategy module is picked up here without listing it: it must stop within one step of
the budget, charge only the reference table's kinds, resume from a checkpoint to the same
result, and keep two data-parallel workers' clocks equal.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from fast import SMALL_DATA

from ntng_ray.config import RunConfig, load_config
from ntng_ray.engines.dist_env import free_port
from ntng_ray.preparation.strategy import preparation_for, prepare, prepared_setting
from ntng_ray.rst.clock import step_cost
from ntng_ray.strategies import strategy_class, strategy_names
from ntng_ray.train.loop import (
    ENGINE_FOLDER,
    RST_KINDS,
    BudgetedRun,
    CheckpointSink,
    Placement,
    build_run,
)
from ntng_ray.train.plan import plan_run
from ntng_ray.train.run import pretrain_in_process

# The package's own methods (a test module may register a toy strategy of its own).
STRATEGIES = [
    name
    for name in strategy_names()
    if strategy_class(name).listed and strategy_class(name).__module__.startswith("ntng_ray.")
]
CONFIG = "bert-crammed-tiny-synthetic"  # the study's BERT architecture (HF BERT: test_loop)
BUDGET = 1.5
QUICK = [
    *SMALL_DATA,
    "eval.points=[0.5]",
    "train.microbatch_size=8",
    "train.threads=1",
    "tracking.enabled=false",
    f"budget.rst_seconds={BUDGET}",
]
# Settings that make a strategy's own work happen inside the tiny budget.
OWN = {"sophia": ["strategy.k=3"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models on a busy 2-core machine: one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each strategy's preparation (RHO-loss's irreducible-loss model), run once, as settings."""
    settings: dict[str, list[str]] = {}
    for name in STRATEGIES:
        cfg = load_config(CONFIG, [*QUICK, f"strategy.name={name}", *OWN.get(name, [])])
        preparation = preparation_for(cfg)
        if preparation is None:
            settings[name] = []
            continue
        folder = tmp_path_factory.mktemp(f"prepared-{name}") / "prepared"
        prepare(cfg, folder)
        settings[name] = [f"{k}={v}" for k, v in prepared_setting(preparation, folder).items()]
    return settings


def contract_config(name: str, prepared: dict[str, list[str]], *overrides: str) -> RunConfig:
    settings = [f"strategy.name={name}", *OWN.get(name, []), *prepared[name]]
    return load_config(CONFIG, [*QUICK, *settings, *overrides])


def most_expensive_step(run: BudgetedRun) -> float:
    """An upper bound on the step the loop refused: full depth, the strategy's optimizer entry,
    and the most the strategy said that step could add (summed over the workers)."""
    cfg, depth = run.cfg, run.cfg.preset.num_layers
    cost = step_cost(run.plan.table, depth, run.sequences_per_step, run.strategy.table_optimizer())
    extra = run.strategy.max_extra_cost(depth)
    return (
        sum(cost.values())
        + run.placement.world_size * sum(extra.values())
        + 1e-9 * cfg.budget.seconds
    )


def checkpoint_into(folder: Path) -> CheckpointSink:
    """A checkpoint sink that keeps a copy of the (one) checkpoint the run writes."""

    def sink(source: Path, progress: dict[str, Any]) -> None:
        shutil.copytree(source, folder)

    return sink


def finish(
    cfg: RunConfig, placement: Placement | None = None, checkpoints: Path | None = None
) -> tuple[dict[str, Any], float]:
    """Run ``cfg`` through the loop in this process: its summary and the bound on its last step."""
    sink = None if checkpoints is None else checkpoint_into(checkpoints)
    plan = plan_run(cfg, check_output_dir=False)
    run = build_run(plan, placement or Placement(), checkpoint_sink=sink)
    summary = run.run()
    return summary, most_expensive_step(run)


def uninterrupted(name: str, prepared: dict[str, list[str]], folder: Path) -> tuple:
    """The strategy's whole run, checkpointed half way: summary, bound on its last step, and
    the checkpoint."""
    cfg = contract_config(
        name, prepared, "backend.checkpoint_points=[0.5]", f"output_dir={folder / 'whole'}"
    )
    summary, most = finish(cfg, checkpoints=folder / "checkpoint")
    return summary, most, folder / "checkpoint"


def resumed_from(name: str, prepared: dict[str, list[str]], checkpoint: Path, folder: Path):
    """A fresh run of the same config restored from ``checkpoint``, as a sweep trial resumes."""
    cfg = contract_config(
        name, prepared, "backend.checkpoint_points=[0.5]", f"output_dir={folder / 'resumed'}"
    )
    return pretrain_in_process(cfg, restore_from=checkpoint)


WORKERS = 2


def contract_worker(rank: int, port: int, configs: dict[str, dict[str, Any]], out: Path) -> None:
    """One of two gloo data-parallel workers: each strategy's loop to the budget, one after
    another (one spawn for all: starting processes costs more than these runs); each clock to
    a file, or the error that stopped it."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORKERS)}
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", rank=rank, world_size=WORKERS, timeout=timeout)
    try:
        for name, config in configs.items():
            try:
                summary, most = finish(RunConfig.model_validate(config), Placement(rank, WORKERS))
                record = {key: summary[key] for key in ("steps", "rst_seconds", "rst_breakdown")}
                record["most"] = most
            except Exception:
                record = {"error": traceback.format_exc()}
            (out / f"{name}-rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers(
    request: pytest.FixtureRequest,
    prepared: dict[str, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Two workers run every strategy this session selected; their records' folder."""
    wanted = {
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_strategy_contract"
    }
    out = tmp_path_factory.mktemp("two-workers")
    configs = {
        name: contract_config(
            name, prepared, f"backend.workers={WORKERS}", f"output_dir={out / name}"
        ).model_dump(mode="json")
        for name in STRATEGIES
        if name in wanted
    }
    torch.multiprocessing.spawn(contract_worker, args=(free_port(), configs, out), nprocs=WORKERS)
    return out


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_contract(
    name: str, prepared: dict[str, list[str]], two_workers: Path, tmp_path: Path
) -> None:
    whole, most, checkpoint = uninterrupted(name, prepared, tmp_path)

    # It stops within one step of the budget (the step it refused could have cost `most`).
    assert whole["steps"] > 0
    assert whole["rst_seconds"] <= BUDGET
    assert BUDGET - whole["rst_seconds"] <= most, ("stopped early", whole["rst_seconds"], most)

    # It charges only the reference table's kinds, and the clock's total is their sum.
    assert set(whole["rst_breakdown"]) <= RST_KINDS, whole["rst_breakdown"]
    assert sum(whole["rst_breakdown"].values()) == pytest.approx(whole["rst_seconds"])

    # It resumes from its checkpoint to the uninterrupted run's result.
    assert (checkpoint / ENGINE_FOLDER).is_dir(), "no checkpoint was written half way"
    resumed = resumed_from(name, prepared, checkpoint, tmp_path)
    assert 0 < resumed["restored_from_step"] < whole["steps"]
    for key in ("steps", "rst_seconds", "rst_breakdown", "tokens"):
        assert resumed[key] == whole[key], key
    for key in ("final_validation_loss", "final_train_eval_loss"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key

    # Two data-parallel workers' clocks agree, and stop within one step of the budget.
    records = [
        json.loads((two_workers / f"{name}-rank{r}.json").read_text()) for r in range(WORKERS)
    ]
    errors = [r["error"] for r in records if "error" in r]
    assert not errors, "\n".join(errors)
    first = records[0]
    assert first["steps"] > 0
    for key in ("rst_seconds", "rst_breakdown", "steps"):
        assert all(r[key] == first[key] for r in records), (key, records)
    assert 0 <= BUDGET - first["rst_seconds"] <= first["most"], records
    assert set(first["rst_breakdown"]) <= RST_KINDS
