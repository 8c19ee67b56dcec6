"""From a sweep file to stages and trial configs: what runs, in which order, and what it costs.

A sweep runs, per budget, a preparation stage for each strategy that needs one (RHO-loss's IL
model), one tuning stage per strategy (each its own Tune experiment, so every strategy gets its own
searcher with the same trial count), then one final stage re-running every strategy's best
configuration over the final seeds. Every trial's run config is the base config with the sweep's
fixed settings, the strategy, the sampled parameters, the budget and the seed applied, validated
like any run config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ntng_ray.config import (
    SHIPPED_CONFIGS,
    RunConfig,
    read_yaml_mapping,
    set_dotted,
    validate_mapping,
)
from ntng_ray.preparation.strategy import preparation_for
from ntng_ray.strategies import resolve_strategy, strategy_class
from ntng_ray.sweep.spec import SweepSpec, dotted_items
from ntng_ray.sweep.tracking import child_tags
from ntng_ray.track import schema
from ntng_ray.train.ray_launch import pin_shared_paths

StageKind = Literal["prepare", "tune", "final", "downstream"]


@dataclass(frozen=True)
class Stage:
    """One step of a sweep; tune and final stages are Ray Tune experiments."""

    kind: StageKind
    budget: float
    strategy: str | None = None

    @property
    def key(self) -> str:
        """A name safe for folders and Tune experiments, stable across resumes."""
        parts = [f"b{budget_label(self.budget)}", self.kind.replace("_", "-")]
        return "-".join([*parts, self.strategy] if self.strategy else parts)


def budget_label(seconds: float) -> str:
    """20.0 -> '20', 0.5 -> '0.5': budgets in names without trailing zeros."""
    return f"{seconds:g}" if seconds < 1e15 else str(int(seconds))


# Searchers whose points do not depend on earlier results: every strategy's tuning trials are
# drawn before the stage and run as one Tune experiment (one start-up, reused trial processes).
SAMPLED_UP_FRONT = frozenset({"grid", "random"})


def tunes_together(spec: SweepSpec) -> bool:
    """Whether one tuning stage runs every strategy's trials (grid and random searchers); an
    adaptive searcher (optuna, hyperopt) needs one experiment per strategy."""
    return spec.search.searcher in SAMPLED_UP_FRONT


def tuning_stages(spec: SweepSpec, budget: float) -> list[Stage]:
    """The budget's tuning stage(s): one for every strategy, or one per strategy."""
    if tunes_together(spec):
        return [Stage("tune", budget)]
    return [Stage("tune", budget, name) for name in spec.strategy_order()]


def stages(spec: SweepSpec) -> list[Stage]:
    """Every stage of the sweep in the order it runs."""
    order: list[Stage] = []
    for budget in sorted(b.seconds for b in spec.budgets):
        order += [Stage("prepare", budget, name) for name in prepared_strategies(spec)]
        order += tuning_stages(spec, budget)
        order.append(Stage("final", budget))
        if spec.downstream:
            order.append(Stage("downstream", budget))
    return order


def prepared_strategies(spec: SweepSpec) -> list[str]:
    """The sweep's strategies that need a preparation before they train, in sweep order."""
    return [n for n in spec.strategy_order() if strategy_class(n).preparation is not None]


def preparation_dir(spec: SweepSpec, budget: float, strategy: str) -> Path:
    """Where a strategy's preparation for one budget is written (one per budget, shared by its
    tuning and final trials)."""
    return sweep_root(spec) / "prepared" / Stage("prepare", budget, strategy).key


def trial_output_dir(root: Path, stage_key: str, trial_id: str) -> Path:
    """A trial's own folder: its run's outputs, the final model a downstream stage reads."""
    return Path(root) / "trials" / stage_key / trial_id


def sweep_root(spec: SweepSpec) -> Path:
    """The sweep's own folder: state, trial folders, IL data, Tune storage by default."""
    return (Path(spec.output_dir).expanduser() / spec.name).resolve()


def tune_storage(spec: SweepSpec) -> str:
    """Where Ray Tune and Ray Train keep results and checkpoints (a folder or a URI)."""
    if spec.storage_path is None:
        return str(sweep_root(spec) / "ray")
    path = spec.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def base_mapping(spec: SweepSpec) -> dict[str, Any]:
    """The base run config as a mapping, with the sweep's fixed settings applied.

    The split seed, backend resources, checkpoints and tracking are the sweep's, not the base
    config's, so that every trial shares one validation set and one store.
    """
    data, stem = read_yaml_mapping(spec.base, "config", resources.files(SHIPPED_CONFIGS))
    data.setdefault("name", stem)
    for key, value in dotted_items(spec.overrides):
        set_dotted(data, key, value, f"overrides.{key}")
    fixed = {
        "data.split_seed": spec.split_seed,
        "backend.workers": spec.resources.workers,
        "backend.use_gpu": spec.resources.gpus_per_trial > 0,
        "backend.cpus_per_worker": spec.resources.cpus_per_trial,
        "backend.checkpoint_points": spec.checkpoint_points,
        "backend.storage_path": tune_storage(spec),
        "tracking.enabled": spec.tracking.enabled,
        "tracking.uri": spec.tracking.uri,
        "tracking.experiment": spec.tracking.experiment,
        "overwrite": True,
    }
    for key, value in fixed.items():
        set_dotted(data, key, value, key)
    # Trial threads follow the CPUs the trial holds unless the base config sets them.
    data.setdefault("train", {}).setdefault("threads", max(1, int(spec.resources.cpus_per_trial)))
    # A shipped config's own backend.address would bypass the sweep's; the sweep connects.
    data["backend"].pop("address", None)
    # Trials run in other processes and folders (Tune changes into the trial's folder): every
    # path and the MLflow store are pinned to what they mean here.
    pinned = pin_shared_paths(validate_mapping(data, RunConfig, f"sweep {spec.name!r}: base"))
    data["data"] = pinned.data.model_dump(mode="json")
    data["tracking"] = pinned.tracking.model_dump(mode="json")
    return data


def trial_config(
    base: dict[str, Any],
    spec: SweepSpec,
    strategy: str,
    params: dict[str, Any],
    budget: float,
    seed: int,
    output_dir: Path,
    name: str,
    fixed: dict[str, Any] | None = None,
) -> RunConfig:
    """One trial's validated run config: base + strategy settings + sampled params + budget.

    ``fixed`` holds settings the sweep supplies itself, e.g. a prepared folder. The strategy's
    parameters are resolved too, so a bad one fails before anything runs.
    """
    data = copy.deepcopy(base)
    data["strategy"] = {"name": strategy}
    settings = {**spec.strategies[strategy].settings, **(fixed or {}), **params}
    for key, value in settings.items():
        set_dotted(data, key, value, f"strategies.{strategy}: {key}")
    data["budget"] = {"rst_seconds": budget}
    data["seed"] = seed
    data["output_dir"] = str(output_dir)
    data["name"] = name
    cfg = validate_mapping(data, RunConfig, f"sweep {spec.name!r}, strategy {strategy!r}")
    resolve_strategy(cfg)
    return cfg


def domain_values(domain: Any) -> list[Any]:
    """Values that cover a domain's extremes: every listed value, or a range's two ends."""
    if not isinstance(domain, dict):
        return [domain]
    ((kind, args),) = domain.items()
    if kind in {"grid", "choice"}:
        return list(args)
    if kind == "randn":
        return [args[0]]
    return [args[0], args[1]]


def check_trial_configs(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Fail before anything runs when some strategy's settings or space make an invalid config:
    each space key is tried at its extremes with the other keys at their first value."""
    budget = spec.budgets[0].seconds
    for strategy, entry in spec.strategies.items():
        first = {key: domain_values(domain)[0] for key, domain in entry.space.items()}
        samples = [first] + [
            first | {key: value}
            for key, domain in entry.space.items()
            for value in domain_values(domain)[1:]
        ]
        for sample in samples:
            trial_config(
                base, spec, strategy, sample, budget, spec.final.first_seed, Path("check"), "check"
            )


def tuning_seed(spec: SweepSpec) -> int:
    """Tuning trials train with their own seed, never a final one: the final mean holds no run
    that won the selection."""
    return spec.search.train_seed


def preparation_config(
    spec: SweepSpec, base: dict[str, Any], stage: Stage, parent_run_id: str | None = None
) -> RunConfig:
    """The run config a preparation stage prepares for: the strategy's settings, the budget,
    the tuning seed (its trials' data order). Its pretraining run (e.g. RHO-loss's IL model) is
    tracked as a child of ``parent_run_id`` (phase ``prepare``, in the sweep's store);
    untracked without a parent."""
    assert stage.strategy is not None
    folder = preparation_dir(spec, stage.budget, stage.strategy)
    seed = tuning_seed(spec)
    cfg = trial_config(
        base, spec, stage.strategy, {}, stage.budget, seed, folder, f"{spec.name}-{stage.key}"
    )
    if parent_run_id is None:
        tracking = cfg.tracking.model_copy(update={"enabled": False})
    else:
        meta = {
            "strategy": stage.strategy,
            "phase": schema.PHASE_PREPARE,
            "seed": seed,
            "budget": stage.budget,
            "stage": stage.key,
        }
        tags = child_tags(spec.name, meta)
        run_name = tags.pop(schema.MLFLOW_RUN_NAME)
        tracking = cfg.tracking.model_copy(
            update={"parent_run_id": parent_run_id, "run_name": run_name, "tags": tags}
        )
    return cfg.model_copy(update={"tracking": tracking})


def rst_plan(spec: SweepSpec, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the trial plan: stage, trials and the RST each stage would spend at most."""
    counts = spec.tuning_trials()
    rows = []
    for stage in stages(spec):
        if stage.kind == "prepare":
            preparation = preparation_for(preparation_config(spec, base, stage))
            assert preparation is not None
            rst = preparation.budget_rst_seconds()
            rows.append({"stage": stage.key, "trials": 1, "rst_seconds": rst})
        elif stage.kind == "tune":
            names = [stage.strategy] if stage.strategy else spec.strategy_order()
            trials = sum(counts[name] for name in names)
            rows.append(
                {"stage": stage.key, "trials": trials, "rst_seconds": trials * stage.budget}
            )
        elif stage.kind == "final":
            trials = len(spec.strategies) * spec.final.seeds
            rows.append(
                {"stage": stage.key, "trials": trials, "rst_seconds": trials * stage.budget}
            )
        else:  # fine-tuning is not pretraining compute: it is not charged to RST
            checkpoints = len(spec.strategies) * spec.final.seeds
            trials = checkpoints * sum(len(d.tasks or []) for d in spec.downstream)
            rows.append({"stage": stage.key, "trials": trials, "rst_seconds": 0.0})
    return rows


def format_plan(spec: SweepSpec, base: dict[str, Any]) -> str:
    """The dry-run text: the protocol, every stage, and the total RST the sweep would spend."""
    rows = rst_plan(spec, base)
    total = sum(row["rst_seconds"] for row in rows)
    lines = [
        f"sweep {spec.name!r}: base {spec.base!r}, budgets "
        f"{[budget_label(b.seconds) for b in spec.budgets]} RST s, searcher "
        f"{spec.search.searcher}, tuning seed {tuning_seed(spec)}, {spec.final.seeds} final seeds "
        f"{spec.final_seeds()}, "
        f"split seed {spec.split_seed}, scheduler {spec.search.scheduler}",
        f"tuning trials per strategy per budget: {spec.tuning_trials()}"
        + ("  (UNEQUAL TUNING ALLOWED)" if spec.search.allow_unequal_tuning else ""),
        f"resources per trial: {spec.resources.workers} worker(s) x "
        f"{spec.resources.cpus_per_trial:g} CPU, {spec.resources.gpus_per_trial} GPU each; "
        f"{spec.resources.max_concurrent} trial(s) at once",
        "",
        f"{'stage':<36} {'trials':>6} {'RST s (at most)':>16} {'RST h':>8}",
    ]
    for row in rows:
        lines.append(
            f"{row['stage']:<36} {row['trials']:>6} {row['rst_seconds']:>16.1f} "
            f"{row['rst_seconds'] / 3600:>8.2f}"
        )
    lines.append(
        f"{'total':<36} {sum(r['trials'] for r in rows):>6} {total:>16.1f} {total / 3600:>8.2f}"
    )
    for name in spec.strategy_order():
        space = spec.strategies[name].space
        shown = ", ".join(f"{k}: {v}" for k, v in space.items()) or "(nothing tuned)"
        lines.append(f"space {name}: {shown}")
    return "\n".join(lines)
