"""The sweep's tracking: what its parent and child runs are tagged with, over the tracker's
``SweepRuns`` (one parent run, one nested child run per Tune trial, found again by trial id).

The store itself is behind ``ntng_ray.track.tracker``; this module knows the sweep file and
turns it into the parent's tags, params and files, and a trial into its child's tags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from ntng_ray.config import TrackingConfig
from ntng_ray.sweep.spec import SweepSpec
from ntng_ray.track import schema
from ntng_ray.track.tracker import SweepRuns, flatten_params, open_sweep_runs


class SweepTracker:
    """The sweep's store, experiment and parent run, with the sweep's tagging on top."""

    def __init__(self, tracking: TrackingConfig, parent_run_id: str | None = None) -> None:
        self.runs: SweepRuns = open_sweep_runs(tracking, parent_run_id)

    @property
    def uri(self) -> str:
        return self.runs.uri

    @property
    def parent_run_id(self) -> str | None:
        return self.runs.parent_run_id

    def start_parent(self, spec: SweepSpec, trials_by_strategy: dict[str, int]) -> str:
        """Create the parent run with the protocol as tags and the sweep file as an artifact."""
        params = flatten_params(spec.model_dump(mode="json", exclude={"strategies"}))
        sweep_file = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        return self.runs.start_parent(
            parent_tags(spec, trials_by_strategy), params, {"sweep.yaml": sweep_file}
        )

    def reopen_parent(self) -> None:
        self.runs.reopen_parent()

    def end_parent(self, status: str, metrics: Mapping[str, float]) -> None:
        self.runs.end_parent(status, metrics)

    def child_run(self, trial_id: str, tags: Mapping[str, str]) -> str:
        """The trial's child run: the one it made before a restart, else a new one."""
        return self.runs.child_run(trial_id, tags)

    def find_child(self, trial_id: str) -> str | None:
        return self.runs.find_child(trial_id)

    def close_child(self, trial_id: str, outcome: str) -> None:
        """Record how a trial ended; a child still RUNNING is ended with the matching status."""
        self.runs.close_child(trial_id, outcome)

    def tag_child(self, trial_id: str, tags: Mapping[str, str]) -> None:
        self.runs.tag_child(trial_id, tags)

    def kill_running_children(self) -> int:
        """Mark children left RUNNING (their trials were cut off) KILLED; returns how many."""
        return self.runs.kill_running_children()


def parent_tags(spec: SweepSpec, trials_by_strategy: dict[str, int]) -> dict[str, str]:
    """The parent run's tags: the protocol the report reads back and checks."""
    return {
        schema.MLFLOW_RUN_NAME: spec.name,
        schema.TAG_SWEEP: spec.name,
        schema.TAG_ROLE: schema.ROLE_SWEEP,
        schema.TAG_PROTOCOL_SEARCHER: spec.search.searcher,
        schema.TAG_PROTOCOL_TRIALS: str(spec.search.trials),
        schema.TAG_PROTOCOL_TRIALS_BY_STRATEGY: json.dumps(trials_by_strategy),
        schema.TAG_PROTOCOL_SEEDS: str(spec.final.seeds),
        schema.TAG_PROTOCOL_ALLOW_UNEQUAL_TUNING: str(spec.search.allow_unequal_tuning).lower(),
        schema.TAG_PROTOCOL_SCHEDULER: spec.search.scheduler,
        schema.TAG_PROTOCOL_SPLIT_SEED: str(spec.split_seed),
        schema.TAG_BUDGETS: json.dumps(sorted(b.seconds for b in spec.budgets)),
        schema.TAG_STRATEGIES: json.dumps(spec.strategy_order()),
        schema.TAG_SWEEP_SHA256: spec.content_hash(),
    }


def trial_number(trial_id: str) -> int | None:
    """A trial's 1-based number in its Tune experiment, from its id (``..._00002`` -> 3)."""
    suffix = trial_id.rsplit("_", 1)[-1]
    return int(suffix) + 1 if suffix.isdigit() else None


def child_run_name(meta: Mapping[str, Any]) -> str:
    """A child's short name, strategy first: ``layer_dropping · final · s1``,
    ``baseline · tune · 3`` (the trial's number within its strategy's tuning)."""
    phase = meta["phase"]
    if phase == schema.PHASE_FINAL:
        return f"{meta['strategy']} · {phase} · s{meta['seed']}"
    if phase == schema.PHASE_TUNE and meta.get("index") is not None:
        return f"{meta['strategy']} · {phase} · {meta['index']}"
    return f"{meta['strategy']} · {phase}"


def child_tags(spec_name: str, meta: dict[str, Any]) -> dict[str, str]:
    """The tags a child run is created with: what the report groups and compares by."""
    return {
        schema.MLFLOW_RUN_NAME: child_run_name(meta),
        schema.TAG_SWEEP: spec_name,
        schema.TAG_STRATEGY: meta["strategy"],
        schema.TAG_PHASE: meta["phase"],
        schema.TAG_SEED: str(meta["seed"]),
        schema.TAG_BUDGET: repr(float(meta["budget"])),
        schema.TAG_STAGE: meta["stage"],
    }
