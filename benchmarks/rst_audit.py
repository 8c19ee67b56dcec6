"""RST audit: does the clock charge what the work really takes on the machine it was calibrated on?

Calibrates this machine for a preset (``ntng_ray.preparation.calibrate.calibrate`` on the
device, precision and microbatch the runs use), then runs every listed strategy on that preset
charged against that table, and compares the RST the clock charged with the wall time the
training work took (the loop's train wall: drawing and collating examples, scoring,
forward/backward, optimizer and Hessian steps; evaluation and logging excluded).
``rst_per_train_wall`` (RST / train wall) near 1 means the strategy's work is charged honestly;
below 1, the work took longer than it was charged. Targets: within ±10% on a noisy CPU machine,
±3% on a GPU.

The default is tiny BERT on this machine's default device in fp32 with microbatch 32. Runs use
the preset's family config (``bert-tiny-synthetic`` with ``model.preset`` set, or
``t5-tiny-synthetic``) on the built-in synthetic corpus, each in a fresh process as users run
them. Calibration times the torch engine without torch.compile: with ``--compile`` the ratios
show what compilation saves against an eager table, and on a GPU ``--engine torch`` keeps the
runs on the engine the table timed (``auto`` picks DeepSpeed there). Run by hand:

    python -m benchmarks.rst_audit [--budget 30] [--out audit.json]
    python -m benchmarks.rst_audit --preset bert-crammed --device cuda --precision bf16 \
        --microbatch 128 --engine torch --budget 120 --out audit-bert-crammed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ntng_ray.config import RunConfig, load_config
from ntng_ray.config.presets import PRESETS
from ntng_ray.preparation.calibrate import calibrate
from ntng_ray.preparation.strategy import preparation_for, prepare, prepared_setting
from ntng_ray.rst.table import validate_table, write_table
from ntng_ray.strategies import strategy_class, strategy_names

COMMON = ["tracking.enabled=false", "eval.points=[]", "train.log_every=1000"]
FAMILY_CONFIG = {"bert": "bert-tiny-synthetic", "t5": "t5-tiny-synthetic"}
TOLERANCE = {"cpu": 0.10, "cuda": 0.03}


def run_in_fresh_process(cfg: RunConfig) -> dict:
    """One run per process, as users run them: runs sharing a process slowed down one by one."""
    path = Path(cfg.output_dir) / "requested.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(cfg.to_yaml())
    command = [sys.executable, "-m", "ntng_ray.cli", "pretrain", str(path), "overwrite=true"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        done.check_returncode()
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def run_settings(args: argparse.Namespace) -> list[str]:
    """Overrides every run shares: the preset and how it trains."""
    settings = [
        f"model.preset={args.preset}",
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        f"train.microbatch_size={args.microbatch}",
        f"train.compile={'true' if args.compile else 'false'}",
    ]
    if args.engine:
        settings.append(f"backend.engine={args.engine}")
    return settings


def audit(args: argparse.Namespace, root: Path) -> list[dict]:
    table_path = root / "audit-table.json"
    table = calibrate(
        args.preset,
        microbatch=args.microbatch,
        repeats=7,
        warmup=2,
        device=args.device,
        precision=args.precision,
        name=f"audit-{args.preset}",
    )
    print(validate_table(table).summary())
    write_table(table, table_path)
    source = FAMILY_CONFIG[PRESETS[args.preset].family]
    base = [
        *COMMON,
        *run_settings(args),
        f"rst.table={table_path}",
        f"budget.rst_seconds={args.budget}",
    ]
    rows = []
    for name in (n for n in strategy_names() if strategy_class(n).listed):
        extra = []
        preparation = preparation_for(load_config(source, [*base, f"strategy.name={name}"]))
        if preparation is not None:
            prepared = root / f"{name}-prepared"
            prepare(preparation.cfg, prepared)
            extra = [f"{k}={v}" for k, v in prepared_setting(preparation, prepared).items()]
        cfg = load_config(
            source, [*base, f"strategy.name={name}", *extra, f"output_dir={root / name}"]
        )
        summary = run_in_fresh_process(cfg)
        rst, wall = summary["rst_seconds"], summary["train_wall_seconds"]
        rows.append(
            {
                "strategy": name,
                "rst_seconds": rst,
                "train_wall_seconds": wall,
                "rst_per_train_wall": rst / wall,
                "wall_over_rst": wall / rst,
                "steps": summary["steps"],
                "rst_breakdown": summary["rst_breakdown"],
            }
        )
        print(f"{name:<20} RST {rst:7.2f}  train wall {wall:7.2f}  RST/wall {rst / wall:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="RST seconds per run (30)")
    parser.add_argument("--preset", default="bert-tiny", help="model preset (bert-tiny)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--microbatch", type=int, default=32, help="sequences per microbatch (32)")
    parser.add_argument("--compile", action="store_true", help="runs torch.compile their blocks")
    parser.add_argument(
        "--engine", choices=["auto", "torch", "deepspeed"], help="the runs' backend.engine"
    )
    parser.add_argument("--out", type=Path, help="also write the settings and rows as JSON here")
    args = parser.parse_args()
    if args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r}: unknown; allowed: {', '.join(PRESETS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    if args.microbatch < 1:
        parser.error(f"--microbatch = {args.microbatch}: must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tolerance = TOLERANCE[device]
    rows = audit(args, Path(tempfile.mkdtemp(prefix="ntng-audit-")))
    print(f"\n{'strategy':<20} {'RST / wall':>10}  within ±{tolerance:.0%}")
    for row in rows:
        ok = abs(row["rst_per_train_wall"] - 1.0) <= tolerance
        print(f"{row['strategy']:<20} {row['rst_per_train_wall']:10.3f}  {'yes' if ok else 'NO'}")
    if args.out:
        result: dict[str, Any] = {
            "preset": args.preset,
            "device": device,
            "precision": args.precision,
            "microbatch": args.microbatch,
            "compile": args.compile,
            "engine": args.engine or "auto",
            "budget_rst_seconds": args.budget,
            "tolerance": tolerance,
            "strategies": rows,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
