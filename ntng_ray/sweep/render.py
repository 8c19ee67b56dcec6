"""The sweep report rendered: Markdown for the terminal and GitHub, a self-contained HTML page,
PNG plots, written to a folder and published on the sweep's parent run (its files, and the
answer at a glance: a description with the summary table, per-strategy metrics and tags).

Works on the typed results of ``ntng_ray.sweep.results`` only; what a figure means (which runs,
which statistics) is decided there. The wording of the one-line answers follows the statistics:
a difference is called better or worse only when its interval excludes 0, and a result that is
not significant is said to be so (never read as "no gain").
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ntng_ray.atomic import write_text_atomic
from ntng_ray.sweep.results import (
    CONFIDENCE,
    PRIMARY,
    BudgetResult,
    MetricResult,
    StrategyResult,
    SweepReport,
)
from ntng_ray.sweep.stats import BETTER, INSUFFICIENT, NO_DIFFERENCE, WORSE, Summary, half_width
from ntng_ray.track import schema
from ntng_ray.track.mlflow_results import results_of

ARTIFACT_PATH = "report"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
NOTE_LIMIT = 8000  # MLflow's limit on a tag's value, the run description included
VERDICT_MARKS = {BETTER: "▲ ", WORSE: "▼ ", NO_DIFFERENCE: "= ", INSUFFICIENT: ""}
VERDICT_CLASSES = {BETTER: "better", WORSE: "worse", NO_DIFFERENCE: "same", INSUFFICIENT: "na"}
STATISTICS_NOTE = (
    "± is the sample standard deviation over seeds (ddof = 1). Δ is method - baseline with a "
    f"{CONFIDENCE:.0%} confidence interval from Welch's t (unequal variances, "
    "Welch-Satterthwaite degrees of freedom). The verdict is better (▲) or worse (▼) only when "
    "the interval excludes 0, else no significant difference (=), which is not evidence of no "
    "difference; losses: lower is better, downstream scores: higher is better. Fewer than 2 "
    "completed seeds on either side: no interval (insufficient seeds). Rows: the tuned baseline "
    "first, then by Δ validation loss. Steps, tokens and budget used (RST spent / budget) are "
    "means over the completed final runs; preparation RST is the strategy's work before "
    "training (n/a: none logged)."
)
BAND_NOTE = (
    "Validation-loss curves: mean over the completed final-phase seeds at each validation "
    f"point, with {CONFIDENCE:.0%} t-interval error bars for the mean and the min-max band over "
    "those seeds; the dashed line is the tuned baseline's final mean."
)
HTML_IMAGE_NOTE = "Plots are embedded in this page as base64 PNG."


# --- the UI address --------------------------------------------------------------------------


def ui_address(report: SweepReport, ui_url: str | None = None) -> str | None:
    """The MLflow UI's address: ``ui_url``, else the tracking URI when it is a server."""
    address = ui_url or report.tracking_uri
    if address and address.startswith(("http://", "https://")):
        return address.rstrip("/")
    return None


def run_url(ui: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    if not ui or not experiment_id or not run_id:
        return None
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def parent_url(report: SweepReport, ui_url: str | None = None) -> str | None:
    return run_url(ui_address(report, ui_url), report.parent_experiment_id, report.parent_run_id)


# --- numbers ---------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _decimals(values: Sequence[float]) -> int:
    """3 decimals, more where the largest magnitude is below 0.01 (two significant digits)."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if largest == 0.0 or largest >= 0.01:
        return 3
    return min(8, -math.floor(math.log10(largest)) + 1)


def _fixed(values: Sequence[float]) -> list[str]:
    places = _decimals(values)
    return [f"{v:.{places}f}" for v in values]


def rounded(text: str) -> str:
    """A logged setting for reading: floats to 3 significant digits, anything else as is."""
    try:
        int(text)
        return text
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.3g}" if math.isfinite(value) else text


def _count(summary: Summary) -> str:
    """A mean count, compact: 950, 12.3k, 4.56M, 1.2G."""
    if summary.n == 0 or math.isnan(summary.mean):
        return "n/a"
    value = summary.mean
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _share(summary: Summary) -> str:
    return "n/a" if summary.n == 0 or math.isnan(summary.mean) else f"{100 * summary.mean:.1f}%"


def _hours(seconds: float) -> str:
    return f" ({seconds / 3600:.2f} h)" if seconds >= 3600 else ""


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s{_hours(value)}"


# --- the one-line answer ---------------------------------------------------------------------


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def _magnitude(metric: MetricResult) -> str:
    """'by 0.013 [0.004, 0.022]': the size of a significant difference and its interval."""
    d = metric.difference
    assert d is not None
    low, high = sorted((abs(d.low), abs(d.high)))
    size, low_text, high_text = _fixed([abs(d.diff), low, high])
    return f"by {size} [{low_text}, {high_text}]"


def budget_answer(budget: BudgetResult) -> str:
    """The budget's question answered in one line, from the validation-loss statistics."""
    at = f"At {budget.label} RST s"
    if not budget.strategies:
        return f"{at} no strategy ran."
    baseline, methods = budget.strategies[0], budget.strategies[1:]
    if not methods:
        return f"{at} only the baseline ran: there is nothing to compare."
    base_n = baseline.metrics[PRIMARY].summary.n
    if base_n < 2:
        seeds = f"{base_n} completed seed{'s' if base_n != 1 else ''}"
        return (
            f"{at} the tuned baseline has {seeds} in validation loss: too few for a confidence "
            "interval, so no method can be compared with it (insufficient seeds)."
        )
    metric = {m.strategy: m.metrics[PRIMARY] for m in methods}
    by = {v: [n for n in metric if metric[n].verdict == v] for v in VERDICT_MARKS}
    short = by[INSUFFICIENT]
    short_text = (
        f"{_names(short)} {'has' if len(short) == 1 else 'have'} insufficient seeds (fewer than "
        "2 completed runs), so no interval"
        if short
        else ""
    )
    same = by[NO_DIFFERENCE]
    widths = [half_width(metric[n].difference) for n in same if metric[n].difference]
    (width,) = _fixed([max(widths, default=0.0)])
    level = f"{CONFIDENCE:.0%}"
    if not by[BETTER] and not by[WORSE]:
        if not same:
            return (
                f"{at} no method can be compared with the tuned baseline in validation loss: "
                f"{short_text}."
            )
        who = "no method" if not short else f"none of the {len(same)} methods with 2+ seeds"
        answer = (
            f"{at} {who} differs significantly from the tuned baseline in validation loss "
            f"({level} CIs within ±{width})"
        )
        return f"{answer}; {short_text}." if short else f"{answer}."
    parts = []
    for kind in (BETTER, WORSE):
        ranked = sorted(by[kind], key=lambda n: abs(metric[n].diff or 0.0), reverse=True)
        parts += [f"{n} is {kind} {_magnitude(metric[n])}" for n in ranked]
    if same:
        if len(same) == 1:
            parts.append(
                f"the other one ({same[0]}) does not differ significantly ({level} CI ±{width})"
            )
        else:
            parts.append(
                f"the other {len(same)} ({_names(same)}) do not differ significantly "
                f"({level} CIs within ±{width})"
            )
    if short_text:
        parts.append(short_text)
    return f"{at}, against the tuned baseline in validation loss ({level} CI): {'; '.join(parts)}."


# --- tables ----------------------------------------------------------------------------------


class Cell(NamedTuple):
    text: str
    link: str | None = None
    kind: str | None = None  # a verdict's class: better, worse, same, na, base
    numeric: bool = False


class Table(NamedTuple):
    headers: list[str]
    rows: list[list[Cell]]


class Block(NamedTuple):
    """One piece of the document, rendered alike to Markdown and HTML."""

    kind: str  # title, heading, text, answer, warning, table, image
    text: str = ""
    table: Table | None = None
    link: str | None = None


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


def _verdict(result: MetricResult) -> Cell:
    if result.verdict is None:
        return Cell("(baseline)", kind="base")
    return Cell(
        VERDICT_MARKS.get(result.verdict, "") + result.verdict,
        kind=VERDICT_CLASSES.get(result.verdict),
    )


def _seeds(result: StrategyResult) -> str:
    text = f"{result.seeds_completed} / {result.seeds_run}"
    missing = "; ".join(
        f"{outcome}: seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
        for outcome, seeds in result.not_completed.items()
    )
    return f"{text} ({missing})" if missing else text


def ordered(budget: BudgetResult) -> list[StrategyResult]:
    """The baseline first, then by Δ validation loss ascending (best first); strategies
    without a difference last, in the sweep's order."""
    if not budget.strategies:
        return []
    baseline, methods = budget.strategies[0], budget.strategies[1:]

    def key(item: tuple[int, StrategyResult]) -> tuple[bool, float, int]:
        position, result = item
        diff = result.metrics[PRIMARY].diff
        known = diff is not None and math.isfinite(diff)
        return (not known, diff if known else 0.0, position)

    return [baseline, *(r for _, r in sorted(enumerate(methods), key=key))]


def _strategy_cell(result: StrategyResult, ui: str | None) -> Cell:
    return Cell(result.strategy, run_url(ui, result.selected_experiment_id, result.selected_run_id))


def _metric_cells(result: StrategyResult, key: str) -> list[Cell]:
    metric = result.metrics[key]
    return [
        Cell(_mean_std(metric.summary, result.seeds_completed), numeric=True),
        Cell(_delta(metric), numeric=True),
        _verdict(metric),
    ]


def _metric_headers(label: str) -> list[str]:
    return [label, f"Δ {label} (95% CI)", "verdict"]


def results_table(budget: BudgetResult, ui: str | None = None) -> Table:
    """The main table: per strategy its seeds, validation loss with Δ and verdict, steps,
    tokens, budget used and preparation RST (the other metrics: ``other_metrics_table``)."""
    (primary,) = [s for s in budget.columns if s.key == PRIMARY]
    headers = [
        "strategy",
        "seeds done / run",
        *_metric_headers(primary.label),
        "steps",
        "tokens",
        "budget used",
        "preparation RST",
    ]
    rows = [
        [
            _strategy_cell(result, ui),
            Cell(_seeds(result)),
            *_metric_cells(result, PRIMARY),
            Cell(_count(result.steps), numeric=True),
            Cell(_count(result.tokens), numeric=True),
            Cell(_share(result.budget_share), numeric=True),
            Cell(_seconds(result.preparation_rst_seconds), numeric=True),
        ]
        for result in ordered(budget)
    ]
    return Table(headers, rows)


def other_metrics_table(budget: BudgetResult, ui: str | None = None) -> Table | None:
    """The final metrics besides validation loss (train-eval loss, downstream suite averages),
    in the main table's row order; None where there are none."""
    specs = [s for s in budget.columns if s.key != PRIMARY]
    if not specs:
        return None
    headers = ["strategy"] + [h for spec in specs for h in _metric_headers(spec.label)]
    rows = [
        [_strategy_cell(r, ui)] + [c for spec in specs for c in _metric_cells(r, spec.key)]
        for r in ordered(budget)
    ]
    return Table(headers, rows)


def best_configuration(result: StrategyResult) -> str:
    if result.selected_run_id is None:
        return "n/a"
    shown = ", ".join(f"{k}={rounded(v)}" for k, v in result.best_config.items())
    return shown or "(nothing tuned)"


def tuning_table(budget: BudgetResult, ui: str | None = None) -> Table:
    rows = [
        [
            _strategy_cell(r, ui),
            Cell(str(r.tuning_trials), numeric=True),
            Cell(_seconds(r.tuning_rst_seconds), numeric=True),
            Cell(
                r.selected_run_id or "none selected",
                run_url(ui, r.selected_experiment_id, r.selected_run_id),
            ),
            Cell(best_configuration(r)),
        ]
        for r in ordered(budget)
    ]
    headers = ["strategy", "tuning trials", "tuning RST", "selected trial", "best configuration"]
    return Table(headers, rows)


def plot_files(budget: BudgetResult) -> tuple[str, str]:
    return f"val_loss_vs_rst_{budget.label}.png", f"final_metrics_{budget.label}.png"


# --- the document ----------------------------------------------------------------------------


def _seeds_line(report: SweepReport) -> str:
    p = report.protocol
    finals = p.final_seeds
    final = (
        f"final phase seeds {', '.join(map(str, finals))}"
        if finals
        else f"final phase {p.seeds} seeds (which ones not logged)"
    )
    if p.train_seed is not None:
        tuning = f"tuning trials trained with seed {p.train_seed} (search.train_seed)"
    elif p.final_first_seed is not None:
        tuning = f"tuning trials trained with seed {p.final_first_seed} (the first final seed)"
    else:
        tuning = "tuning trials' training seed not logged"
    extra = [tuning, final]
    if p.search_seed is not None:
        extra.append(f"searcher seed {p.search_seed}")
    if p.split_seed is not None:
        extra.append(f"data split seed {p.split_seed}")
    return "Seeds: " + "; ".join(extra) + "."


def _header(report: SweepReport, ui: str | None) -> list[Block]:
    p = report.protocol
    return [
        Block("title", f"Sweep report: {report.sweep}"),
        Block(
            "text",
            f"Parent run {report.parent_run_id} (status {report.parent_status}).",
            link=run_url(ui, report.parent_experiment_id, report.parent_run_id),
        ),
        Block(
            "text",
            f"Protocol: searcher {p.searcher}, {p.trials} tuning trials per strategy and budget, "
            f"{p.seeds} seeds per strategy in the final phase, scheduler {p.scheduler}.",
        ),
        Block("text", _seeds_line(report)),
        *(Block("warning", w) for w in p.warnings()),
    ]


def _blocks(report: SweepReport, images: bool, ui: str | None) -> list[Block]:
    rst = _seconds(report.sweep_rst_seconds)
    if report.preparation_rst_seconds is not None:
        rst += f", of which strategies' preparation {_seconds(report.preparation_rst_seconds)}"
    blocks = [
        *_header(report, ui),
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
            Block("answer", budget_answer(budget)),
            Block("table", table=results_table(budget, ui)),
        ]
        others = other_metrics_table(budget, ui)
        if others is not None:
            blocks += [Block("text", "Other final metrics:"), Block("table", table=others)]
        blocks += [
            Block(
                "text",
                "Tuning: RST spent in the tuning phase, the selected trial and its configuration "
                "(the keys the strategy's search space tunes; floats to 3 significant digits).",
            ),
            Block("table", table=tuning_table(budget, ui)),
        ]
        if images:
            curve_file, finals_file = plot_files(budget)
            blocks += [
                Block("text", BAND_NOTE),
                Block("image", curve_file),
                Block("image", finals_file),
            ]
    return blocks


# --- Markdown --------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _md_cell(cell: Cell, links: bool) -> str:
    text = _md_escape(cell.text)
    if cell.kind in ("better", "worse"):
        text = f"**{text}**"
    return f"[{text}]({cell.link})" if links and cell.link else text


def _md_table(table: Table, links: bool = True) -> str:
    lines = [
        "| " + " | ".join(_md_escape(h) for h in table.headers) + " |",
        "|" + "---|" * len(table.headers),
        *("| " + " | ".join(_md_cell(c, links) for c in row) + " |" for row in table.rows),
    ]
    return "\n".join(lines)


def _md_text(block: Block, links: bool) -> str:
    return f"{block.text} ([MLflow]({block.link}))" if links and block.link else block.text


def _markdown(blocks: Sequence[Block], links: bool, heading: str = "##") -> str:
    rendered = {
        "title": lambda b: f"# {b.text}",
        "heading": lambda b: f"{heading} {b.text}",
        "text": lambda b: _md_text(b, links),
        "answer": lambda b: f"**{b.text}**",
        "warning": lambda b: f"> **Warning:** {b.text}",
        "table": lambda b: _md_table(b.table, links),
        "image": lambda b: f"![{b.text}]({b.text})",
    }
    return "\n\n".join(rendered[b.kind](b) for b in blocks) + "\n"


def render_markdown(
    report: SweepReport, images: bool = True, ui_url: str | None = None, links: bool = True
) -> str:
    """GitHub Markdown; ``images`` links the PNGs written beside it, ``links`` the runs in the
    MLflow UI where its address is known (both off for the terminal)."""
    return _markdown(_blocks(report, images, ui_address(report, ui_url)), links)


def parent_summary(report: SweepReport, ui_url: str | None = None) -> str:
    """The parent run's description (Markdown, ``mlflow.note.content``): the one-line answers
    and the main table per budget, no images; within MLflow's limit on a tag's value (without
    run links, else without tables, where the whole would not fit)."""
    for links, tables in ((True, True), (False, True), (False, False)):
        text = _parent_summary(report, ui_url, links, tables)
        if len(text) <= NOTE_LIMIT:
            return text
    return text[: NOTE_LIMIT - 40].rsplit("\n", 1)[0] + "\n\n(cut: see report/report.html)\n"


def _parent_summary(report: SweepReport, ui_url: str | None, links: bool, tables: bool) -> str:
    ui = ui_address(report, ui_url) if links else None
    p = report.protocol
    blocks = [
        Block(
            "text",
            f"**Sweep {report.sweep}**: {len(report.strategies) - 1} method(s) against the tuned "
            f"baseline ({report.strategies[0]}); final validation loss over {p.seeds} seeds, "
            f"Δ = method - baseline with a {CONFIDENCE:.0%} Welch's t interval; ▲ better, ▼ worse, "
            "= no significant difference. The full report: artifacts report/report.html.",
        ),
        Block("text", _seeds_line(report)),
        *(Block("warning", w) for w in p.warnings()),
    ]
    for budget in report.budgets:
        blocks += [
            Block("heading", f"Budget {budget.label} RST s{_hours(budget.budget_rst_seconds)}"),
            Block("answer", budget_answer(budget)),
        ]
        if tables:
            blocks.append(Block("table", table=results_table(budget, ui)))
    return _markdown(blocks, links=links, heading="###")


def parent_values(report: SweepReport) -> tuple[dict[str, float], dict[str, str]]:
    """Per method and budget: Δ validation loss as a parent metric, the verdict as a tag."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for budget in report.budgets:
        for result in budget.strategies[1:]:
            names = {"strategy": result.strategy, "budget": budget.label}
            metric = result.metrics[PRIMARY]
            if metric.diff is not None and math.isfinite(metric.diff):
                metrics[schema.METRIC_DELTA_VAL_LOSS_TEMPLATE.format(**names)] = metric.diff
            tags[schema.TAG_VERDICT_TEMPLATE.format(**names)] = metric.verdict or INSUFFICIENT
    return metrics, tags


# --- HTML ------------------------------------------------------------------------------------


def _html_link(text: str, link: str | None) -> str:
    if not link:
        return text
    return f'<a href="{html.escape(link)}" target="_blank" rel="noopener">{text}</a>'


def _html_cell(cell: Cell) -> str:
    classes = [f"v-{cell.kind}"] if cell.kind else []
    if cell.numeric:
        classes.append("num")
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attribute}>{_html_link(html.escape(cell.text), cell.link)}</td>"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table.rows)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _html_image(name: str, folder: Path) -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'


# Narrow enough for MLflow's artifact viewer (an iframe of limited width): small type, headers
# that wrap, and each table in its own horizontally scrollable box instead of widening the page.
HTML_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:.8em;max-width:60em}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}"
    ".scroll{overflow-x:auto;max-width:100%;margin:.6em 0}"
    "table{border-collapse:collapse;font-size:12px;table-layout:auto}"
    "th,td{border:1px solid #bbb;padding:.2em .4em;text-align:left;vertical-align:top}"
    "th{background:#eee;font-weight:600;white-space:normal;min-width:4em;max-width:9em}"
    "td{max-width:18em;overflow-wrap:break-word}td.num{text-align:right}"
    "td.v-better{background:#d4edda;color:#155724;font-weight:600}"
    "td.v-worse{background:#f8d7da;color:#721c24;font-weight:600}"
    "td.v-same{background:#e9ecef;color:#495057}td.v-na{color:#6c757d;font-style:italic}"
    ".answer{border-left:4px solid #0366d6;background:#f1f8ff;padding:.5em .7em;font-weight:600}"
    ".warning{background:#fff3cd;border:1px solid #e0b000;padding:.6em}"
    "p{max-width:100%;overflow-wrap:break-word}img{max-width:100%;height:auto}"
    "figure{margin:.5em 0}"
)


def render_html(report: SweepReport, image_folder: Path, ui_url: str | None = None) -> str:
    """A self-contained page: the PNGs in ``image_folder`` are embedded as base64."""
    rendered = {
        "title": lambda b: f"<h1>{html.escape(b.text)}</h1>",
        "heading": lambda b: f"<h2>{html.escape(b.text)}</h2>",
        "text": lambda b: f"<p>{_html_link(html.escape(b.text), b.link)}</p>",
        "answer": lambda b: f'<p class="answer">{html.escape(b.text)}</p>',
        "warning": lambda b: (
            f'<p class="warning"><strong>Warning:</strong> {html.escape(b.text)}</p>'
        ),
        "table": lambda b: _html_table(b.table),
        "image": lambda b: _html_image(b.text, image_folder),
    }
    blocks = _blocks(report, images=True, ui=ui_address(report, ui_url))
    body = "\n".join(rendered[b.kind](b) for b in blocks)
    title = html.escape(f"Sweep report: {report.sweep}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{HTML_STYLE}</style></head><body>\n{body}\n"
        f"<p><small>{html.escape(HTML_IMAGE_NOTE)}</small></p></body></html>\n"
    )


# --- writing and publishing ------------------------------------------------------------------


def write_report(report: SweepReport, out_dir: Path, ui_url: str | None = None) -> list[Path]:
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
    write_text_atomic(out_dir / REPORT_MD, render_markdown(report, ui_url=ui_url))
    write_text_atomic(out_dir / REPORT_HTML, render_html(report, out_dir, ui_url))
    return [out_dir / REPORT_MD, out_dir / REPORT_HTML, *written]


def publish_report(
    source: Any, report: SweepReport, out_dir: Path | None = None, ui_url: str | None = None
) -> list[Path]:
    """Write the report (into ``out_dir``, else a temporary folder), log every file on the
    parent run under ``report/`` and set the parent's answer at a glance: its description (the
    summary table), Δ validation loss per strategy and budget as metrics, verdicts as tags.
    Return the files written to ``out_dir`` (none without it).

    ``source`` is a results reader (``results.open_results``) or a tracking client it wraps.
    """
    results = results_of(source)
    if out_dir is not None:
        files = write_report(report, Path(out_dir), ui_url)
        results.log_files(report.parent_run_id, files, ARTIFACT_PATH)
    else:
        files = []
        with tempfile.TemporaryDirectory(prefix="ntng-report-") as temp:
            written = write_report(report, Path(temp), ui_url)
            results.log_files(report.parent_run_id, written, ARTIFACT_PATH)
    metrics, tags = parent_values(report)
    results.log_values(report.parent_run_id, metrics, tags)
    results.set_run_note(report.parent_run_id, parent_summary(report, ui_url))
    return files


def terminal_text(
    report: SweepReport, files: Sequence[Path] = (), ui_url: str | None = None
) -> str:
    """What a terminal shows: the Markdown without images or links, then where the report is
    (report.html when written to a folder, the parent run's artifacts, the UI address)."""
    lines = [render_markdown(report, images=False, links=False).rstrip("\n"), ""]
    pages = [Path(f) for f in files if Path(f).name == REPORT_HTML]
    lines += [f"report: {page.resolve()}" for page in pages]
    lines.append(
        f"MLflow: run {report.parent_run_id}, artifacts {ARTIFACT_PATH}/{REPORT_HTML} "
        f"(and {REPORT_MD}, the plots); its description holds the summary table"
    )
    url = parent_url(report, ui_url)
    if url:
        lines.append(f"MLflow UI: {url}")
    else:
        lines.append(
            f"MLflow UI: `ntng ui --tracking-uri {report.tracking_uri}` serves it, then open "
            f"run {report.parent_run_id}"
        )
    return "\n".join(lines) + "\n"
