"""A sweep's results, read from its tracked runs: the parent run and its child runs turned into
typed results (per budget, per strategy: seeds, final metrics compared with the baseline,
steps, tokens and budget share, tuning cost, the selected configuration restricted to the keys
the strategy's search space tunes, the validation-loss curve with its confidence intervals).

It reads the store only (never the sweep's process memory), so results can be rebuilt at any
time, from any machine that sees the store, for a finished, resumed or still running sweep.
The store is reached through ``ntng_ray.track.mlflow_results``; rendering is ``render``'s job.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml

from ntng_ray.errors import NtngError
from ntng_ray.sweep.plan import budget_label
from ntng_ray.sweep.stats import (
    CONFIDENCE,
    Difference,
    Summary,
    mean_half_width,
    summarize,
    verdict,
    welch_difference,
)
from ntng_ray.track import schema
from ntng_ray.track.mlflow_results import MlflowResults, RunRecord, open_results, results_of

__all__ = [
    "BudgetResult",
    "Curve",
    "MetricResult",
    "MetricSpec",
    "Protocol",
    "StrategyResult",
    "SweepReport",
    "build_report",
    "find_parent_run",
    "open_report_client",
]

NO_VALUES = Summary(math.nan, math.nan, 0)
RUN_ID = re.compile(r"[0-9a-f]{32}")
# Per-trial bookkeeping that differs between trials without being a tuned setting.
UNTUNED_KEYS = ("name", "output_dir", "seed")
UNTUNED_PREFIXES = ("tracking.", "backend.")
# Shown as the best configuration of a sweep whose search spaces are unknown (no sweep file on
# its parent) when no setting differs between a strategy's trials.
DEFAULT_CONFIG_KEYS = ("optimizer.lr",)
DEFAULT_CONFIG_PREFIXES = ("schedule.", "strategy.")


class MetricSpec(NamedTuple):
    key: str
    label: str
    higher_is_better: bool
    suite: str | None = None  # a downstream suite's average, read from the downstream runs


# Validation loss first: the question a sweep answers (the report's one-line answers use it).
LOSSES = (
    MetricSpec(schema.METRIC_FINAL_VALIDATION_LOSS, "validation loss", higher_is_better=False),
    MetricSpec(schema.METRIC_FINAL_TRAIN_EVAL_LOSS, "train-eval loss", higher_is_better=False),
)
PRIMARY = schema.METRIC_FINAL_VALIDATION_LOSS


@dataclass(frozen=True)
class Protocol:
    searcher: str
    trials: int
    seeds: int
    scheduler: str
    allow_unequal_tuning: bool
    trials_by_strategy: dict[str, int]
    # Seeds of each stage, from the parent's params (None: not logged, e.g. an older sweep).
    search_seed: int | None = None  # the searcher's
    train_seed: int | None = None  # tuning trials' training seed (search.train_seed)
    final_first_seed: int | None = None  # final seeds: first, first + 1, ...
    split_seed: int | None = None

    @property
    def final_seeds(self) -> list[int] | None:
        if self.final_first_seed is None:
            return None
        return list(range(self.final_first_seed, self.final_first_seed + self.seeds))

    @property
    def tuning_seed(self) -> int | None:
        """The seed tuning trials trained with: search.train_seed, else the first final seed."""
        return self.train_seed if self.train_seed is not None else self.final_first_seed

    def warnings(self) -> list[str]:
        """What makes this sweep depart from the fair protocol, said where readers see it."""
        found = []
        counts = self.trials_by_strategy or {}
        fewest = min(counts.values(), default=self.trials)
        if fewest < 2:
            few = sorted(name for name, n in counts.items() if n < 2)
            which = f" ({', '.join(few)})" if few and len(few) < len(counts) else ""
            found.append(
                f"With {fewest} trial{'s' if fewest != 1 else ''} per strategy{which} nothing was "
                "tuned: each strategy ran a single configuration, so the comparison is of "
                "untuned settings."
            )
        finals = self.final_seeds or []
        if self.train_seed is None and self.final_first_seed is not None:
            found.append(
                f"Tuning trained with final seed {self.final_first_seed}: the selected run is "
                "one of the final runs (same seed, same configuration), so the final mean "
                "includes the run the selection favoured."
            )
        elif self.train_seed is not None and self.train_seed in finals:
            found.append(
                f"Tuning trained with seed {self.train_seed}, one of the final seeds: the "
                "selected run is one of the final runs, so the final mean includes the run the "
                "selection favoured."
            )
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
    """Validation loss against RST: means over seeds at each validation point, min-max band,
    and the half-width of the 95% t interval for the mean (nan with fewer than 2 seeds)."""

    rst: tuple[float, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    ci: tuple[float, ...] = ()


@dataclass(frozen=True)
class StrategyResult:
    strategy: str
    seeds_run: int
    seeds_completed: int
    not_completed: dict[str, list[str]]  # outcome -> seeds
    metrics: dict[str, MetricResult]
    tuning_trials: int
    tuning_rst_seconds: float
    # RST the strategy's preparation spent for this budget (from its final runs); None if unknown.
    preparation_rst_seconds: float | None
    selected_run_id: str | None
    best_config: dict[str, str]  # the tuned keys' values in the selected trial (as logged)
    curve: Curve
    # Over the completed final runs: optimizer steps, training tokens, RST spent / budget.
    steps: Summary = NO_VALUES
    tokens: Summary = NO_VALUES
    budget_share: Summary = NO_VALUES
    selected_experiment_id: str | None = None


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
    preparation_rst_seconds: float | None  # all strategies' preparations, over all budgets
    budgets: list[BudgetResult]
    tracking_uri: str = ""
    parent_experiment_id: str = ""
    # Per strategy, the keys its search space tunes; None where the sweep file is not logged.
    tuned_keys: dict[str, tuple[str, ...]] | None = None


# --- finding runs ----------------------------------------------------------------------------


def open_report_client(tracking_uri: str) -> MlflowResults:
    """A reader on an existing store: a report never creates an empty SQLite database."""
    return open_results(tracking_uri)


def find_parent_run(source: Any, sweep_name_or_run_id: str) -> str:
    """The parent run id of a sweep: the id itself, or the most recent parent with that name.

    ``source`` is a results reader (``open_results``) or a tracking client it wraps.
    """
    results = results_of(source)
    wanted = sweep_name_or_run_id
    if RUN_ID.fullmatch(wanted):
        run = results.get_run(wanted)
        if run is not None:
            role = run.tags.get(schema.TAG_ROLE)
            if role != schema.ROLE_SWEEP:
                raise NtngError(
                    f"MLflow run {wanted} is not a sweep's parent run (its tag {schema.TAG_ROLE} "
                    f"is {role!r}, a parent has {schema.ROLE_SWEEP!r}); pass the sweep name or "
                    "its parent run id"
                )
            return wanted
    parents = results.search(f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_SWEEP}'")
    named = [r for r in parents if r.tags.get(schema.TAG_SWEEP) == wanted]
    if not named:
        known = sorted({r.tags.get(schema.TAG_SWEEP, "?") for r in parents})
        raise NtngError(
            f"no sweep named {wanted!r} (nor a sweep parent run with that id) in the MLflow "
            f"store {results.tracking_uri}; sweeps there: {', '.join(known) or 'none'}"
        )
    return max(named, key=lambda r: r.start_time).run_id


# --- reading the parent ----------------------------------------------------------------------


def _tag(run: RunRecord, key: str) -> str:
    value = run.tags.get(key)
    if value is None:
        raise NtngError(
            f"sweep parent run {run.run_id} lacks the tag {key}; the report needs the tags "
            "`ntng sweep` writes"
        )
    return value


def _json_tag(run: RunRecord, key: str, kind: type) -> Any:
    text = _tag(run, key)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, kind):
        raise NtngError(
            f"sweep parent run {run.run_id}: tag {key} = {text!r} is not a JSON {kind.__name__}"
        )
    return value


def _int_tag(run: RunRecord, key: str) -> int:
    text = _tag(run, key)
    try:
        return int(text)
    except ValueError:
        raise NtngError(
            f"sweep parent run {run.run_id}: tag {key} = {text!r} is not an integer"
        ) from None


def _int_param(run: RunRecord, key: str) -> int | None:
    """A parent param as an integer; None where absent, null or not an integer."""
    text = run.params.get(key)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _protocol(parent: RunRecord) -> Protocol:
    return Protocol(
        searcher=_tag(parent, schema.TAG_PROTOCOL_SEARCHER),
        trials=_int_tag(parent, schema.TAG_PROTOCOL_TRIALS),
        seeds=_int_tag(parent, schema.TAG_PROTOCOL_SEEDS),
        scheduler=_tag(parent, schema.TAG_PROTOCOL_SCHEDULER),
        allow_unequal_tuning=(
            _tag(parent, schema.TAG_PROTOCOL_ALLOW_UNEQUAL_TUNING).lower() == "true"
        ),
        trials_by_strategy={
            str(k): int(v)
            for k, v in _json_tag(parent, schema.TAG_PROTOCOL_TRIALS_BY_STRATEGY, dict).items()
        },
        search_seed=_int_param(parent, "search.seed"),
        train_seed=_int_param(parent, "search.train_seed"),
        final_first_seed=_int_param(parent, "final.first_seed"),
        split_seed=_int_param(parent, "split_seed"),
    )


def _tuned_keys(
    results: MlflowResults, parent: RunRecord, strategies: Sequence[str]
) -> dict[str, tuple[str, ...]] | None:
    """Per strategy, the keys its search space samples (a domain, not a fixed value), read from
    the sweep file on the parent run; None where the parent has none readable."""
    text = results.artifact_text(parent.run_id, schema.ARTIFACT_SWEEP_FILE)
    if text is None:
        return None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    entries = spec.get("strategies") if isinstance(spec, dict) else None
    if not isinstance(entries, dict):
        return None
    tuned: dict[str, tuple[str, ...]] = {}
    for name in strategies:
        entry = entries.get(name)
        space = entry.get("space") if isinstance(entry, dict) else None
        space = space if isinstance(space, dict) else {}
        tuned[name] = tuple(str(k) for k, domain in space.items() if isinstance(domain, dict))
    return tuned


# --- reading the children --------------------------------------------------------------------


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (2**63, seed)


def _completed(run: RunRecord) -> bool:
    return run.tags.get(schema.TAG_OUTCOME) == schema.OUTCOME_COMPLETED


def _outcome(run: RunRecord) -> str:
    """A trial's outcome tag, or its run status (running, killed) while it has none."""
    return run.tags.get(schema.TAG_OUTCOME) or run.status.lower()


def _phase(run: RunRecord) -> str | None:
    return run.tags.get(schema.TAG_PHASE)


def _validation_points(results: MlflowResults, run_id: str) -> list[tuple[float, float, float]]:
    """(validation point, RST, validation loss) at each validation of a run."""
    losses = results.history(run_id, schema.METRIC_VAL_LOSS)
    rst = results.history(run_id, schema.METRIC_RST_SECONDS)
    progress = results.history(run_id, schema.METRIC_VAL_PROGRESS_POINT)
    return [
        (round(progress.get(step, index), 6), rst[step], loss)
        for index, (step, loss) in enumerate(sorted(losses.items()))
        if step in rst
    ]


def _curve(results: MlflowResults, runs: Sequence[RunRecord]) -> Curve:
    grouped: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        for point, rst, loss in _validation_points(results, run.run_id):
            grouped[point].append((rst, loss))
    rows = []
    for point in sorted(grouped):
        rst_values = [rst for rst, _ in grouped[point]]
        losses = [loss for _, loss in grouped[point] if math.isfinite(loss)]
        if not losses:
            continue
        rows.append(
            (
                summarize(rst_values).mean,
                summarize(losses).mean,
                min(losses),
                max(losses),
                mean_half_width(losses, CONFIDENCE),
            )
        )
    rst, mean, low, high, ci = (
        (tuple(column) for column in zip(*rows, strict=True)) if rows else ((),) * 5
    )
    return Curve(rst, mean, low, high, ci)


def _downstream(runs: Iterable[RunRecord]) -> dict[str, dict[str, float]]:
    """Suite average per pretraining run id and suite, from the latest finished downstream run."""
    latest: dict[tuple[str, str], RunRecord] = {}
    for run in runs:
        pretrain, suite = run.tags.get(schema.TAG_PRETRAIN_RUN_ID), run.tags.get(schema.TAG_SUITE)
        if not pretrain or not suite or run.status != schema.FINISHED:
            continue
        if schema.suite_average_metric(suite) not in run.metrics:
            continue
        kept = latest.get((pretrain, suite))
        if kept is None or run.start_time > kept.start_time:
            latest[(pretrain, suite)] = run
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for (pretrain, suite), run in latest.items():
        scores[pretrain][suite] = run.metrics[schema.suite_average_metric(suite)]
    return scores


def _is_tuned_key(key: str) -> bool:
    return key not in UNTUNED_KEYS and not key.startswith(UNTUNED_PREFIXES)


def _best_config(
    tune_runs: Sequence[RunRecord], tuned: Sequence[str] | None
) -> tuple[RunRecord | None, dict[str, str]]:
    """The selected trial and the values of the keys the strategy's search space tunes.

    A trial's params are its whole config (fixed settings too), so only ``tuned`` keys are
    shown. Where the tuned keys are unknown (``None``: no sweep file on the parent), the
    settings that differ between the strategy's trials are shown; when none differ, the
    learning rate, schedule and strategy settings, so the reader still sees what was run.
    """
    selected = [r for r in tune_runs if r.tags.get(schema.TAG_SELECTED, "").lower() == "true"]
    if not selected:
        return None, {}
    best = max(selected, key=lambda r: r.start_time)
    params = best.params
    if tuned is not None:
        return best, {key: params[key] for key in tuned if key in params}
    differing = {
        key
        for key in params
        if _is_tuned_key(key) and len({r.params.get(key) for r in tune_runs}) > 1
    }
    shown = differing or {
        k for k in params if k in DEFAULT_CONFIG_KEYS or k.startswith(DEFAULT_CONFIG_PREFIXES)
    }
    return best, {key: params[key] for key in sorted(shown)}


def _preparation_rst(finals: Sequence[RunRecord]) -> float | None:
    """RST the strategy's preparation spent for the budget, as its final runs logged it (each
    final run of a budget reuses the same preparation); None where none logged it."""
    values = [
        value
        for run in finals
        if (value := run.metrics.get(schema.METRIC_PREPARATION_RST_SECONDS)) is not None
        and math.isfinite(value)
    ]
    return max(values) if values else None


def _final_summary(finals: Sequence[RunRecord], key: str, scale: float = 1.0) -> Summary:
    values = [
        value / scale
        for run in finals
        if (value := run.metrics.get(key)) is not None and math.isfinite(value)
    ]
    return summarize(values)


def _metric_values(
    finals: Sequence[RunRecord], spec: MetricSpec, scores: Mapping[str, Mapping[str, float]]
) -> tuple[float, ...]:
    values = []
    for run in finals:
        if spec.suite is None:
            value = run.metrics.get(spec.key)
        else:
            value = scores.get(run.run_id, {}).get(spec.suite)
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
    results: MlflowResults,
    strategy: str,
    runs: Sequence[RunRecord],
    columns: Sequence[MetricSpec],
    scores: Mapping[str, Mapping[str, float]],
    baseline: StrategyResult | None,
    budget: float,
    tuned: Sequence[str] | None,
) -> StrategyResult:
    finals = sorted(
        (r for r in runs if _phase(r) == schema.PHASE_FINAL),
        key=lambda r: _seed_order(r.tags.get(schema.TAG_SEED, "")),
    )
    tunes = [r for r in runs if _phase(r) == schema.PHASE_TUNE]
    completed = [r for r in finals if _completed(r)]
    not_completed: dict[str, list[str]] = defaultdict(list)
    for run in finals:
        if not _completed(run):
            not_completed[_outcome(run)].append(run.tags.get(schema.TAG_SEED, "?"))
    metrics = {
        spec.key: _compare(
            _metric_values(completed, spec, scores),
            baseline.metrics[spec.key].values if baseline else None,
            spec,
        )
        for spec in columns
    }
    selected, config = _best_config(tunes, tuned)
    return StrategyResult(
        strategy=strategy,
        seeds_run=len(finals),
        seeds_completed=len(completed),
        not_completed={k: sorted(v, key=_seed_order) for k, v in sorted(not_completed.items())},
        metrics=metrics,
        tuning_trials=len(tunes),
        tuning_rst_seconds=math.fsum(r.metrics.get(schema.METRIC_RST_SECONDS, 0.0) for r in tunes),
        preparation_rst_seconds=_preparation_rst(finals),
        selected_run_id=selected.run_id if selected else None,
        best_config=config,
        curve=_curve(results, completed),
        steps=_final_summary(completed, schema.METRIC_STEPS),
        tokens=_final_summary(completed, schema.METRIC_TOKENS),
        budget_share=_final_summary(completed, schema.METRIC_RST_SECONDS, budget),
        selected_experiment_id=selected.experiment_id if selected else None,
    )


def _budget_result(
    results: MlflowResults,
    budget: float,
    strategies: Sequence[str],
    runs: Sequence[RunRecord],
    scores: Mapping[str, Mapping[str, float]],
    tuned_keys: Mapping[str, tuple[str, ...]] | None,
) -> BudgetResult:
    by_strategy: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_strategy[run.tags.get(schema.TAG_STRATEGY, "")].append(run)
    final_ids = {r.run_id for r in runs if _phase(r) == schema.PHASE_FINAL and _completed(r)}
    suites = sorted({suite for run_id in final_ids for suite in scores.get(run_id, {})})
    columns = LOSSES + tuple(
        MetricSpec(schema.suite_average_metric(s), f"{s} average", True, s) for s in suites
    )
    strategy_results: list[StrategyResult] = []
    for strategy in strategies:
        baseline = strategy_results[0] if strategy_results else None
        strategy_results.append(
            _strategy_result(
                results,
                strategy,
                by_strategy[strategy],
                columns,
                scores,
                baseline,
                budget,
                None if tuned_keys is None else tuned_keys.get(strategy, ()),
            )
        )
    return BudgetResult(budget, columns, strategy_results)


def build_report(source: Any, parent_run_id: str) -> SweepReport:
    """Everything the report shows, read from the parent run and its child runs.

    ``source`` is a results reader (``open_results``) or a tracking client it wraps.
    """
    results = results_of(source)
    parent = results.get_run(parent_run_id)
    if parent is None:
        raise NtngError(
            f"sweep parent run {parent_run_id!r} is not in the MLflow store {results.tracking_uri}"
        )
    strategies = tuple(str(s) for s in _json_tag(parent, schema.TAG_STRATEGIES, list))
    if not strategies:
        raise NtngError(f"sweep parent run {parent_run_id}: tag {schema.TAG_STRATEGIES} is empty")
    budgets = _json_tag(parent, schema.TAG_BUDGETS, list)
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in budgets):
        raise NtngError(
            f"sweep parent run {parent_run_id}: tag {schema.TAG_BUDGETS} = {budgets!r} is "
            "not a list of numbers"
        )
    children = results.search(f"tags.`{schema.MLFLOW_PARENT_RUN_ID}` = '{parent.run_id}'")
    scores = _downstream(r for r in children if _phase(r) == schema.PHASE_DOWNSTREAM)
    trials_by_budget: dict[float | None, list[RunRecord]] = defaultdict(list)
    for run in children:
        if _phase(run) in (schema.PHASE_TUNE, schema.PHASE_FINAL):
            budget = _float_or_none(run.tags.get(schema.TAG_BUDGET))
            trials_by_budget[budget].append(run)
    tuned_keys = _tuned_keys(results, parent, strategies)
    return SweepReport(
        sweep=_tag(parent, schema.TAG_SWEEP),
        parent_run_id=parent.run_id,
        parent_status=parent.status,
        protocol=_protocol(parent),
        strategies=strategies,
        sweep_rst_seconds=parent.metrics.get(schema.METRIC_SWEEP_RST_SECONDS),
        preparation_rst_seconds=parent.metrics.get(schema.METRIC_SWEEP_PREPARATION_RST_SECONDS),
        budgets=[
            _budget_result(
                results, float(b), strategies, trials_by_budget[float(b)], scores, tuned_keys
            )
            for b in sorted(budgets)
        ],
        tracking_uri=results.tracking_uri,
        parent_experiment_id=parent.experiment_id,
        tuned_keys=tuned_keys,
    )
