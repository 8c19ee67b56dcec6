"""One sweep trial as a Ray Tune function trainable.

A trial whose run is one CPU worker runs the loop in the trial's own process: a Ray Train worker
group would cost more start-up than a tiny run trains. Anything bigger (several workers, GPUs)
fits a Ray Train ``TorchTrainer`` inside the trial, whose reports reach Tune through
``TuneReportCallback``, the pinned Ray's supported way to run Train inside Tune. Which path ran
is recorded on the trial's MLflow run (``ntng.launch``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from ray import tune

from ntng_ray.config import RunConfig, TrackingConfig
from ntng_ray.sweep.plan import trial_config, trial_output_dir
from ntng_ray.sweep.spec import SweepSpec
from ntng_ray.sweep.tracking import SweepTracker, child_tags, trial_number
from ntng_ray.track import schema
from ntng_ray.train.progress_reports import ProgressReports, trial_reports
from ntng_ray.train.ray_launch import pretrain_on_ray
from ntng_ray.train.run import pretrain_in_process, uses_ray

IN_PROCESS = "in_process"
RAY_TRAIN = "ray_train"


def run_trial(config: dict[str, Any], stage: dict[str, Any]) -> None:
    """The trainable: ``config["trial"]`` holds strategy, seed and params; ``stage`` the rest.

    The child run is made (or found again, after a restart) before anything else, so a trial
    that fails, even on its sampled configuration, is visible in MLflow as failed.
    """
    started = time.monotonic()
    trial = config["trial"]
    trial_id = tune.get_context().get_trial_id()
    spec = SweepSpec.model_validate(stage["spec"])
    tracker, run_id = None, None
    if stage["parent_run_id"] is not None:
        tracker = SweepTracker(TrackingConfig(**stage["tracking"]), stage["parent_run_id"])
        meta = {
            **trial,
            "phase": stage["phase"],
            "budget": stage["budget"],
            "stage": stage["key"],
            "index": trial.get("index") or trial_number(trial_id),
        }
        run_id = tracker.child_run(trial_id, child_tags(spec.name, meta))
    try:
        cfg = trial_config(
            stage["base"],
            spec,
            trial["strategy"],
            trial["params"],
            stage["budget"],
            trial["seed"],
            trial_output_dir(Path(stage["root"]), stage["key"], trial_id),
            f"{spec.name}-{stage['key']}-{trial['strategy']}-s{trial['seed']}-{trial_id}",
            stage["fixed"].get(trial["strategy"]),
        )
        launch = RAY_TRAIN if uses_ray(cfg) else IN_PROCESS
        if tracker is not None:
            tracker.tag_child(trial_id, {schema.TAG_LAUNCH: launch})
        reporter = trial_reports(stage["budget"], spec.guards.max_loss)
        summary = _train(cfg, launch, reporter, run_id)
    except Exception:
        if tracker is not None:
            tracker.close_child(trial_id, schema.OUTCOME_FAILED)
        raise
    if tracker is not None:
        tracker.tag_child(trial_id, {schema.TAG_OUTCOME: schema.OUTCOME_COMPLETED})
    result = final_result(summary, stage["budget"])
    tune.report(result | {schema.RESULT_TRIAL_WALL_SECONDS: time.monotonic() - started})


def _train(cfg: RunConfig, launch: str, reporter: ProgressReports, run_id: str | None) -> dict:
    if launch == IN_PROCESS:
        return _in_process(cfg, reporter, run_id)
    from ray.tune.integration.ray_train import TuneReportCallback

    return pretrain_on_ray(cfg, mlflow_run_id=run_id, callbacks=[TuneReportCallback()])


def _in_process(cfg: RunConfig, reporter: ProgressReports, run_id: str | None) -> dict[str, Any]:
    """The loop in this process; checkpoints go to Tune, a restarted trial continues from one."""
    checkpoint = tune.get_checkpoint()
    opened = checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None)
    with opened as folder:
        return pretrain_in_process(
            cfg,
            [reporter],
            mlflow_run_id=run_id,
            checkpoint_sink=reporter.checkpoint,
            restore_from=Path(folder) if folder else None,
        )


def final_result(summary: dict[str, Any], budget: float) -> dict[str, Any]:
    """The trial's last result: final losses (the searcher's metric), RST spent, steps."""
    return {
        schema.RESULT_VAL_LOSS: summary["final_validation_loss"],
        schema.RESULT_TRAIN_EVAL_LOSS: summary["final_train_eval_loss"],
        schema.RESULT_FINAL_VALIDATION_LOSS: summary["final_validation_loss"],
        schema.RESULT_FINAL_TRAIN_EVAL_LOSS: summary["final_train_eval_loss"],
        schema.RESULT_RST_SECONDS: summary["rst_seconds"],
        schema.RESULT_BUDGET: budget,
        schema.RESULT_RST_PROGRESS: summary["rst_progress"],
        schema.RESULT_STEPS: summary["steps"],
        schema.RESULT_LOOP_WALL_SECONDS: summary["wall_seconds"],
        schema.RESULT_PREPARATION_RST_SECONDS: summary["preparation_rst_seconds"],
        schema.RESULT_FINAL: 1,
    }
