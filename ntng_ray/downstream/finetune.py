"""Fine-tune a pretrained checkpoint on every task of a suite and write ``scores.json``.

One recipe for every task (``FinetuneSettings``): AdamW (no decay on biases and norms), the LR
rising linearly over the first ``warmup`` of the steps and falling along a cosine to 0 (the
step-based form of transformers' ``get_cosine_schedule_with_warmup``), gradient clipping.
Deterministic by seed: the head's initialisation, the shuffling and dropout all draw from it.
The figure reported is the last epoch's validation score; with ``report=best`` it is the best
epoch's, and the output says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasets
import torch

from ntng_ray.atomic import write_json_atomic
from ntng_ray.downstream.checkpoint import Pretrained, load_pretrained
from ntng_ray.downstream.encoding import TaskModel, batched, to_device
from ntng_ray.downstream.loaders import GROUP, LABEL, check_local_files, load_split
from ntng_ray.downstream.metrics import suite_average, task_metrics, task_score
from ntng_ray.downstream.settings import FinetuneSettings, load_settings
from ntng_ray.downstream.tasks import EXCLUDED_FROM_AVERAGE, TaskSpec, check_suite, resolve_tasks
from ntng_ray.engines.device import pick_device
from ntng_ray.engines.optimizers import parameter_groups
from ntng_ray.errors import NtngError
from ntng_ray.schedules import warmup_cosine

SCORES = "scores.json"
# The evaluation subset (max_eval_examples) is drawn with a fixed seed, so that every
# fine-tuning seed and every checkpoint is scored on the same examples.
EVAL_SUBSET_SEED = 0
Log = Callable[[str], None]


def finetune_suite(
    checkpoint: Path,
    suite: str,
    tasks: list[str] | None,
    data_dir: Path | None,
    settings: FinetuneSettings,
    output_dir: Path,
    log: Log | None = None,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` on each task, then write and return ``output_dir/scores.json``.

    ``tasks`` are benchmark names in any case (None: the whole suite); ``data_dir`` is a folder
    in the benchmark's distribution layout (None: the hub, or ``settings.hub_repo``). Task
    names, the checkpoint and every task's files are checked before any training starts.
    ``log`` gets one line per epoch (default: print).
    """
    name = check_suite(suite)
    specs = resolve_tasks(name, tasks)
    settings = settings.for_suite(name)
    device = pick_device(settings.device, "device")
    pretrained = load_pretrained(Path(checkpoint))
    if data_dir is not None:
        for spec in specs:
            check_local_files(spec, Path(data_dir), spec.splits)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    results = {
        spec.name: finetune_task(pretrained, spec, data_dir, settings, device, log or print)
        for spec in specs
    }
    average, averaged = suite_average(name, {task: r["score"] for task, r in results.items()})
    scores: dict[str, Any] = {
        "suite": name,
        "tasks": results,
        "average": average,
        "averaged_tasks": averaged,
        "excluded_from_average": sorted(EXCLUDED_FROM_AVERAGE[name] & set(results)),
        "report": settings.report,
        "checkpoint": str(pretrained.folder),
        "family": pretrained.family,
        "settings": settings.model_dump(mode="json"),
    }
    if pretrained.family == "t5":
        from ntng_ray.downstream.t5 import MODE

        scores["t5_mode"] = MODE
    write_json_atomic(Path(output_dir) / SCORES, scores)
    return scores


def _task_model(pretrained: Pretrained, spec: TaskSpec, settings: FinetuneSettings) -> TaskModel:
    if pretrained.family == "bert":
        from ntng_ray.downstream.bert import BertTask

        return BertTask(pretrained, spec, settings)
    from ntng_ray.downstream.t5 import T5Task

    return T5Task(pretrained, spec, settings)


def _subset(table: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of ``limit`` rows, or the whole table."""
    if limit is None or limit >= len(table):
        return table
    return table.shuffle(seed=seed).select(range(limit))


def finetune_task(
    pretrained: Pretrained,
    spec: TaskSpec,
    data_dir: Path | None,
    settings: FinetuneSettings,
    device: torch.device,
    log: Log,
) -> dict[str, Any]:
    """Fine-tune on one task's train split; score its validation split(s)."""
    started = time.perf_counter()
    cache = settings.resolved_cache_dir()
    data = None if data_dir is None else Path(data_dir)

    def split(name: str) -> datasets.Dataset:
        return load_split(spec, name, data, settings.hub_repo, cache)

    train = _subset(split("train"), settings.max_train_examples, settings.seed)
    evals = {
        s: _subset(split(s), settings.max_eval_examples, EVAL_SUBSET_SEED) for s in spec.eval_splits
    }
    for name, table in {"train": train, **evals}.items():
        if len(table) == 0:
            raise NtngError(f"{spec.name}: the {name} split has no rows to fine-tune or score on")
    task = _task_model(pretrained, spec, settings)
    task.model.to(device)
    epochs = _train(task, spec, train, evals, settings, log)
    reported = max(epochs, key=lambda e: e["score"]) if settings.report == "best" else epochs[-1]
    result = {
        "metrics": reported["metrics"],
        "n_eval": sum(len(table) for table in evals.values()),
        "score": reported["score"],
        "n_train": len(train),
        "epoch_reported": reported["epoch"],
        "epochs": settings.epochs,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if pretrained.family == "t5":
        result["invalid_predictions"] = reported["invalid"]
    if settings.report == "best":
        result["last_epoch"] = epochs[-1]
    return result


def _train(
    task: TaskModel,
    spec: TaskSpec,
    train: datasets.Dataset,
    evals: dict[str, datasets.Dataset],
    settings: FinetuneSettings,
    log: Log,
) -> list[dict[str, Any]]:
    """The epochs; returns the evaluations made (each epoch for report=best, else the last)."""
    assert settings.epochs is not None and settings.lr is not None
    model = task.model
    device = next(model.parameters()).device
    features = task.train_features(train)
    total = settings.epochs * math.ceil(len(features) / settings.batch_size)
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    step, evaluations = 0, []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(features), generator=generator).tolist()
        losses = []
        for indices in batched(order, settings.batch_size):
            batch = to_device(task.collate([features[i] for i in indices]), device)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * warmup_cosine(step / total, settings.warmup)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        line = f"{spec.name} epoch {epoch}/{settings.epochs} loss {sum(losses) / len(losses):.4f}"
        if settings.report == "best" or epoch == settings.epochs:
            evaluation = {"epoch": epoch, **evaluate(task, spec, evals, settings.eval_batch_size)}
            evaluations.append(evaluation)
            line += f" score {evaluation['score']:.4f}"
        log(line)
    return evaluations


def evaluate(
    task: TaskModel, spec: TaskSpec, evals: dict[str, datasets.Dataset], batch_size: int
) -> dict[str, Any]:
    """The task's metrics on its validation split(s) (MNLI's named _matched/_mismatched)."""
    metrics: dict[str, float] = {}
    invalid = 0
    for split, table in evals.items():
        predictions = task.predict(table, batch_size)
        references = table["answers"] if spec.kind == "record" else table[LABEL]
        groups = table[GROUP] if spec.group else None
        values = task_metrics(spec, references, predictions.values, groups)
        suffix = "" if len(evals) == 1 else "_" + split.removeprefix("validation_")
        metrics |= {f"{name}{suffix}": value for name, value in values.items()}
        invalid += predictions.invalid
    return {"metrics": metrics, "score": task_score(metrics), "invalid": invalid}


def default_output_dir(suite: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"finetune-{suite}-{stamp}"


def run_finetune_cli(
    checkpoint: str, suite: str, tasks: str | None, data_dir: str | None, overrides: list[str]
) -> int:
    """``ntng finetune``: validate everything, fine-tune, print the scores table."""
    settings = load_settings(overrides)
    name = check_suite(suite)
    names = [t for t in tasks.split(",") if t.strip()] if tasks is not None else None
    output = Path(settings.output_dir) if settings.output_dir else default_output_dir(name)
    scores = finetune_suite(
        Path(checkpoint),
        name,
        names,
        Path(data_dir) if data_dir is not None else None,
        settings,
        output,
        log=lambda line: print(line, flush=True),
    )
    for task, result in scores["tasks"].items():
        shown = "  ".join(f"{metric} {value:.4f}" for metric, value in result["metrics"].items())
        print(f"{task:<8} {shown}  ({result['n_eval']} examples)")
    average = scores["average"]
    shown = "n/a" if average is None else f"{average:.4f}"
    print(f"{name} average {shown} over {', '.join(scores['averaged_tasks']) or 'no tasks'}")
    print(f"wrote {output / SCORES}")
    return 0
