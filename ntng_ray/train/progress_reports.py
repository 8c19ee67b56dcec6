"""One progress reporter: loop records to Ray, as Tune's stoppers and searchers read them.

The same class serves both paths a run takes under Ray, parameterised by the report function
and Checkpoint class of the path:

- an in-process sweep trial (``ray.tune.report``, ``train_beats`` on): every validation point;
  a train loss that looks diverged is reported at once with ``val_loss`` NaN (so the
  divergence stopper acts and a searcher never takes a diverged point for a good one), other
  train losses as a beat every ``PROGRESS_EVERY_S`` seconds;
- a Ray Train worker (``ray.train.report``, ``named_checkpoints`` on): validation points from
  every rank (``report`` is a barrier) and checkpoints kept by Ray Train as ``step-NNNNNNN``.

Every result carries RST spent and budgeted, the step and the latest validation loss.
Ray itself is not imported here: the caller hands in its functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntng_ray.track import schema

PROGRESS_EVERY_S = 10.0


def progress_metrics(source: dict[str, Any], budget: float, val_loss: float) -> dict[str, Any]:
    """What every report to Ray carries, under the names Tune's stoppers and searchers read:
    RST spent and budgeted, the step, and the latest validation loss."""
    return {
        schema.RESULT_RST_SECONDS: source["rst_seconds"],
        schema.RESULT_RST_PROGRESS: source["rst_progress"],
        schema.RESULT_STEP: source["step"],
        schema.RESULT_BUDGET: budget,
        schema.RESULT_VAL_LOSS: val_loss,
    }


class ProgressReports:
    """Loop records and checkpoints to Ray (see the module's docstring for the two paths).

    ``report`` is ``ray.tune.report`` or ``ray.train.report``, ``checkpoint_class`` the matching
    ``Checkpoint``; ``max_loss`` is the divergence bound train-loss beats are checked against.
    """

    def __init__(
        self,
        budget: float,
        report: Callable[..., None],
        checkpoint_class: Any,
        *,
        train_beats: bool = False,
        max_loss: float = math.inf,
        named_checkpoints: bool = False,
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.budget = budget
        self.report = report
        self.checkpoint_class = checkpoint_class
        self.train_beats = train_beats
        self.max_loss = max_loss
        self.named_checkpoints = named_checkpoints
        self.every_s = every_s
        self.val_loss = math.nan
        self.last_beat = 0.0

    def __call__(self, record: dict[str, Any]) -> None:
        if record["event"] == "validation":
            self.val_loss = record["loss"]
            extra = {
                schema.RESULT_TRAIN_EVAL_LOSS: record["train_eval_loss"],
                schema.RESULT_PROGRESS_POINT: record["progress"],
            }
            self._report(progress_metrics(record, self.budget, self.val_loss) | extra)
            return
        if not self.train_beats:
            return
        loss = record["loss"]
        bad = not math.isfinite(loss) or loss > self.max_loss
        if bad:
            self.val_loss = math.nan
        if bad or time.monotonic() - self.last_beat >= self.every_s:
            metrics = progress_metrics(record, self.budget, self.val_loss)
            self._report(metrics | {schema.RESULT_TRAIN_LOSS: loss})

    def checkpoint(self, folder: Path, progress: dict[str, Any]) -> None:
        """The loop's checkpoint sink: Ray keeps it, a restarted run continues from it."""
        metrics = progress_metrics(progress, self.budget, self.val_loss)
        checkpoint = self.checkpoint_class.from_directory(str(folder))
        if self.named_checkpoints:
            self._report(
                progress | metrics,
                checkpoint=checkpoint,
                checkpoint_dir_name=f"step-{progress['step']:07d}",
            )
        else:
            self._report(metrics, checkpoint=checkpoint)

    def _report(self, metrics: dict[str, Any], **kwargs: Any) -> None:
        self.report(metrics, **kwargs)
        self.last_beat = time.monotonic()


def trial_reports(budget: float, max_loss: float) -> ProgressReports:
    """An in-process sweep trial's reports to Ray Tune."""
    from ray import tune

    return ProgressReports(
        budget, tune.report, tune.Checkpoint, train_beats=True, max_loss=max_loss
    )


def worker_reports(budget: float) -> ProgressReports:
    """A Ray Train worker's reports to Ray Train."""
    import ray.train

    return ProgressReports(budget, ray.train.report, ray.train.Checkpoint, named_checkpoints=True)
