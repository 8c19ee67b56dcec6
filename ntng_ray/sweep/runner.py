"""``ntng sweep``: run a sweep's stages as Ray Tune experiments, resumable, recorded in MLflow.

Per budget: each strategy's preparation (RHO-loss's IL model), one tuning experiment per strategy
(same searcher, same trial count, same budget), then one final experiment that re-runs each
strategy's best configuration (lowest final validation loss among completed tuning trials) over
the final seeds. The sweep ends by writing the comparison report to the parent run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune import TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.variant_generator import generate_variants
from ray.tune.stopper import CombinedStopper

from ntng_ray.errors import NtngError
from ntng_ray.preparation.strategy import prepare, prepared_setting
from ntng_ray.strategies import strategy_class
from ntng_ray.sweep.plan import (
    Stage,
    base_mapping,
    check_trial_configs,
    preparation_config,
    preparation_dir,
    prepared_strategies,
    stages,
    sweep_root,
    trial_config,
    trial_output_dir,
    tune_storage,
    tuning_seed,
    tuning_stages,
)
from ntng_ray.sweep.progress import ProgressTable
from ntng_ray.sweep.spec import SweepSpec
from ntng_ray.sweep.state import SweepState
from ntng_ray.sweep.stoppers import DivergenceStopper, RSTBudgetStopper, outcome
from ntng_ray.sweep.tracking import SweepTracker
from ntng_ray.sweep.trial import run_trial
from ntng_ray.track import schema
from ntng_ray.track.interrupts import sigterm_as_interrupt
from ntng_ray.train.ray_cluster import connect as connect_ray
from ntng_ray.train.ray_launch import FORWARDED_ENV
from ntng_ray.train.run import uses_ray

TRIAL_DRIVER_CPUS = 0.01
FORWARDED_SWEEP_ENV = (*FORWARDED_ENV, "NTNG_CACHE_DIR", "TORCH_EXTENSIONS_DIR")
# Set by Ray's job manager in a job's driver: the job config, its runtime env included.
RAY_JOB_CONFIG_JSON_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class SweepInterrupted(NtngError):
    """The sweep stopped before its stages were done; ``--resume`` continues it."""


def run_sweep(spec: SweepSpec, resume: bool = False, report_dir: Path | None = None) -> dict:
    """Run (or resume) the whole sweep; returns a summary of what ran."""
    root = sweep_root(spec)
    base = base_mapping(spec)
    check_trial_configs(spec, base)
    state = SweepState.open(root, spec.content_hash(), resume, spec.overwrite)
    connect(spec)
    tracker = _tracker(spec, state)
    started = time.monotonic()
    try:
        with sigterm_as_interrupt():
            for stage in stages(spec):
                if state.done(stage.key) is None:
                    state.finish_stage(stage.key, _run_stage(spec, base, stage, state, tracker))
    except KeyboardInterrupt:
        _end_interrupted(tracker)
        raise SweepInterrupted(_resume_hint(spec, root)) from None
    except SweepInterrupted:
        _end_interrupted(tracker)
        raise
    except BaseException:
        if tracker is not None:
            tracker.kill_running_children()
            tracker.end_parent(schema.FAILED, {})
        raise
    totals = sweep_totals(state)
    summary = {"name": spec.name, "root": str(root), **totals}
    summary["wall_seconds"] = time.monotonic() - started
    if tracker is not None:
        tracker.end_parent(schema.FINISHED, totals)
        summary["parent_run_id"] = tracker.parent_run_id
        summary["report"] = _publish_report(tracker, report_dir)
    return summary


def _tracker(spec: SweepSpec, state: SweepState) -> SweepTracker | None:
    """The parent run: created on a fresh sweep, reopened on resume (its cut-off children
    are marked KILLED first; their trials reopen them when Tune restarts them)."""
    if not spec.tracking.enabled:
        return None
    tracker = SweepTracker(spec.tracking, state.parent_run_id)
    if state.parent_run_id is None:
        state.parent_run_id = tracker.start_parent(spec, spec.tuning_trials())
        state.save()
    else:
        killed = tracker.kill_running_children()
        if killed:
            print(f"marked {killed} trial run(s) left RUNNING by the interrupted sweep KILLED")
        tracker.reopen_parent()
    print(f"MLflow: {tracker.uri}, parent run {tracker.parent_run_id}", flush=True)
    return tracker


def _end_interrupted(tracker: SweepTracker | None) -> None:
    if tracker is not None:
        tracker.kill_running_children()
        tracker.end_parent(schema.KILLED, {})


def _resume_hint(spec: SweepSpec, root: Path) -> str:
    return (
        f"sweep {spec.name!r} was interrupted; its state is in {root}. Continue it with the same "
        "command plus --resume"
    )


def connect(spec: SweepSpec) -> None:
    """Join ``address`` / ``$RAY_ADDRESS``, or start a local Ray sized for the trials at once
    (the state of Ray is checked by ``ray_cluster.connect``; the runtime env is built first)."""
    # Inside a Ray job, variables the job's runtime env sets reach the trials already, and Ray
    # refuses to merge a driver runtime env that sets them again.
    already = set(job_env_vars())
    forwarded = [k for k in FORWARDED_SWEEP_ENV if k in os.environ and k not in already]
    runtime_env = {"env_vars": {k: os.environ[k] for k in forwarded}}
    per_trial = spec.resources.workers * spec.resources.cpus_per_trial + TRIAL_DRIVER_CPUS
    need = spec.resources.max_concurrent * per_trial
    connect_ray(spec.address, need, runtime_env=runtime_env, log_to_driver=False)


def job_env_vars() -> dict[str, str]:
    """The env vars of the runtime env of the Ray job this driver runs in (none outside jobs)."""
    raw = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not raw:
        return {}
    return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})


def _run_stage(
    spec: SweepSpec, base: dict, stage: Stage, state: SweepState, tracker: SweepTracker | None
) -> dict[str, Any]:
    print(f"\n=== stage {stage.key}", flush=True)
    if stage.kind == "prepare":
        return _run_preparation(spec, base, stage, tracker)
    if stage.kind == "tune":
        return _run_tune(spec, base, stage, state, tracker)
    if stage.kind == "downstream":
        return _run_downstream(spec, base, stage, state, tracker)
    return _run_final(spec, base, stage, state, tracker)


def _run_preparation(
    spec: SweepSpec, base: dict, stage: Stage, tracker: SweepTracker | None = None
) -> dict[str, Any]:
    """Run a strategy's preparation once per budget, on the cluster, as a Ray task; its
    pretraining run is a child run of the sweep's parent (phase ``prepare``)."""
    assert stage.strategy is not None
    cfg = preparation_config(spec, base, stage, tracker.parent_run_id if tracker else None)
    folder = preparation_dir(spec, stage.budget, stage.strategy)
    task = ray.remote(prepare).options(
        num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial
    )
    meta = ray.get(task.remote(cfg, folder))  # the base sets overwrite: a rerun replaces it
    rst = float(meta["preparation_rst_seconds"])
    print(
        f"{stage.strategy}'s preparation for budget {stage.budget:g}: {rst:.2f} RST s, "
        f"folder {folder}",
        flush=True,
    )
    return {"kind": stage.kind, "rst_seconds": rst, "folder": str(folder)}


def _stage_context(
    spec: SweepSpec, base: dict, stage: Stage, phase: str, tracker: SweepTracker | None
) -> dict[str, Any]:
    """What every trial of the stage needs besides its own strategy, seed and parameters."""
    fixed = {
        name: prepared_setting(
            strategy_class(name).preparation, preparation_dir(spec, stage.budget, name)
        )
        for name in prepared_strategies(spec)
    }
    return {
        "spec": spec.model_dump(mode="json"),
        "base": base,
        "budget": stage.budget,
        "key": stage.key,
        "phase": phase,
        "root": str(sweep_root(spec)),
        "tracking": base["tracking"],
        "parent_run_id": tracker.parent_run_id if tracker else None,
        "fixed": fixed,
    }


def _trainable(spec: SweepSpec, base: dict, context: dict[str, Any]) -> Any:
    """The trial function with its stage context and resources: a trial that runs its loop in
    process holds its CPUs (or GPU); one that starts Ray Train workers holds only a sliver."""
    probe = trial_config(base, spec, "baseline", {}, context["budget"], 0, Path("probe"), "probe")
    if uses_ray(probe):
        resources = {"cpu": TRIAL_DRIVER_CPUS}
    else:
        resources = {"cpu": spec.resources.cpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, stage=context), resources)


def _run_config(spec: SweepSpec, stage: Stage) -> tune.RunConfig:
    return tune.RunConfig(
        name=stage.key,
        storage_path=tune_storage(spec),
        stop=CombinedStopper(
            RSTBudgetStopper(spec.guards.budget_tolerance), DivergenceStopper(spec.guards.max_loss)
        ),
        callbacks=[ProgressTable(f"{spec.name} / {stage.key}")],
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=0,
    )


def _fit(spec: SweepSpec, stage: Stage, trainable: Any, make_tuner: Any) -> tune.ResultGrid:
    """Restore the stage's experiment when a previous attempt left one, else start it."""
    path = os.path.join(tune_storage(spec), stage.key)
    if Tuner.can_restore(path):
        print(f"resuming Tune experiment {path}", flush=True)
        tuner = Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = make_tuner()
    return tuner.fit()


def _fit_cases(
    spec: SweepSpec, stage: Stage, trainable: Any, cases: list[dict[str, Any]]
) -> tune.ResultGrid:
    """A stage whose trials are a fixed list (finals, fine-tuning): one trial per case."""

    def make_tuner() -> Tuner:
        return Tuner(
            trainable,
            param_space={"trial": tune.grid_search(cases)},
            tune_config=TuneConfig(
                max_concurrent_trials=spec.resources.max_concurrent, reuse_actors=True
            ),
            run_config=_run_config(spec, stage),
        )

    return _fit(spec, stage, trainable, make_tuner)


def _searcher(spec: SweepSpec) -> Any:
    """The adaptive searcher (grid and random points are drawn up front by ``tuning_cases``)."""
    if spec.search.searcher == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=spec.search.seed)
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=spec.search.seed)


def _scheduler(spec: SweepSpec, budget: float) -> Any:
    """None (the study's setting) or ASHA on RST, explicitly asked for and labelled."""
    if spec.search.scheduler == "none":
        return None
    return ASHAScheduler(time_attr=schema.RESULT_RST_SECONDS, max_t=budget, grace_period=budget / 4)


def to_tune_domain(value: Any) -> Any:
    """A sweep file's domain, e.g. {loguniform: [1e-4, 1e-2]}, as Ray Tune's object."""
    if not isinstance(value, dict):
        return value
    ((kind, args),) = value.items()
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    return getattr(tune, kind)(*args)


def tuning_cases(spec: SweepSpec, names: list[str]) -> list[dict[str, Any]]:
    """Every tuning trial of ``names`` drawn up front (grid and random searchers), as Ray Tune's
    basic generator draws them: the grid's points, or ``trials`` samples from a generator seeded
    by ``search.seed`` afresh for each strategy, so strategies with the same space get the same
    points."""
    counts = spec.tuning_trials()
    cases = []
    for name in names:
        space = {key: to_tune_domain(d) for key, d in spec.strategies[name].space.items()}
        rng = np.random.RandomState(spec.search.seed)
        draws = 1 if spec.search.searcher == "grid" else counts[name]
        points = [
            resolved["params"]
            for _ in range(draws)
            for _, resolved in generate_variants({"params": space}, random_state=rng)
        ]
        cases += [
            {"strategy": name, "seed": tuning_seed(spec), "params": params, "index": index}
            for index, params in enumerate(points, start=1)
        ]
    return cases


def _run_tune(
    spec: SweepSpec, base: dict, stage: Stage, state: SweepState, tracker: SweepTracker | None
) -> dict[str, Any]:
    """The tuning trials of one strategy (adaptive searchers) or of all (up-front searchers);
    returns each strategy's best configuration and the RST spent."""
    context = _stage_context(spec, base, stage, "tune", tracker)
    trainable = _trainable(spec, base, context)
    names = [stage.strategy] if stage.strategy else spec.strategy_order()
    if stage.strategy is None:
        grid_result = _fit_cases(spec, stage, trainable, tuning_cases(spec, names))
    else:
        grid_result = _fit_searched(spec, stage, trainable, stage.strategy)
    outcomes = _close_trials(spec, grid_result, tracker)
    best = {name: _best_trial(grid_result, outcomes, name, tracker) for name in names}
    return {"rst_seconds": _rst_spent(grid_result), "outcomes": outcomes, "best": best}


def _fit_searched(spec: SweepSpec, stage: Stage, trainable: Any, strategy: str) -> tune.ResultGrid:
    """One strategy's tuning trials, proposed by an adaptive searcher as results come in."""
    space = {key: to_tune_domain(d) for key, d in spec.strategies[strategy].space.items()}

    def make_tuner() -> Tuner:
        return Tuner(
            trainable,
            param_space={
                "trial": {"strategy": strategy, "seed": tuning_seed(spec), "params": space}
            },
            tune_config=TuneConfig(
                metric=schema.RESULT_VAL_LOSS,
                mode="min",
                num_samples=spec.tuning_trials()[strategy],
                search_alg=_searcher(spec),
                scheduler=_scheduler(spec, stage.budget),
                max_concurrent_trials=spec.resources.max_concurrent,
                reuse_actors=True,
            ),
            run_config=_run_config(spec, stage),
        )

    return _fit(spec, stage, trainable, make_tuner)


def _best_trial(
    grid_result: tune.ResultGrid,
    outcomes: dict[str, str],
    strategy: str,
    tracker: SweepTracker | None,
) -> dict[str, Any] | None:
    """The strategy's completed tuning trial with the lowest final validation loss, tagged
    selected; None when none completed."""
    completed = [
        r
        for r in grid_result
        if r.config["trial"]["strategy"] == strategy
        and outcomes[r.metrics.get(schema.RESULT_TRIAL_ID, "")] == schema.OUTCOME_COMPLETED
    ]
    best = min(completed, key=lambda r: r.metrics["final_validation_loss"], default=None)
    if best is None:
        print(f"no tuning trial of {strategy} completed: it has no final runs", flush=True)
        return None
    trial_id = best.metrics[schema.RESULT_TRIAL_ID]
    if tracker is not None:
        tracker.tag_child(trial_id, {schema.TAG_SELECTED: "true"})
    selected = {
        "trial_id": trial_id,
        "params": best.config["trial"]["params"],
        "final_validation_loss": best.metrics["final_validation_loss"],
    }
    print(f"best {strategy}: {selected}", flush=True)
    return selected


def selected_configs(spec: SweepSpec, state: SweepState, budget: float) -> dict[str, Any]:
    """Each strategy's selected tuning trial at ``budget`` (None when none completed)."""
    selected: dict[str, Any] = {}
    for stage in tuning_stages(spec, budget):
        selected |= (state.done(stage.key) or {}).get("best") or {}
    return selected


def _run_final(
    spec: SweepSpec, base: dict, stage: Stage, state: SweepState, tracker: SweepTracker | None
) -> dict[str, Any]:
    """Every strategy's best configuration over the final seeds, in one experiment."""
    selected = selected_configs(spec, state, stage.budget)
    cases = [
        {"strategy": name, "seed": seed, "params": selected[name]["params"]}
        for seed in spec.final_seeds()
        for name in spec.strategy_order()
        if selected.get(name) is not None
    ]
    if not cases:
        print("no strategy has a completed tuning trial: no final runs", flush=True)
        return {"rst_seconds": 0.0, "outcomes": {}, "checkpoints": []}
    context = _stage_context(spec, base, stage, "final", tracker)
    trainable = _trainable(spec, base, context)
    grid_result = _fit_cases(spec, stage, trainable, cases)
    outcomes = _close_trials(spec, grid_result, tracker)
    checkpoints = [
        {
            "trial_id": result.metrics[schema.RESULT_TRIAL_ID],
            "strategy": result.config["trial"]["strategy"],
            "seed": result.config["trial"]["seed"],
            "checkpoint": str(
                trial_output_dir(
                    sweep_root(spec), stage.key, result.metrics[schema.RESULT_TRIAL_ID]
                )
            ),
            "run_id": tracker.find_child(result.metrics[schema.RESULT_TRIAL_ID])
            if tracker
            else None,
        }
        for result in grid_result
        if outcomes[result.metrics.get(schema.RESULT_TRIAL_ID, "")] == schema.OUTCOME_COMPLETED
    ]
    return {
        "rst_seconds": _rst_spent(grid_result),
        "outcomes": outcomes,
        "checkpoints": checkpoints,
    }


def _run_downstream(
    spec: SweepSpec, base: dict, stage: Stage, state: SweepState, tracker: SweepTracker | None
) -> dict[str, Any]:
    """Fine-tune every completed final checkpoint of the budget on the configured tasks."""
    from ntng_ray.sweep.downstream_stage import (
        finetune_cases,
        log_suite_averages,
        run_finetune_trial,
    )

    final = state.done(Stage("final", stage.budget).key) or {}
    cases = finetune_cases(final.get("checkpoints", []), spec.downstream)
    if not cases:
        print("no completed final checkpoint to fine-tune", flush=True)
        return {"rst_seconds": 0.0, "outcomes": {}, "averages": {}}
    context = {
        "spec_name": spec.name,
        "budget": stage.budget,
        "key": stage.key,
        "root": str(sweep_root(spec)),
        "tracking": base["tracking"],
        "parent_run_id": tracker.parent_run_id if tracker else None,
        "downstream": [d.model_dump(mode="json") for d in spec.downstream],
    }
    resources = {
        "cpu": max(d.cpus_per_trial for d in spec.downstream),
        "gpu": max(d.gpus_per_trial for d in spec.downstream),
    }
    trainable = tune.with_resources(
        tune.with_parameters(run_finetune_trial, stage=context), resources
    )
    grid_result = _fit_cases(spec, stage, trainable, cases)
    outcomes = _close_trials(spec, grid_result, tracker)
    done = [
        (r.config["trial"], Path(context["root"]) / "downstream" / stage.key / tid)
        for r in grid_result
        if outcomes[tid := r.metrics.get(schema.RESULT_TRIAL_ID, "")] == schema.OUTCOME_COMPLETED
    ]
    averages = log_suite_averages(tracker, context, done) if tracker else {}
    print(f"downstream suite averages by pretraining run: {averages}", flush=True)
    return {"rst_seconds": 0.0, "outcomes": outcomes, "averages": averages}


def _close_trials(
    spec: SweepSpec, grid_result: tune.ResultGrid, tracker: SweepTracker | None
) -> dict[str, str]:
    """Each trial's outcome; runs the stoppers ended are closed with it. A stage with trials
    that neither finished nor were stopped was interrupted: the sweep stops there."""
    outcomes: dict[str, str] = {}
    interrupted = 0
    for result in grid_result:
        trial_id = result.metrics.get(schema.RESULT_TRIAL_ID, "")
        how = outcome(
            result.metrics,
            result.error is not None,
            spec.guards.budget_tolerance,
            spec.guards.max_loss,
        )
        outcomes[trial_id] = how
        if how == "interrupted":
            interrupted += 1
        elif how != "completed" and tracker is not None and trial_id:
            tracker.close_child(trial_id, how)
    if interrupted:
        raise SweepInterrupted(
            f"{interrupted} trial(s) did not finish; continue the sweep with --resume"
        )
    return outcomes


def _rst_spent(grid_result: tune.ResultGrid) -> float:
    return float(sum(r.metrics.get(schema.RESULT_RST_SECONDS, 0.0) or 0.0 for r in grid_result))


def sweep_totals(state: SweepState) -> dict[str, float]:
    """RST spent by the whole sweep: every trial (tuning included) and the preparations."""
    total = sum(record.get("rst_seconds", 0.0) for record in state.stages.values())
    prepared = sum(
        r.get("rst_seconds", 0.0) for r in state.stages.values() if r.get("kind") == "prepare"
    )
    return {"sweep_rst_seconds": total, "preparation_rst_seconds": prepared}


def _publish_report(tracker: SweepTracker, out: Path | None) -> str:
    """Write the report to the parent run (and ``out``); return what the terminal shows: its
    Markdown without image links, report.html's path (when written to ``out``) and the run's
    address in the MLflow UI (when the store is a tracking server)."""
    from ntng_ray.sweep.render import publish_report, terminal_text
    from ntng_ray.sweep.results import build_report, open_report_client

    results = open_report_client(tracker.uri)
    report = build_report(results, tracker.parent_run_id)
    files = publish_report(results, report, out)
    return terminal_text(report, files)
