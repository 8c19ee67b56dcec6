"""The sweep's progress table: one line per trial with its RST progress, printed as results come.

Tune's own output is turned off (its default columns know nothing of RST); this callback shows
what matters here: which strategy and phase, how far through its budget, the latest losses.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from ntng_ray.track import schema

PRINT_EVERY_S = 15.0


class ProgressTable(Callback):
    """Prints the stage's trials at most every ``every_s`` seconds and when a trial ends."""

    def __init__(self, title: str, every_s: float = PRINT_EVERY_S, out: TextIO | None = None):
        self.title = title
        self.every_s = every_s
        self.out = out
        self.started = time.monotonic()
        self.last_print = 0.0
        self.rows: dict[str, dict[str, Any]] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "RUNNING"

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        row = self._row(trial)
        row["rst"] = result.get(schema.RESULT_RST_PROGRESS, row.get("rst"))
        for key in (
            schema.RESULT_VAL_LOSS,
            schema.RESULT_TRAIN_EVAL_LOSS,
            schema.RESULT_TRAIN_LOSS,
        ):
            if key in result:
                row[key] = result[key]
        if time.monotonic() - self.last_print >= self.every_s:
            self.print_table()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "DONE"
        self.print_table()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "ERROR"
        self.print_table()

    def _row(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            spec = trial.config.get("trial", {})
            self.rows[trial.trial_id] = {
                "strategy": spec.get("strategy", "?"),
                "seed": spec.get("seed", "?"),
                "status": "PENDING",
            }
        return self.rows[trial.trial_id]

    def print_table(self) -> None:
        self.last_print = time.monotonic()
        elapsed = time.monotonic() - self.started
        lines = [f"== {self.title}  ({elapsed:.0f} s)"]
        lines.append(
            f"   {'trial':<12} {'strategy':<20} {'seed':>4} {'status':<8} {'RST':>6} "
            f"{'val_loss':>9} {'train-eval':>10}"
        )
        for trial_id, row in self.rows.items():
            rst = row.get("rst")
            lines.append(
                f"   {trial_id:<12} {row['strategy']:<20} {row['seed']!s:>4} {row['status']:<8} "
                f"{_percent(rst):>6} {_number(row.get(schema.RESULT_VAL_LOSS)):>9} "
                f"{_number(row.get(schema.RESULT_TRAIN_EVAL_LOSS)):>10}"
            )
        print("\n".join(lines), file=self.out or sys.stdout, flush=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if not math.isfinite(value) else f"{value:.4f}"
