"""The sweep report rendered: Markdown for the terminal and GitHub, a self-contained HTML page,
PNG plots, written to a folder and published on the sweep's parent run.

Works on the typed results of ``ntng_ray.sweep.results`` only; what a figure means (which runs,
which statistics) is decided there.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from ntng_ray.atomic import write_text_atomic
from ntng_ray.sweep.results import (
    CONFIDENCE,
    BudgetResult,
    MetricResult,
    StrategyResult,
    SweepReport,
)
from ntng_ray.sweep.stats import Summary
from ntng_ray.track.mlflow_results import results_of

ARTIFACT_PATH = "report"
STATISTICS_NOTE = (
    "± is the sample standard deviation over seeds (ddof = 1). Δ is method - baseline with a "
    f"{CONFIDENCE:.0%} confidence interval from Welch's t (unequal variances, "
    "Welch-Satterthwaite degrees of freedom). The verdict is better or worse only when the "
    "interval excludes 0; losses: lower is better, downstream scores: higher is better. "
    "Fewer than 2 completed seeds on either side: no interval (insufficient seeds)."
)
BAND_NOTE = (
    "Validation-loss curves: mean over the completed final-phase seeds at each validation "
    "point, with the min-max band over those seeds."
)
HTML_IMAGE_NOTE = "Plots are embedded in this page as base64 PNG."


# --- rendering -------------------------------------------------------------------------------


class Table(NamedTuple):
    headers: list[str]
    rows: list[list[str]]


class Block(NamedTuple):
    """One piece of the document, rendered alike to Markdown and HTML."""

    kind: str  # title, heading, text, warning, table, image
    text: str = ""
    table: Table | None = None


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _mean_std(summary: Summary, seeds_completed: int) -> str:
    """Mean ± std; n is shown where it is not simply the completed seeds (or is one)."""
    if summary.n == 0:
        return "n/a"
    text = _number(summary.mean) if summary.n == 1 else f"{summary.mean:.4f} ± {summary.std:.4f}"
    shown = summary.n == 1 or summary.n != seeds_completed
    return f"{text} (n={summary.n})" if shown else text


def _delta(result: MetricResult) -> str:
    if result.verdict is None:
        return "—"
    if result.difference is None:
        return f"{_number(result.diff)} [CI n/a]"
    d = result.difference
    return f"{d.diff:.4f} [{d.low:.4f}, {d.high:.4f}]"


def _seeds(result: StrategyResult) -> str:
    text = f"{result.seeds_completed} / {result.seeds_run}"
    missing = "; ".join(
        f"{outcome}: seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
        for outcome, seeds in result.not_completed.items()
    )
    return f"{text} ({missing})" if missing else text


def _hours(seconds: float) -> str:
    return f" ({seconds / 3600:.2f} h)" if seconds >= 3600 else ""


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s{_hours(value)}"


def _results_table(budget: BudgetResult) -> Table:
    headers = ["strategy", "seeds completed / run"]
    for spec in budget.columns:
        headers += [spec.label, f"Δ {spec.label} (95% CI)", "verdict"]
    rows = []
    for result in budget.strategies:
        row = [result.strategy, _seeds(result)]
        for spec in budget.columns:
            metric = result.metrics[spec.key]
            row += [
                _mean_std(metric.summary, result.seeds_completed),
                _delta(metric),
                metric.verdict or "(baseline)",
            ]
        rows.append(row)
    return Table(headers, rows)


def _tuning_table(budget: BudgetResult) -> Table:
    rows = [
        [
            r.strategy,
            str(r.tuning_trials),
            _seconds(r.tuning_rst_seconds),
            _seconds(r.preparation_rst_seconds),
            r.selected_run_id or "none selected",
            ", ".join(f"{k}={v}" for k, v in r.best_config.items()) or "n/a",
        ]
        for r in budget.strategies
    ]
    headers = [
        "strategy",
        "tuning trials",
        "tuning RST",
        "preparation RST",
        "selected trial",
        "best configuration",
    ]
    return Table(headers, rows)


def plot_files(budget: BudgetResult) -> tuple[str, str]:
    return f"val_loss_vs_rst_{budget.label}.png", f"final_metrics_{budget.label}.png"


def _blocks(report: SweepReport, images: bool) -> list[Block]:
    p = report.protocol
    rst = _seconds(report.sweep_rst_seconds)
    if report.preparation_rst_seconds is not None:
        rst += f", of which strategies' preparation {_seconds(report.preparation_rst_seconds)}"
    blocks = [
        Block("title", f"Sweep report: {report.sweep}"),
        Block("text", f"Parent run {report.parent_run_id} (status {report.parent_status})."),
        Block(
            "text",
            f"Protocol: searcher {p.searcher}, {p.trials} tuning trials per strategy and budget, "
            f"{p.seeds} seeds per strategy in the final phase, scheduler {p.scheduler}.",
        ),
        *(Block("warning", w) for w in p.warnings()),
        Block(
            "text",
            f"Strategies: {', '.join(report.strategies)} (baseline: {report.strategies[0]}).",
        ),
        Block("text", f"Total RST of the sweep (tuning and final trials): {rst}."),
        Block("text", STATISTICS_NOTE),
    ]
    for budget in report.budgets:
        blocks += [
            Block("heading", f"Budget {budget.label} RST s{_hours(budget.budget_rst_seconds)}"),
            Block("table", table=_results_table(budget)),
            Block(
                "text",
                "Tuning: RST spent in the tuning phase, RST spent by the strategy's preparation "
                "(n/a: none logged), and the selected configuration.",
            ),
            Block("table", table=_tuning_table(budget)),
        ]
        if images:
            curve_file, finals_file = plot_files(budget)
            blocks += [
                Block("text", BAND_NOTE),
                Block("image", curve_file),
                Block("image", finals_file),
            ]
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
        "|" + "---|" * len(table.headers),
        *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows),
    ]
    return "\n".join(lines)


def render_markdown(report: SweepReport, images: bool = True) -> str:
    """GitHub Markdown; ``images`` links the PNGs written beside it (off for the terminal)."""
    rendered = {
        "title": lambda b: f"# {b.text}",
        "heading": lambda b: f"## {b.text}",
        "text": lambda b: b.text,
        "warning": lambda b: f"> **Warning:** {b.text}",
        "table": lambda b: _md_table(b.table),
        "image": lambda b: f"![{b.text}]({b.text})",
    }
    return "\n\n".join(rendered[b.kind](b) for b in _blocks(report, images)) + "\n"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(name: str, folder: Path) -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'


HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:90em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #999;padding:.3em .6em;text-align:left}"
    "th{background:#eee}.warning{background:#fff3cd;border:1px solid #e0b000;padding:.6em}"
    "img{max-width:100%}"
)


def render_html(report: SweepReport, image_folder: Path) -> str:
    """A self-contained page: the PNGs in ``image_folder`` are embedded as base64."""
    rendered = {
        "title": lambda b: f"<h1>{html.escape(b.text)}</h1>",
        "heading": lambda b: f"<h2>{html.escape(b.text)}</h2>",
        "text": lambda b: f"<p>{html.escape(b.text)}</p>",
        "warning": lambda b: (
            f'<p class="warning"><strong>Warning:</strong> {html.escape(b.text)}</p>'
        ),
        "table": lambda b: _html_table(b.table),
        "image": lambda b: _html_image(b.text, image_folder),
    }
    body = "\n".join(rendered[b.kind](b) for b in _blocks(report, images=True))
    title = html.escape(f"Sweep report: {report.sweep}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n{body}\n"
        f"<p><small>{html.escape(HTML_IMAGE_NOTE)}</small></p></body></html>\n"
    )


# --- writing and publishing ------------------------------------------------------------------


def write_report(report: SweepReport, out_dir: Path) -> list[Path]:
    """Write the PNGs, report.md and report.html into ``out_dir``; return their paths."""
    from ntng_ray.sweep.plots import plot_final_metrics, plot_val_loss_vs_rst

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for budget in report.budgets:
        curve_file, finals_file = plot_files(budget)
        plot_val_loss_vs_rst(budget, out_dir / curve_file)
        plot_final_metrics(budget, out_dir / finals_file)
        written += [out_dir / curve_file, out_dir / finals_file]
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    write_text_atomic(out_dir / "report.html", render_html(report, out_dir))
    return [out_dir / "report.md", out_dir / "report.html", *written]


def publish_report(source: Any, report: SweepReport, out_dir: Path | None = None) -> list[Path]:
    """Write the report (into ``out_dir``, else a temporary folder) and log every file on the
    parent run under ``report/``; return the files written to ``out_dir`` (none without it).

    ``source`` is a results reader (``results.open_results``) or a tracking client it wraps.
    """
    results = results_of(source)
    if out_dir is not None:
        files = write_report(report, Path(out_dir))
        results.log_files(report.parent_run_id, files, ARTIFACT_PATH)
        return files
    with tempfile.TemporaryDirectory(prefix="ntng-report-") as temp:
        files = write_report(report, Path(temp))
        results.log_files(report.parent_run_id, files, ARTIFACT_PATH)
    return []
