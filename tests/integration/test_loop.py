"""The budgeted loop on tiny BERT and tiny T5: stops at the budget, and learns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from fast import SMALL_DATA

from ntng_ray.cli import main
from ntng_ray.config import load_config
from ntng_ray.rst.clock import step_cost
from ntng_ray.rst.table import load_table
from ntng_ray.train.run import pretrain

FAST = [
    *SMALL_DATA,
    "eval.points=[0.5]",
    "train.log_every=5",
]


@pytest.mark.parametrize(
    ("config", "budget", "min_drop"),
    [("bert-tiny-synthetic", 10, 1.5), ("t5-tiny-synthetic", 10, 3.0)],
)
def test_run_stops_within_one_step_of_budget_and_learns(
    tmp_path, config: str, budget: float, min_drop: float
) -> None:
    out = tmp_path / "run"
    cfg = load_config(config, [*FAST, f"budget.rst_seconds={budget}", f"output_dir={out}"])
    summary = pretrain(cfg)

    table = load_table(cfg.rst.table)
    per_step = sum(step_cost(table, cfg.preset.num_layers, cfg.train.microbatch_size).values())
    assert summary["rst_seconds"] <= budget
    assert budget - summary["rst_seconds"] < per_step
    assert summary["steps"] == int(budget / per_step + 1e-9)

    points = [entry["progress"] for entry in summary["validation"]]
    assert points == [0.0, 0.5, 1.0]
    first, last = summary["validation"][0]["loss"], summary["validation"][-1]["loss"]
    assert last < first - min_drop, (first, last)
    assert summary["final_train_eval_loss"] < summary["validation"][0]["train_eval_loss"] - min_drop
    data = summary["data"]
    assert data["train_tokens"] == data["train_sequences"] * data["row_length"]
    assert 0 < data["context_free_bound_nats"] <= data["unigram_entropy_nats"]

    assert json.loads((out / "summary.json").read_text()) == summary
    assert load_config(str(out / "config.yaml")) == cfg
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {line["event"] for line in lines} == {"train", "validation"}
    train_lines = [line for line in lines if line["event"] == "train"]
    assert all(line["rst_seconds"] <= budget for line in lines)
    # Every train.log_every steps, and the last step so a short run has a train loss too.
    logged = sorted({*range(5, summary["steps"] + 1, 5), summary["steps"]})
    assert [line["step"] for line in train_lines] == logged


def test_cli_run_writes_the_summary_fields(tmp_path, capsys) -> None:
    out = tmp_path / "cli-run"
    code = main(
        ["pretrain", "bert-tiny-synthetic", *FAST, "budget.rst_seconds=3", f"output_dir={out}"]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("budget_rst_seconds", "rst_seconds", "steps", "wall_seconds", "mlflow_run_id"):
        assert key in summary
    assert summary["budget_rst_seconds"] == 3
    assert summary["validation"][0]["progress"] == 0.0
    assert summary["validation"][-1]["progress"] == 1.0
    assert yaml.safe_load((out / "config.yaml").read_text())["budget"]["rst_seconds"] == 3
    assert "done:" in capsys.readouterr().out


def test_evaluation_is_deterministic_and_uses_all_layers(tmp_path) -> None:
    """Two evaluations of the same weights agree exactly, whatever layers training used."""
    from ntng_ray.train.evaluation import mean_token_loss
    from ntng_ray.train.loop import build_run
    from ntng_ray.train.plan import plan_run

    cfg = load_config("bert-tiny-synthetic", [*FAST, f"output_dir={tmp_path / 'x'}"])
    plan = plan_run(cfg)
    engine = build_run(plan).engine
    rows = plan.data.rows[plan.data.val_ids]
    collator = plan.data.collator()
    full = mean_token_loss(engine, rows, collator, 16, seed=1)
    engine.set_active_layers(1)
    assert mean_token_loss(engine, rows, collator, 16, seed=1) == full
    assert engine.active_layers() == (0,)


NO_STACK = """
import importlib.abc, importlib.util, sys
BLOCKED = {"ray", "deepspeed", "mlflow"}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Absent())
real_find_spec = importlib.util.find_spec
def find_spec(name, *args):
    return None if name.split(".")[0] in BLOCKED else real_find_spec(name, *args)
importlib.util.find_spec = find_spec
from ntng_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_loop_runs_where_ray_deepspeed_and_mlflow_are_absent(tmp_path) -> None:
    """The GPU machine has only torch and transformers: the in-process loop must not need more."""
    out = tmp_path / "bare"
    args = ["pretrain", "t5-tiny-synthetic", *FAST, "budget.rst_seconds=2",
            "tracking.enabled=false", f"output_dir={out}"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", NO_STACK, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] > 0


def test_compiled_blocks_train_alike_without_recompiling_as_layers_change(tmp_path) -> None:
    """train.compile: one compiled block serves every active-layer subset (layer dropping draws
    a new one each step); compile time is reported apart; the losses are the eager run's."""
    from torch._dynamo.utils import counters

    common = [*FAST, "budget.rst_seconds=2", "strategy.name=layer_dropping", "eval.points=[]"]
    common += ["train.microbatch_size=8", "tracking.enabled=false"]
    eager = pretrain(
        load_config("bert-crammed-tiny-synthetic", [*common, f"output_dir={tmp_path / 'e'}"])
    )
    graphs: list[int] = []
    cfg = load_config(
        "bert-crammed-tiny-synthetic",
        [*common, "train.compile=true", f"output_dir={tmp_path / 'c'}"],
    )
    from ntng_ray.train.loop import BudgetedRun

    train_step = BudgetedRun._train_step

    def counted(run: BudgetedRun, *args) -> None:  # graphs before and after each step
        graphs.append(counters["stats"]["unique_graphs"])
        train_step(run, *args)
        graphs.append(counters["stats"]["unique_graphs"])

    BudgetedRun._train_step = counted  # type: ignore[method-assign]
    try:
        compiled = pretrain(cfg)
    finally:
        BudgetedRun._train_step = train_step  # type: ignore[method-assign]
    assert compiled["compile_seconds"] > 0 and eager["compile_seconds"] == 0
    assert graphs[0] > 0 and set(graphs) == {graphs[0]}, graphs
    assert compiled["steps"] == eager["steps"] > 3
    assert compiled["final_validation_loss"] == pytest.approx(
        eager["final_validation_loss"], rel=1e-4
    )
