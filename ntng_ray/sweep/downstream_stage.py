"""The sweep's optional downstream stage: fine-tune every final checkpoint on a suite's tasks.

One Ray Tune trial per checkpoint and task (resources per trial from the sweep file), each a
child run of the sweep's parent (``ntng.phase=finetune``) linked to its pretraining run. When
a checkpoint's tasks are done, the driver logs one ``ntng.phase=downstream`` run for it with
the suite's average over those tasks (``<suite>_average``), which the report's downstream
column reads. Fine-tuning is not pretraining compute and is not charged to RST.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ray import tune

from ntng_ray.config import TrackingConfig
from ntng_ray.downstream.finetune import SCORES, finetune_suite
from ntng_ray.downstream.metrics import suite_average
from ntng_ray.downstream.settings import FinetuneSettings
from ntng_ray.sweep.spec import DownstreamStage
from ntng_ray.sweep.tracking import SweepTracker
from ntng_ray.track import schema

FINETUNE_PHASE = schema.PHASE_FINETUNE
DOWNSTREAM_PHASE = schema.PHASE_DOWNSTREAM


def finetune_cases(checkpoints: list[dict[str, Any]], stages: list[DownstreamStage]) -> list[dict]:
    """Every (checkpoint, suite, task) the stage fine-tunes, as Tune trial configs."""
    return [
        {**checkpoint, "suite_index": index, "suite": stage.suite, "task": task}
        for checkpoint in checkpoints
        for index, stage in enumerate(stages)
        for task in stage.tasks or []
    ]


def run_finetune_trial(config: dict[str, Any], stage: dict[str, Any]) -> None:
    """The trainable: fine-tune one checkpoint on one task and log it as a child run."""
    case = config["trial"]
    trial_id = tune.get_context().get_trial_id()
    downstream = DownstreamStage.model_validate(stage["downstream"][case["suite_index"]])
    tracker = run_id = None
    if stage["parent_run_id"] is not None:
        tracker = SweepTracker(TrackingConfig(**stage["tracking"]), stage["parent_run_id"])
        run_id = tracker.child_run(trial_id, _tags(stage, case, FINETUNE_PHASE) | _task_tag(case))
    try:
        scores = finetune_suite(
            Path(case["checkpoint"]),
            downstream.suite,
            [case["task"]],
            Path(downstream.data_dir).expanduser() if downstream.data_dir else None,
            FinetuneSettings.model_validate(downstream.settings),
            Path(stage["root"]) / "downstream" / stage["key"] / trial_id,
        )
    except Exception:
        if tracker is not None:
            tracker.close_child(trial_id, schema.OUTCOME_FAILED)
        raise
    result = scores["tasks"][case["task"]]
    if tracker is not None:
        metrics = {f"{case['task']}.{k}": v for k, v in result["metrics"].items()}
        tracker.runs.complete_run(
            run_id,
            metrics | {schema.METRIC_SCORE: result["score"]},
            {schema.TAG_OUTCOME: schema.OUTCOME_COMPLETED},
        )
    tune.report(
        {
            schema.RESULT_SCORE: result["score"],
            schema.RESULT_N_EVAL: result["n_eval"],
            schema.RESULT_FINAL: 1,
        }
    )


def _tags(stage: dict[str, Any], case: dict[str, Any], phase: str) -> dict[str, str]:
    return {
        schema.TAG_SWEEP: stage["spec_name"],
        schema.TAG_PHASE: phase,
        schema.TAG_STRATEGY: case["strategy"],
        schema.TAG_SEED: str(case["seed"]),
        schema.TAG_BUDGET: repr(float(stage["budget"])),
        schema.TAG_SUITE: case["suite"],
        schema.TAG_PRETRAIN_RUN_ID: case["run_id"] or "",
        schema.TAG_STAGE: stage["key"],
    }


def _task_tag(case: dict[str, Any]) -> dict[str, str]:
    return {
        schema.TAG_TASK: case["task"],
        schema.MLFLOW_RUN_NAME: f"{case['task']}-{case['strategy']}",
    }


def log_suite_averages(
    tracker: SweepTracker, stage: dict[str, Any], results: list[tuple[dict, Path]]
) -> dict[str, dict[str, float | None]]:
    """One downstream run per checkpoint and suite with the suite's average over its tasks.

    ``results`` pairs each completed fine-tuning case with its folder (holding scores.json).
    Returns {pretrain run id: {suite: average}}.
    """
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for case, folder in results:
        key = (case["run_id"] or case["checkpoint"], case["suite"])
        grouped[key] = case
        task_result = _read_scores(folder)["tasks"][case["task"]]
        scores[key][case["task"]] = task_result["score"]
    averages: dict[str, dict[str, float | None]] = defaultdict(dict)
    for key, case in grouped.items():
        average, averaged = suite_average(case["suite"], scores[key])
        averages[key[0]][case["suite"]] = average
        tags = _tags(stage, case, DOWNSTREAM_PHASE) | {
            schema.TAG_AVERAGED_TASKS: ",".join(averaged),
            schema.MLFLOW_RUN_NAME: f"{case['suite']}-{case['strategy']}-s{case['seed']}",
        }
        suite = case["suite"]
        values = {
            schema.suite_task_metric(suite, task): score for task, score in scores[key].items()
        }
        if average is not None and math.isfinite(average):
            values[schema.suite_average_metric(suite)] = average
        tracker.runs.record_run(tags, values, schema.FINISHED)
    return dict(averages)


def _read_scores(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SCORES).read_text())
