"""The sweep file: what is compared, at which budgets, searched how, and on what resources.

The fair protocol is checked here, before anything runs: every strategy (the baseline included)
gets the same number of tuning trials from the same searcher at every budget, and a search
space may only touch what tuning is allowed to touch (learning rate, schedule, the method's own
parameters), never the data split, the budget or the training seed, which the protocol fixes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ntng_ray.config import (
    BudgetConfig,
    Section,
    TrackingConfig,
    apply_overrides,
    read_yaml_mapping,
    validate_mapping,
)
from ntng_ray.errors import NtngError

SHIPPED_SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
BASELINE = "baseline"
# The config sections a search space may tune; everything else is fixed by the protocol.
TUNABLE_SECTIONS = ("optimizer", "schedule", "strategy")
# Ray Tune's vocabulary: name -> number of arguments (None: a list of any length).
DOMAINS: dict[str, int | None] = {
    "grid": None,
    "choice": None,
    "uniform": 2,
    "quniform": 3,
    "loguniform": 2,
    "qloguniform": 3,
    "randint": 2,
    "randn": 2,
}
SEARCHERS = ("grid", "random", "optuna", "hyperopt")
SEARCHER_PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}


class StrategyEntry(Section):
    """One strategy under comparison: fixed settings plus the space its trials search."""

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Fixed dotted settings for this strategy's trials, e.g. strategy.beta: 1.0.",
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted key -> a value or {grid|choice|uniform|loguniform|...: [...]}.",
    )
    trials: int | None = Field(
        None,
        ge=1,
        description="Tuning trials for this strategy alone (needs allow_unequal_tuning).",
    )

    @field_validator("space")
    @classmethod
    def _space_vocabulary(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, domain in value.items():
            check_tunable_key(key)
            if isinstance(domain, dict):
                check_domain(key, domain)
        return value

    @field_validator("settings", mode="before")
    @classmethod
    def _settings_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        flat = dict(dotted_items(value))
        for key in flat:
            check_tunable_key(key)
        return flat


class SearchSettings(Section):
    searcher: Literal["grid", "random", "optuna", "hyperopt"] = Field(
        "random", description="How tuning trials pick points: the same searcher for every strategy."
    )
    trials: int = Field(4, ge=1, description="Tuning trials per strategy per budget.")
    scheduler: Literal["none", "asha"] = Field(
        "none",
        description="none (the study's setting: early losses mislead) or asha (labelled).",
    )
    allow_unequal_tuning: bool = Field(
        False, description="Allow strategies different trial counts; shown in the report."
    )
    seed: int = Field(0, description="Seeds the searcher, so a sweep samples the same points.")
    train_seed: int = Field(
        1000,
        ge=0,
        description=(
            "Training seed of every tuning trial; never a final seed, so the selected tuning run "
            "is not counted again among the finals."
        ),
    )

    @field_validator("searcher")
    @classmethod
    def _searcher_installed(cls, value: str) -> str:
        package = SEARCHER_PACKAGES.get(value)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"searcher {value!r} needs the {package} package: pip install {package}"
            )
        return value


class FinalSettings(Section):
    seeds: int = Field(2, ge=1, description="Training seeds each strategy's best config runs with.")
    first_seed: int = Field(0, ge=0, description="Final seeds are first_seed, first_seed + 1, ...")


class ResourceSettings(Section):
    cpus_per_trial: float = Field(
        1.0, gt=0, description="CPUs per trial (per worker with Ray Train)."
    )
    gpus_per_trial: int = Field(0, ge=0, le=1, description="GPUs per worker (0 or 1).")
    workers: int = Field(1, ge=1, description="Ray Train workers per trial.")
    max_concurrent: int = Field(2, ge=1, description="Trials running at once.")


class GuardSettings(Section):
    budget_tolerance: float = Field(
        0.05, ge=0, le=1, description="A trial past budget * (1 + this) is stopped as over budget."
    )
    max_loss: float = Field(
        20.0, gt=0, description="A trial whose loss is NaN or above this is stopped as diverged."
    )


class DownstreamStage(Section):
    """Fine-tune every final-phase checkpoint on a suite's tasks: one Tune trial per checkpoint
    and task; the suite average per checkpoint feeds the report's downstream column."""

    suite: Literal["glue", "superglue"] = Field(description="The benchmark suite.")
    tasks: list[str] | None = Field(
        None,
        validate_default=True,
        description="Task names as the benchmark spells them; default: the whole suite.",
    )
    data_dir: str | None = Field(
        None, description="Folder in the benchmark's layout (<TASK>/dev.tsv ...); default: hub."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Fine-tuning settings (`ntng finetune` key=value)."
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per fine-tuning trial.")
    gpus_per_trial: int = Field(0, ge=0, le=1, description="GPUs per fine-tuning trial.")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """Task names resolved to the benchmark's spelling; None becomes the whole suite."""
        from ntng_ray.downstream.tasks import resolve_tasks

        suite = info.data.get("suite")
        return value if suite is None else [spec.name for spec in resolve_tasks(suite, value)]

    @field_validator("settings")
    @classmethod
    def _valid_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ntng_ray.downstream.settings import FinetuneSettings

        FinetuneSettings.model_validate(value)
        return value

    @field_validator("data_dir")
    @classmethod
    def _existing_folder(cls, value: str | None) -> str | None:
        """Made absolute: trials validate the sweep again from their own working folders."""
        if value is None:
            return None
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"{value!r} is not a folder")
        return str(path)


class SweepSpec(Section):
    """A whole comparison: base run config, budgets, strategies and the protocol's settings."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The sweep's name.")
    base: str = Field(description="Run config: a shipped name (see `ntng config`) or a YAML path.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted settings applied to the base config."
    )
    budgets: list[BudgetConfig] = Field(
        min_length=1, description="RST budgets, each a separate run."
    )
    strategies: dict[str, StrategyEntry] = Field(min_length=1, description="Strategies compared.")
    search: SearchSettings = Field(default_factory=SearchSettings)
    final: FinalSettings = Field(default_factory=FinalSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    guards: GuardSettings = Field(default_factory=GuardSettings)
    split_seed: int = Field(1234, description="Fixes the data split for every trial of the sweep.")
    checkpoint_points: list[float] = Field(
        default_factory=lambda: [0.5],
        description="Progress points where trials checkpoint, so a resumed sweep continues them.",
    )
    output_dir: str = Field(
        "runs/sweeps",
        description="Trial folders, IL data and the sweep state (shared on clusters).",
    )
    storage_path: str | None = Field(
        None, description="Ray Tune/Train storage (folder or s3://); default: under output_dir."
    )
    address: str | None = Field(None, description="Ray cluster address; default: $RAY_ADDRESS.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    downstream: list[DownstreamStage] = Field(
        default_factory=list, description="Optional fine-tuning of the final checkpoints."
    )
    overwrite: bool = Field(False, description="Start over when this sweep's folder exists.")

    @field_validator("strategies")
    @classmethod
    def _baseline_present(cls, value: dict[str, StrategyEntry]) -> dict[str, StrategyEntry]:
        from ntng_ray.strategies import strategy_names

        unknown = [name for name in value if name not in strategy_names()]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; known: {', '.join(strategy_names())}")
        if BASELINE not in value:
            raise ValueError(
                "the baseline must be among the strategies: methods are compared to it"
            )
        return value

    @field_validator("budgets")
    @classmethod
    def _distinct_budgets(cls, value: list[BudgetConfig]) -> list[BudgetConfig]:
        seconds = [budget.seconds for budget in value]
        if len(set(seconds)) != len(seconds):
            raise ValueError(f"budgets repeat: {seconds} RST seconds")
        return value

    @model_validator(mode="after")
    def _tuning_seed_not_a_final_seed(self) -> SweepSpec:
        if self.search.train_seed in self.final_seeds():
            raise ValueError(
                f"search.train_seed = {self.search.train_seed} is also a final seed "
                f"{self.final_seeds()}: the selected tuning run would be counted again in the "
                "final mean; choose a tuning seed outside the final seeds"
            )
        return self

    @model_validator(mode="after")
    def _fair_tuning(self) -> SweepSpec:
        counts = self.tuning_trials()
        if len(set(counts.values())) > 1 and not self.search.allow_unequal_tuning:
            raise ValueError(
                f"unequal tuning: trials per strategy {counts}; the protocol gives every strategy "
                "the same number of trials (set search.allow_unequal_tuning: true to allow it; "
                "the report then says so)"
            )
        return self

    def tuning_trials(self) -> dict[str, int]:
        """Trials per strategy per budget: the grid's size under the grid searcher."""
        return {name: self._trials_for(name, entry) for name, entry in self.strategies.items()}

    def _trials_for(self, name: str, entry: StrategyEntry) -> int:
        grids = {k: v for k, v in entry.space.items() if isinstance(v, dict) and "grid" in v}
        sampled = [k for k, v in entry.space.items() if isinstance(v, dict) and "grid" not in v]
        where = f"strategies.{name}"
        if self.search.searcher == "grid":
            if sampled:
                raise ValueError(
                    f"{where}.space: {sampled} are sampled, but search.searcher = 'grid' takes "
                    "only {grid: [...]} entries"
                )
            if entry.trials is not None:
                raise ValueError(f"{where}.trials: with the grid searcher the grid sets the count")
            return math.prod(len(v["grid"]) for v in grids.values())
        if grids:
            raise ValueError(
                f"{where}.space: {list(grids)} use grid, which only search.searcher = 'grid' "
                f"takes (searcher is {self.search.searcher!r}); use choice instead"
            )
        return entry.trials if entry.trials is not None else self.search.trials

    def strategy_order(self) -> list[str]:
        """The baseline first, then the methods in the file's order."""
        return [BASELINE, *(name for name in self.strategies if name != BASELINE)]

    def final_seeds(self) -> list[int]:
        return [self.final.first_seed + i for i in range(self.final.seeds)]

    def content_hash(self) -> str:
        """What a resumed sweep must match: everything except where it runs and overwrite."""
        identity = self.model_dump(mode="json", exclude={"address", "overwrite"})
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def dotted_items(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"data": {"a": 1}, "b.c": 2}`` -> ``[("data.a", 1), ("b.c", 2)]``: settings may be written
    nested or dotted (a command-line ``overrides.data.x=1`` arrives nested), never replacing a
    whole section."""
    items = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items += dotted_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def check_tunable_key(key: str) -> None:
    """A search space or setting may touch the optimizer, schedule and strategy parameters only."""
    section, _, rest = key.partition(".")
    if section not in TUNABLE_SECTIONS or not rest or key == "strategy.name":
        raise ValueError(
            f"{key!r} cannot be tuned per strategy: allowed are keys under "
            f"{', '.join(s + '.' for s in TUNABLE_SECTIONS)} (not strategy.name); the data split, "
            "budget and training seed are fixed by the sweep's protocol"
        )


def check_domain(key: str, domain: dict[str, Any]) -> None:
    """One Ray Tune domain, e.g. {loguniform: [1e-4, 1e-2]}, with the right arguments."""
    if len(domain) != 1 or next(iter(domain)) not in DOMAINS:
        raise ValueError(f"{key}: {domain!r} is not a domain; use one of {', '.join(DOMAINS)}")
    kind, args = next(iter(domain.items()))
    if not isinstance(args, list) or not args:
        raise ValueError(f"{key}: {kind} takes a non-empty list, got {args!r}")
    arity = DOMAINS[kind]
    if arity is not None and len(args) != arity:
        raise ValueError(f"{key}: {kind} takes {arity} numbers, got {args!r}")
    if kind in {"uniform", "quniform", "loguniform", "qloguniform", "randint"}:
        if not all(isinstance(a, int | float) for a in args) or not args[0] < args[1]:
            raise ValueError(f"{key}: {kind} needs numbers low < high, got {args!r}")
        if "log" in kind and args[0] <= 0:
            raise ValueError(f"{key}: {kind} needs a positive lower bound, got {args[0]!r}")


def load_sweep(source: str, overrides: list[str] | None = None) -> SweepSpec:
    """Read a sweep file (path or shipped name), apply ``key=value`` overrides, validate it."""
    data = read_sweep_mapping(source)
    apply_overrides(data, list(overrides or []))
    return validate_mapping(data, SweepSpec, f"sweep {source!r}")


def read_sweep_mapping(source: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A sweep file's mapping; ``extends: OTHER`` (a shipped name or a path relative to this
    file) starts from that sweep and overrides it key by key, sections merged."""
    data, stem = read_yaml_mapping(source, "sweep", SHIPPED_SWEEPS)
    data.setdefault("name", stem)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in seen:
        raise NtngError(f"sweep {source!r}: extends {parent!r} again (a cycle: {seen})")
    beside = Path(source).parent / f"{parent}"
    if Path(source).is_file() and beside.is_file():
        parent = str(beside)
    return merge_sections(read_sweep_mapping(str(parent), (*seen, source)), data)


def merge_sections(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: nested mappings merged, anything else replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def shipped_sweep_names() -> list[str]:
    if not SHIPPED_SWEEPS.is_dir():
        raise NtngError(f"no shipped sweeps at {SHIPPED_SWEEPS}; pass a sweep file's path")
    return sorted(p.stem for p in SHIPPED_SWEEPS.glob("*.yaml"))
