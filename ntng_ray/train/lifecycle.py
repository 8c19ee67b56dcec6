"""How a run's outputs begin (config.yaml) and end (the final model, summary.json, the tracked
run closed FINISHED), shared by the in-process and the Ray Train launch paths so a run's folder
looks the same however it was launched."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ntng_ray.atomic import write_json_atomic, write_text_atomic
from ntng_ray.engines.device import environment
from ntng_ray.engines.engine import Engine
from ntng_ray.models.export import MODEL_FOLDER
from ntng_ray.train.loop import CheckpointSink, Reporter
from ntng_ray.train.outputs import JsonlWriter
from ntng_ray.train.plan import RunPlan

if TYPE_CHECKING:
    from ntng_ray.track.tracker import RunTracker


def begin_outputs(plan: RunPlan) -> None:
    """Create the output folder and record the resolved config in it."""
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan.output_dir / "config.yaml", plan.cfg.to_yaml())


@contextlib.contextmanager
def rank0_sinks(plan: RunPlan, mlflow_run: Any) -> Iterator[list[Reporter]]:
    """The metrics JSONL and (when tracking is on) the MLflow run, as loop reporters."""
    with contextlib.closing(JsonlWriter(plan.output_dir / "metrics.jsonl")) as jsonl:
        yield [jsonl] if mlflow_run is None else [jsonl, mlflow_run]


def finish_outputs(plan: RunPlan, engine: Engine, summary: dict[str, Any], mlflow_run: Any) -> None:
    """Write the final model and summary.json, then close the MLflow run FINISHED."""
    export_model(plan, engine, plan.output_dir / MODEL_FOLDER)
    if mlflow_run is not None:
        summary["mlflow_run_id"] = mlflow_run.run_id
    write_json_atomic(plan.output_dir / "summary.json", summary)
    if mlflow_run is not None:
        mlflow_run.finish(summary, plan.output_dir)


def export_model(plan: RunPlan, engine: Engine, folder: Path) -> None:
    """The trained model in HF format with its tokenizer, for fine-tuning and inspection."""
    engine.model.save_pretrained(folder)
    tok = plan.data.tokenizer
    shutil.copyfile(tok.path, folder / "tokenizer.json")
    special = {"pad_id": tok.pad_id, "eos_id": tok.eos_id, "mask_id": tok.mask_id}
    info = {"preset": plan.cfg.model.preset, "family": tok.family, "vocab_size": tok.vocab_size}
    write_json_atomic(folder / "ntng_model.json", info | special)


def keep_latest_checkpoint(folder: Path) -> CheckpointSink:
    """In-process checkpoints: the newest one is kept under ``folder``/step-N."""

    def sink(source: Path, progress: dict[str, Any]) -> None:
        target = folder / f"step-{progress['step']:07d}"
        shutil.copytree(source, target)
        write_json_atomic(target / "progress.json", progress)
        for old in folder.iterdir():
            if old != target:
                shutil.rmtree(old)

    return sink


def tracked(
    plan: RunPlan, engine: Engine, run_id: str | None = None
) -> contextlib.AbstractContextManager[RunTracker | None]:
    """The run's tracker (ended FINISHED, FAILED or KILLED as it goes), or None when off.

    The tracking backend (MLflow) is loaded only here, so the loop runs where it is not
    installed.
    """
    if not plan.cfg.tracking.enabled:
        return contextlib.nullcontext(None)
    from ntng_ray.track import tracker

    tags = tracker.run_tags(
        plan.cfg,
        plan.table.table_id,
        plan.table.content_hash,
        hardware=environment(engine.device)["hardware"],
    )
    return tracker.track_run(plan.cfg, tags, run_id=run_id)


def read_summary(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "summary.json").read_text())


def drop_lines_after(path: Path, step: int | None) -> None:
    """Forget metric lines of steps this attempt redoes (all of them when it starts afresh).

    A run restarted after a failure resumes from the last checkpoint, or from the start when
    it failed before one was committed; either way each step appears once in the file.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [] if step is None else [line for line in lines if json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
