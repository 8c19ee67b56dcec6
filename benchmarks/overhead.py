"""Step-time overhead of the project's loop against a bare torch loop, for tiny BERT on CPU.

(a) a bare torch loop: the same model, pre-collated batches, AdamW, nothing else;
(b) the project's loop in one process (torch engine), MLflow on;
(c) the same under Ray Train with one worker holding both cores, DeepSpeed and torch engines,
    MLflow on.

Steady-state step time is the wall time per step over the second half of each run's training
steps, logging and MLflow included (the runs evaluate only at start and end); start-up
(process, Ray, worker group, DeepSpeed init) is reported separately. Run by hand:

    python -m benchmarks.overhead [--budget 40] [--out overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ntng_ray.config import load_config
from ntng_ray.engines.device import pick_device
from ntng_ray.models.builders import TokenIds, build_model
from ntng_ray.train.plan import plan_run
from ntng_ray.train.run import pretrain

COMMON = ["tracking.enabled=true", "eval.points=[]", "train.log_every=5"]
# The worker holds both cores, so it runs as many torch threads as (a) and (b) do.
ONE_RAY_WORKER = ["backend.launcher=ray", "backend.cpus_per_worker=2"]


def bare_torch_step_seconds(steps: int) -> float:
    """Median step time of a plain loop over the project's data: the floor for (b) and (c)."""
    cfg = load_config("bert-tiny-synthetic", [f"output_dir={tempfile.mkdtemp()}/unused"])
    plan = plan_run(cfg)
    pick_device("cpu")
    tok = plan.data.tokenizer
    model = build_model(cfg.preset, cfg.vocab_size, TokenIds(tok.pad_id, tok.eos_id), cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collator = plan.data.collator()
    generator = torch.Generator().manual_seed(0)
    size = cfg.train.microbatch_size
    batches = [
        collator(
            torch.from_numpy(plan.data.rows[plan.data.train_ids[i : i + size]]).long(), generator
        )
        for i in range(0, size * 8, size)
    ]
    timings = []
    model.train()
    for step in range(steps):
        started = time.perf_counter()
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[steps // 2 :])


def steady_step_seconds(metrics_path: Path) -> float:
    """Train-wall seconds per step over the second half of a run's train records."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    half = train[len(train) // 2 :]
    walls = [r["tokens"] / r["tokens_per_s"] for r in half]
    return (walls[-1] - walls[0]) / (half[-1]["step"] - half[0]["step"])


def project_run(slug: str, label: str, overrides: list[str], budget: float, root: Path) -> dict:
    out = root / slug
    cfg = load_config(
        "bert-tiny-synthetic",
        [*COMMON, *overrides, f"budget.rst_seconds={budget}", f"output_dir={out}"],
    )
    started = time.perf_counter()
    summary = pretrain(cfg)
    total = time.perf_counter() - started
    step = steady_step_seconds(out / "metrics.jsonl")
    return {
        "label": label,
        "steady_step_seconds": step,
        "steps": summary["steps"],
        "wall_seconds": total,
        "startup_seconds": total - summary["train_wall_seconds"] - summary["eval_wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=40.0, help="RST seconds per run (40)")
    parser.add_argument("--bare-steps", type=int, default=120)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="ntng-overhead-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    bare = bare_torch_step_seconds(args.bare_steps)
    rows = [{"label": "(a) bare torch loop", "steady_step_seconds": bare, "startup_seconds": 0.0}]
    for slug, label, overrides in [
        ("b", "(b) ntng loop, 1 process, torch engine", ["backend.engine=torch"]),
        (
            "c-ds",
            "(c) Ray Train 1 worker, deepspeed",
            [*ONE_RAY_WORKER, "backend.engine=deepspeed"],
        ),
        (
            "c-torch",
            "(c) Ray Train 1 worker, torch",
            [*ONE_RAY_WORKER, "backend.engine=torch"],
        ),
    ]:
        rows.append(project_run(slug, label, overrides, args.budget, root))
    print(f"{'run':<48} {'step s':>8} {'x (a)':>7} {'start-up s':>11}")
    for row in rows:
        ratio = row["steady_step_seconds"] / bare
        row["ratio_to_bare"] = ratio
        print(
            f"{row['label']:<48} {row['steady_step_seconds']:8.4f} {ratio:7.3f} "
            f"{row['startup_seconds']:11.1f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
