"""RST audit: does the clock charge what the work really takes on the machine it was calibrated on?

Calibrates this machine for tiny BERT, then runs every strategy on tiny BERT charged against
that table, and compares the RST the clock charged with the wall time the training work took
(the loop's train wall: drawing and collating examples, scoring, forward/backward, optimizer
and Hessian steps; evaluation and logging excluded). A ratio near 1 means the strategy's work
is charged honestly. Targets: within ±10% on a noisy CPU machine, ±3% on a GPU. Run by hand:

    python -m benchmarks.rst_audit [--budget 30] [--out audit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ntng_ray.config import RunConfig, load_config
from ntng_ray.preparation.calibrate import calibrate
from ntng_ray.preparation.strategy import preparation_for, prepare, prepared_setting
from ntng_ray.rst.table import validate_table, write_table
from ntng_ray.strategies import strategy_class, strategy_names

COMMON = ["tracking.enabled=false", "eval.points=[]", "train.log_every=1000"]


def run_in_fresh_process(cfg: RunConfig) -> dict:
    """One run per process, as users run them: runs sharing a process slowed down one by one."""
    path = Path(cfg.output_dir) / "requested.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(cfg.to_yaml())
    command = [sys.executable, "-m", "ntng_ray.cli", "pretrain", str(path), "overwrite=true"]
    subprocess.run(command, check=True, capture_output=True)
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def audit(budget: float, root: Path) -> list[dict]:
    table_path = root / "audit-table.json"
    table = calibrate("bert-tiny", microbatch=32, repeats=7, warmup=2, name="audit-bert-tiny")
    print(validate_table(table).summary())
    write_table(table, table_path)
    base = [*COMMON, f"rst.table={table_path}", f"budget.rst_seconds={budget}"]
    rows = []
    for name in (n for n in strategy_names() if strategy_class(n).listed):
        extra = []
        preparation = preparation_for(
            load_config("bert-tiny-synthetic", [*base, f"strategy.name={name}"])
        )
        if preparation is not None:
            prepared = root / f"{name}-prepared"
            prepare(preparation.cfg, prepared)
            extra = [f"{k}={v}" for k, v in prepared_setting(preparation, prepared).items()]
        cfg = load_config(
            "bert-tiny-synthetic",
            [*base, f"strategy.name={name}", *extra, f"output_dir={root / name}"],
        )
        summary = run_in_fresh_process(cfg)
        ratio = summary["train_wall_seconds"] / summary["rst_seconds"]
        rows.append(
            {
                "strategy": name,
                "rst_seconds": summary["rst_seconds"],
                "train_wall_seconds": summary["train_wall_seconds"],
                "wall_over_rst": ratio,
                "rst_breakdown": summary["rst_breakdown"],
            }
        )
        print(f"{name:<20} RST {summary['rst_seconds']:7.2f}  wall/RST {ratio:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="RST seconds per run (30)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    rows = audit(args.budget, Path(tempfile.mkdtemp(prefix="ntng-audit-")))
    print(f"\n{'strategy':<20} {'wall / RST':>10}  within ±10%")
    for row in rows:
        ok = abs(row["wall_over_rst"] - 1.0) <= 0.10
        print(f"{row['strategy']:<20} {row['wall_over_rst']:10.3f}  {'yes' if ok else 'NO'}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
