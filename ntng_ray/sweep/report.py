"""The sweep comparison report: read a sweep's parent and child runs from MLflow, compare every
strategy with the tuned baseline per budget, and write Markdown, HTML and PNG plots.

It reads MLflow only (never the sweep's process memory), so a report can be rebuilt at any time,
from any machine that sees the store, for a finished, resumed or still running sweep.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ntng_ray.atomic import write_text_atomic
from ntng_ray.errors import NtngError
from ntng_ray.sweep.stats import Difference, Summary, summarize, verdict, welch_difference
from ntng_ray.track.mlflow_run import open_client, sqlite_path

TAG_SWEEP = "ntng.sweep"
TAG_ROLE = "ntng.role"
TAG_PARENT = "mlflow.parentRunId"
COMPLETED = "completed"
CONFIDENCE = 0.95
ARTIFACT_PATH = "report"
RUN_ID = re.compile(r"[0-9a-f]{32}")
# Per-trial bookkeeping that differs between trials without being a tuned setting.
UNTUNED_KEYS = ("name", "output_dir", "seed")
UNTUNED_PREFIXES = ("tracking.", "backend.")
# Shown as the best configuration when no tuned setting differs between a strategy's trials.
DEFAULT_CONFIG_KEYS = ("optimizer.lr",)
DEFAULT_CONFIG_PREFIXES = ("schedule.", "strategy.")
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

T = TypeVar("T")


class MetricSpec(NamedTuple):
    key: str
    label: str
    higher_is_better: bool
    suite: str | None = None  # a downstream suite's average, read from the downstream runs


LOSSES = (
    MetricSpec("final_train_eval_loss", "train-eval loss", higher_is_better=False),
    MetricSpec("final_validation_loss", "validation loss", higher_is_better=False),
)


@dataclass(frozen=True)
class Protocol:
    searcher: str
    trials: int
    seeds: int
    scheduler: str
    allow_unequal_tuning: bool
    trials_by_strategy: dict[str, int]

    def warnings(self) -> list[str]:
        """What makes this sweep depart from the fair protocol, said where readers see it."""
        found = []
        if self.allow_unequal_tuning:
            counts = ", ".join(f"{k} {v}" for k, v in self.trials_by_strategy.items())
            found.append(
                "Unequal tuning was allowed: strategies did not all get the same number of "
                f"tuning trials ({counts}), so the comparison is not the fair protocol."
            )
        if self.scheduler != "none":
            found.append(
                f"Early-stopping scheduler {self.scheduler!r} was used in tuning: trials were "
                "stopped on early losses, which can mislead the selection."
            )
        return found


@dataclass(frozen=True)
class MetricResult:
    values: tuple[float, ...]
    summary: Summary
    diff: float | None  # method - baseline means; None for the baseline or a side without values
    difference: Difference | None  # the interval; None for the baseline or < 2 seeds a side
    verdict: str | None  # None for the baseline


@dataclass(frozen=True)
class Curve:
    """Validation loss against RST: means over seeds at each validation point, min-max band."""

    rst: tuple[float, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


@dataclass(frozen=True)
class StrategyResult:
    strategy: str
    seeds_run: int
    seeds_completed: int
    not_completed: dict[str, list[str]]  # outcome -> seeds
    metrics: dict[str, MetricResult]
    tuning_trials: int
    tuning_rst_seconds: float
    selected_run_id: str | None
    best_config: dict[str, str]
    curve: Curve


@dataclass(frozen=True)
class BudgetResult:
    budget_rst_seconds: float
    columns: tuple[MetricSpec, ...]
    strategies: list[StrategyResult]

    @property
    def label(self) -> str:
        return budget_label(self.budget_rst_seconds)


@dataclass(frozen=True)
class SweepReport:
    sweep: str
    parent_run_id: str
    parent_status: str
    protocol: Protocol
    strategies: tuple[str, ...]
    sweep_rst_seconds: float | None
    rho_il_rst_seconds: float | None
    budgets: list[BudgetResult]


def budget_label(seconds: float) -> str:
    """A budget as file names and headings show it: seconds without trailing zeros (20, 21600)."""
    return f"{seconds:f}".rstrip("0").rstrip(".")


# --- finding runs ----------------------------------------------------------------------------


def open_report_client(tracking_uri: str) -> MlflowClient:
    """A client on an existing store: a report never creates an empty SQLite database."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise NtngError(
            f"no MLflow store at {db} (tracking URI {tracking_uri}); pass --tracking-uri or set "
            "MLFLOW_TRACKING_URI to the store the sweep logged to"
        )
    return open_client(tracking_uri)


def _all_pages(fetch: Callable[[str | None], list[T]]) -> list[T]:
    items: list[T] = []
    token = None
    while True:
        page = fetch(token)
        items.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return items


def _search_runs(client: MlflowClient, filter_string: str) -> list[Run]:
    """Runs matching ``filter_string`` in every experiment: a sweep's runs may be anywhere."""
    experiment_ids = [
        e.experiment_id for e in _all_pages(lambda t: client.search_experiments(page_token=t))
    ]
    if not experiment_ids:
        return []
    return _all_pages(
        lambda t: client.search_runs(experiment_ids, filter_string=filter_string, page_token=t)
    )


def find_parent_run(client: MlflowClient, sweep_name_or_run_id: str) -> str:
    """The parent run id of a sweep: the id itself, or the most recent parent with that name."""
    wanted = sweep_name_or_run_id
    if RUN_ID.fullmatch(wanted):
        try:
            run = client.get_run(wanted)
        except MlflowException:
            run = None
        if run is not None:
            role = run.data.tags.get(TAG_ROLE)
            if role != "sweep":
                raise NtngError(
                    f"MLflow run {wanted} is not a sweep's parent run (its tag {TAG_ROLE} is "
                    f"{role!r}, a parent has 'sweep'); pass the sweep name or its parent run id"
                )
            return wanted
    parents = _search_runs(client, f"tags.`{TAG_ROLE}` = 'sweep'")
    named = [r for r in parents if r.data.tags.get(TAG_SWEEP) == wanted]
    if not named:
        known = sorted({r.data.tags.get(TAG_SWEEP, "?") for r in parents})
        raise NtngError(
            f"no sweep named {wanted!r} (nor a sweep parent run with that id) in the MLflow "
            f"store {client.tracking_uri}; sweeps there: {', '.join(known) or 'none'}"
        )
    return max(named, key=lambda r: r.info.start_time).info.run_id


# --- reading the parent ----------------------------------------------------------------------


def _tag(run: Run, key: str) -> str:
    value = run.data.tags.get(key)
    if value is None:
        raise NtngError(
            f"sweep parent run {run.info.run_id} lacks the tag {key}; the report needs the tags "
            "`ntng sweep` writes"
        )
    return value


def _json_tag(run: Run, key: str, kind: type) -> Any:
    text = _tag(run, key)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, kind):
        raise NtngError(
            f"sweep parent run {run.info.run_id}: tag {key} = {text!r} is not a JSON "
            f"{kind.__name__}"
        )
    return value


def _int_tag(run: Run, key: str) -> int:
    text = _tag(run, key)
    try:
        return int(text)
    except ValueError:
        raise NtngError(
            f"sweep parent run {run.info.run_id}: tag {key} = {text!r} is not an integer"
        ) from None


def _protocol(parent: Run) -> Protocol:
    return Protocol(
        searcher=_tag(parent, "ntng.protocol.searcher"),
        trials=_int_tag(parent, "ntng.protocol.trials"),
        seeds=_int_tag(parent, "ntng.protocol.seeds"),
        scheduler=_tag(parent, "ntng.protocol.scheduler"),
        allow_unequal_tuning=_tag(parent, "ntng.protocol.allow_unequal_tuning").lower() == "true",
        trials_by_strategy={
            str(k): int(v)
            for k, v in _json_tag(parent, "ntng.protocol.trials_by_strategy", dict).items()
        },
    )


# --- reading the children --------------------------------------------------------------------


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (2**63, seed)


def _completed(run: Run) -> bool:
    return run.data.tags.get("ntng.outcome") == COMPLETED


def _outcome(run: Run) -> str:
    """A trial's outcome tag, or its MLflow status (running, killed) while it has none."""
    return run.data.tags.get("ntng.outcome") or run.info.status.lower()


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """Metric values by step; where a step was logged twice the later value wins."""
    metrics = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in metrics}


def _validation_points(client: MlflowClient, run_id: str) -> list[tuple[float, float, float]]:
    """(validation point, RST, validation loss) at each validation of a run."""
    losses = _history(client, run_id, "val_loss")
    rst = _history(client, run_id, "rst_seconds")
    progress = _history(client, run_id, "val_progress_point")
    return [
        (round(progress.get(step, index), 6), rst[step], loss)
        for index, (step, loss) in enumerate(sorted(losses.items()))
        if step in rst
    ]


def _curve(client: MlflowClient, runs: Sequence[Run]) -> Curve:
    grouped: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        for point, rst, loss in _validation_points(client, run.info.run_id):
            grouped[point].append((rst, loss))
    rows = []
    for point in sorted(grouped):
        rst_values = [rst for rst, _ in grouped[point]]
        losses = [loss for _, loss in grouped[point]]
        rows.append((summarize(rst_values).mean, summarize(losses).mean, min(losses), max(losses)))
    rst, mean, low, high = (
        (tuple(column) for column in zip(*rows, strict=True)) if rows else ((),) * 4
    )
    return Curve(rst, mean, low, high)


def _downstream(runs: Iterable[Run]) -> dict[str, dict[str, float]]:
    """Suite average per pretraining run id and suite, from the latest finished downstream run."""
    latest: dict[tuple[str, str], Run] = {}
    for run in runs:
        tags = run.data.tags
        pretrain, suite = tags.get("ntng.pretrain_run_id"), tags.get("ntng.suite")
        if not pretrain or not suite or run.info.status != "FINISHED":
            continue
        if f"{suite}_average" not in run.data.metrics:
            continue
        kept = latest.get((pretrain, suite))
        if kept is None or run.info.start_time > kept.info.start_time:
            latest[(pretrain, suite)] = run
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for (pretrain, suite), run in latest.items():
        scores[pretrain][suite] = run.data.metrics[f"{suite}_average"]
    return scores


def _is_tuned_key(key: str) -> bool:
    return key not in UNTUNED_KEYS and not key.startswith(UNTUNED_PREFIXES)


def _best_config(tune_runs: Sequence[Run]) -> tuple[str | None, dict[str, str]]:
    """The selected trial and its settings that differ between the strategy's tuning trials.

    When none differ (one trial, or a grid of one), the learning rate, schedule and strategy
    settings are shown instead, so the reader still sees what was run.
    """
    selected = [r for r in tune_runs if r.data.tags.get("ntng.selected", "").lower() == "true"]
    if not selected:
        return None, {}
    best = max(selected, key=lambda r: r.info.start_time)
    params = best.data.params
    differing = {
        key
        for key in params
        if _is_tuned_key(key) and len({r.data.params.get(key) for r in tune_runs}) > 1
    }
    shown = differing or {
        k for k in params if k in DEFAULT_CONFIG_KEYS or k.startswith(DEFAULT_CONFIG_PREFIXES)
    }
    return best.info.run_id, {key: params[key] for key in sorted(shown)}


def _metric_values(
    finals: Sequence[Run], spec: MetricSpec, scores: Mapping[str, Mapping[str, float]]
) -> tuple[float, ...]:
    values = []
    for run in finals:
        if spec.suite is None:
            value = run.data.metrics.get(spec.key)
        else:
            value = scores.get(run.info.run_id, {}).get(spec.suite)
        if value is not None and math.isfinite(value):
            values.append(value)
    return tuple(values)


def _compare(
    values: tuple[float, ...], baseline: tuple[float, ...] | None, spec: MetricSpec
) -> MetricResult:
    summary = summarize(values)
    if baseline is None:
        return MetricResult(values, summary, None, None, None)
    base = summarize(baseline)
    diff = summary.mean - base.mean if summary.n and base.n else None
    difference = welch_difference(values, baseline, CONFIDENCE)
    return MetricResult(
        values, summary, diff, difference, verdict(difference, spec.higher_is_better)
    )


def _strategy_result(
    client: MlflowClient,
    strategy: str,
    runs: Sequence[Run],
    columns: Sequence[MetricSpec],
    scores: Mapping[str, Mapping[str, float]],
    baseline: StrategyResult | None,
) -> StrategyResult:
    finals = sorted(
        (r for r in runs if r.data.tags.get("ntng.phase") == "final"),
        key=lambda r: _seed_order(r.data.tags.get("ntng.seed", "")),
    )
    tunes = [r for r in runs if r.data.tags.get("ntng.phase") == "tune"]
    completed = [r for r in finals if _completed(r)]
    not_completed: dict[str, list[str]] = defaultdict(list)
    for run in finals:
        if not _completed(run):
            not_completed[_outcome(run)].append(run.data.tags.get("ntng.seed", "?"))
    metrics = {
        spec.key: _compare(
            _metric_values(completed, spec, scores),
            baseline.metrics[spec.key].values if baseline else None,
            spec,
        )
        for spec in columns
    }
    selected, config = _best_config(tunes)
    return StrategyResult(
        strategy=strategy,
        seeds_run=len(finals),
        seeds_completed=len(completed),
        not_completed={k: sorted(v, key=_seed_order) for k, v in sorted(not_completed.items())},
        metrics=metrics,
        tuning_trials=len(tunes),
        tuning_rst_seconds=math.fsum(r.data.metrics.get("rst_seconds", 0.0) for r in tunes),
        selected_run_id=selected,
        best_config=config,
        curve=_curve(client, completed),
    )


def _budget_result(
    client: MlflowClient,
    budget: float,
    strategies: Sequence[str],
    runs: Sequence[Run],
    scores: Mapping[str, Mapping[str, float]],
) -> BudgetResult:
    by_strategy: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_strategy[run.data.tags.get("ntng.strategy", "")].append(run)
    final_ids = {
        r.info.run_id for r in runs if r.data.tags.get("ntng.phase") == "final" and _completed(r)
    }
    suites = sorted({suite for run_id in final_ids for suite in scores.get(run_id, {})})
    columns = LOSSES + tuple(MetricSpec(f"{s}_average", f"{s} average", True, s) for s in suites)
    results: list[StrategyResult] = []
    for strategy in strategies:
        baseline = results[0] if results else None
        results.append(
            _strategy_result(client, strategy, by_strategy[strategy], columns, scores, baseline)
        )
    return BudgetResult(budget, columns, results)


def build_report(client: MlflowClient, parent_run_id: str) -> SweepReport:
    """Everything the report shows, read from the parent run and its child runs in MLflow."""
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise NtngError(
            f"sweep parent run {parent_run_id!r} is not in the MLflow store {client.tracking_uri}"
        ) from None
    strategies = tuple(str(s) for s in _json_tag(parent, "ntng.strategies", list))
    if not strategies:
        raise NtngError(f"sweep parent run {parent_run_id}: tag ntng.strategies is empty")
    budgets = _json_tag(parent, "ntng.budgets_rst_seconds", list)
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in budgets):
        raise NtngError(
            f"sweep parent run {parent_run_id}: tag ntng.budgets_rst_seconds = {budgets!r} is "
            "not a list of numbers"
        )
    children = _search_runs(client, f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    scores = _downstream(r for r in children if r.data.tags.get("ntng.phase") == "downstream")
    trials_by_budget: dict[float | None, list[Run]] = defaultdict(list)
    for run in children:
        if run.data.tags.get("ntng.phase") in ("tune", "final"):
            budget = _float_or_none(run.data.tags.get("ntng.budget_rst_seconds"))
            trials_by_budget[budget].append(run)
    return SweepReport(
        sweep=_tag(parent, TAG_SWEEP),
        parent_run_id=parent.info.run_id,
        parent_status=parent.info.status,
        protocol=_protocol(parent),
        strategies=strategies,
        sweep_rst_seconds=parent.data.metrics.get("sweep_rst_seconds"),
        rho_il_rst_seconds=parent.data.metrics.get("rho_il_rst_seconds"),
        budgets=[
            _budget_result(client, float(b), strategies, trials_by_budget[float(b)], scores)
            for b in sorted(budgets)
        ],
    )


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
            r.selected_run_id or "none selected",
            ", ".join(f"{k}={v}" for k, v in r.best_config.items()) or "n/a",
        ]
        for r in budget.strategies
    ]
    headers = ["strategy", "tuning trials", "tuning RST", "selected trial", "best configuration"]
    return Table(headers, rows)


def plot_files(budget: BudgetResult) -> tuple[str, str]:
    return f"val_loss_vs_rst_{budget.label}.png", f"final_metrics_{budget.label}.png"


def _blocks(report: SweepReport, images: bool) -> list[Block]:
    p = report.protocol
    rst = _seconds(report.sweep_rst_seconds)
    if report.rho_il_rst_seconds is not None:
        rst += f", of which RHO-loss IL-model training {_seconds(report.rho_il_rst_seconds)}"
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
            Block("text", "Tuning: RST spent in the tuning phase and the selected configuration."),
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


def publish_report(
    client: MlflowClient, report: SweepReport, out_dir: Path | None = None
) -> list[Path]:
    """Write the report (into ``out_dir``, else a temporary folder) and log every file on the
    parent run under ``report/``; return the files written to ``out_dir`` (none without it)."""
    if out_dir is not None:
        files = write_report(report, Path(out_dir))
        _log_files(client, report.parent_run_id, files)
        return files
    with tempfile.TemporaryDirectory(prefix="ntng-report-") as temp:
        _log_files(client, report.parent_run_id, write_report(report, Path(temp)))
    return []


def _log_files(client: MlflowClient, run_id: str, files: Sequence[Path]) -> None:
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_PATH)
