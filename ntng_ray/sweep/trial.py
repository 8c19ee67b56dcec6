"""One sweep trial as a Ray Tune function trainable.

A trial whose run is one CPU worker runs the loop in the trial's own process: a Ray Train worker
group would cost more start-up than a tiny run trains. Anything bigger (several workers, GPUs)
fits a Ray Train ``TorchTrainer`` inside the trial, whose reports reach Tune through
``TuneReportCallback``, the pinned Ray's supported way to run Train inside Tune. Which path ran
is recorded on the trial's MLflow run (``ntng.launch``).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Checkpoint

from ntng_ray.config import RunConfig, TrackingConfig
from ntng_ray.sweep.plan import trial_config, trial_output_dir
from ntng_ray.sweep.spec import SweepSpec
from ntng_ray.sweep.stoppers import BUDGET, FINAL, RST, TRAIN_LOSS, VAL_LOSS
from ntng_ray.sweep.tracking import LAUNCH_TAG, OUTCOME_TAG, SweepTracker, child_tags
from ntng_ray.train.ray_launch import pretrain_on_ray, progress_metrics
from ntng_ray.train.run import pretrain_in_process, uses_ray

IN_PROCESS = "in_process"
RAY_TRAIN = "ray_train"
PROGRESS_EVERY_S = 10.0


class TuneReporter:
    """Loop records to Tune: every validation point, train losses that look diverged (so the
    divergence stopper acts at once), and otherwise a progress beat every few seconds.

    Every result carries what Ray Train workers report too (``progress_metrics``): ``val_loss``
    (the searcher's metric; NaN once the run diverged, so a searcher never takes a diverged
    point for a good one) and the RST spent and budgeted.
    """

    def __init__(self, budget: float, max_loss: float) -> None:
        self.budget = budget
        self.max_loss = max_loss
        self.val_loss = math.nan
        self.last_beat = 0.0

    def __call__(self, record: dict[str, Any]) -> None:
        if record["event"] == "validation":
            self.val_loss = record["loss"]
            extra = {
                "train_eval_loss": record["train_eval_loss"],
                "progress_point": record["progress"],
            }
            self._report(record, extra)
            return
        loss = record["loss"]
        bad = not math.isfinite(loss) or loss > self.max_loss
        if bad:
            self.val_loss = math.nan
        if bad or time.monotonic() - self.last_beat >= PROGRESS_EVERY_S:
            self._report(record, {TRAIN_LOSS: loss})

    def checkpoint(self, folder: Path, progress: dict[str, Any]) -> None:
        """The loop's checkpoint sink: Tune keeps it, a restarted trial continues from it."""
        self._report(progress, {}, checkpoint=Checkpoint.from_directory(folder))

    def _report(self, source: dict[str, Any], extra: dict[str, Any], **kwargs: Any) -> None:
        tune.report(progress_metrics(source, self.budget, self.val_loss) | extra, **kwargs)
        self.last_beat = time.monotonic()


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
        meta = {**trial, "phase": stage["phase"], "budget": stage["budget"], "stage": stage["key"]}
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
            tracker.tag_child(trial_id, {LAUNCH_TAG: launch})
        reporter = TuneReporter(stage["budget"], spec.guards.max_loss)
        summary = _train(cfg, launch, reporter, run_id)
    except Exception:
        if tracker is not None:
            tracker.close_child(trial_id, "failed")
        raise
    if tracker is not None:
        tracker.tag_child(trial_id, {OUTCOME_TAG: "completed"})
    result = final_result(summary, stage["budget"])
    tune.report(result | {"trial_wall_seconds": time.monotonic() - started})


def _train(cfg: RunConfig, launch: str, reporter: TuneReporter, run_id: str | None) -> dict:
    if launch == IN_PROCESS:
        return _in_process(cfg, reporter, run_id)
    from ray.tune.integration.ray_train import TuneReportCallback

    return pretrain_on_ray(cfg, mlflow_run_id=run_id, callbacks=[TuneReportCallback()])


def _in_process(cfg: RunConfig, reporter: TuneReporter, run_id: str | None) -> dict[str, Any]:
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
        VAL_LOSS: summary["final_validation_loss"],
        "train_eval_loss": summary["final_train_eval_loss"],
        "final_validation_loss": summary["final_validation_loss"],
        "final_train_eval_loss": summary["final_train_eval_loss"],
        RST: summary["rst_seconds"],
        BUDGET: budget,
        "rst_progress": summary["rst_progress"],
        "steps": summary["steps"],
        "loop_wall_seconds": summary["wall_seconds"],
        "preparation_rst_seconds": summary["preparation_rst_seconds"],
        FINAL: 1,
    }
