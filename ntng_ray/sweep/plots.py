"""The report's PNG plots, drawn with matplotlib's Agg canvas directly (no pyplot), so plotting
needs no display and keeps no global figure state in a long-running sweep driver."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ntng_ray.atomic import write_atomic
from ntng_ray.sweep.stats import CONFIDENCE, mean_half_width
from ntng_ray.track import schema

if TYPE_CHECKING:
    from ntng_ray.sweep.results import BudgetResult

DPI = 110


def _color(position: int) -> str:
    """The same colour for a strategy in every plot: its position in the sweep's list."""
    return f"C{position % 10}"


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    write_atomic(path, lambda temp: figure.savefig(temp, format="png", dpi=DPI))


def _baseline_line(axes: Any, value: float | None, label: str | None = None) -> None:
    """The tuned baseline's final mean as a dashed horizontal line."""
    if value is not None and math.isfinite(value):
        axes.axhline(value, color="0.3", linestyle="--", linewidth=1, label=label)


def _baseline_mean(budget: BudgetResult, key: str) -> float | None:
    if not budget.strategies:
        return None
    summary = budget.strategies[0].metrics[key].summary
    return summary.mean if summary.n else None


def _zero_nan(values: tuple[float, ...]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]


def plot_val_loss_vs_rst(budget: BudgetResult, path: Path) -> None:
    """Validation loss against RST per strategy: mean over seeds with 95% t-interval error bars,
    the min-max band over seeds, and the baseline's final mean as a dashed line."""
    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.add_subplot()
    drawn = False
    for position, result in enumerate(budget.strategies):
        curve, color = result.curve, _color(position)
        if not curve.rst:
            continue
        drawn = True
        errors = _zero_nan(curve.ci) if len(curve.ci) == len(curve.rst) else None
        axes.errorbar(
            curve.rst,
            curve.mean,
            yerr=errors,
            marker="o",
            markersize=3,
            capsize=3,
            color=color,
            label=result.strategy,
        )
        axes.fill_between(curve.rst, curve.low, curve.high, color=color, alpha=0.12)
    _baseline_line(
        axes, _baseline_mean(budget, schema.METRIC_FINAL_VALIDATION_LOSS), "baseline final mean"
    )
    axes.set_xlabel("RST (s)")
    axes.set_ylabel("validation loss")
    axes.set_title(
        f"Budget {budget.label} RST s: mean over final-phase seeds, bars = 95% CI, band = min-max",
        fontsize=10,
    )
    axes.grid(alpha=0.3)
    if drawn:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no completed final runs", ha="center", transform=axes.transAxes)
    _save(figure, path)


def plot_final_metrics(budget: BudgetResult, path: Path) -> None:
    """Each final metric per strategy: mean with 95% t-interval error bars over seeds, and the
    baseline's mean as a dashed line."""
    columns = budget.columns
    figure = Figure(figsize=(max(4.0, 3.2 * len(columns)), 4.2))
    names = [r.strategy for r in budget.strategies]
    for index, spec in enumerate(columns, start=1):
        axes = figure.add_subplot(1, len(columns), index)
        for position, result in enumerate(budget.strategies):
            metric = result.metrics[spec.key]
            if metric.summary.n == 0:
                continue
            error = mean_half_width(metric.values, CONFIDENCE) if metric.summary.n > 1 else 0.0
            axes.errorbar(
                [position],
                [metric.summary.mean],
                yerr=[error],
                fmt="o",
                capsize=4,
                color=_color(position),
            )
        _baseline_line(axes, _baseline_mean(budget, spec.key))
        axes.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        axes.set_xlim(-0.5, len(names) - 0.5)
        better = "higher" if spec.higher_is_better else "lower"
        axes.set_title(f"{spec.label} ({better} is better)", fontsize=9)
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle(
        f"Budget {budget.label} RST s: mean over seeds, bars = 95% CI, dashed = baseline",
        fontsize=10,
    )
    _save(figure, path)
