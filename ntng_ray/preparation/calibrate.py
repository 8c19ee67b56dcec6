"""Measure this machine: the seconds of each unit of work, written as a reference table.

Timing runs the project's own engine on real collated batches (random tokens through the MLM
or span-corruption collator), so a calibrated table times the same code the loop runs: the
optimizer step of every optimizer a strategy can charge (AdamW, Lion, Sophia-G) and Sophia's
Hessian estimate (``gnb_gradient_sums`` and the EMA update, as the strategy runs them).
Each entry is the median of repeated timings after untimed warm-up passes.
"""

from __future__ import annotations

import itertools
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ntng_ray import __version__
from ntng_ray.config import OptimizerConfig
from ntng_ray.config.presets import PRESETS, Preset
from ntng_ray.data.collators import MLMCollator, SpanCorruptionCollator
from ntng_ray.data.packing import compute_t5_lengths
from ntng_ray.engines.engine import Batch, TorchEngine
from ntng_ray.engines.optimizers import build_lion, build_optimizer, build_sophia, gnb_gradient_sums
from ntng_ray.errors import NtngError
from ntng_ray.models.builders import TokenIds, build_model
from ntng_ray.rst.table import ReferenceTable, TableUnit

NUM_SPECIAL = 5
NUM_SENTINELS = 100
# Settings of the timed optimizers: their cost does not depend on them, only decay must be on.
TIMED_LR, TIMED_WEIGHT_DECAY = 1e-3, 0.01
TIMED_OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "adamw": lambda model: build_optimizer(
        OptimizerConfig(name="adamw", weight_decay=TIMED_WEIGHT_DECAY), model
    ),
    "lion": lambda model: build_lion(model, TIMED_LR, TIMED_WEIGHT_DECAY),
    "sophia": lambda model: build_sophia(model, TIMED_LR, TIMED_WEIGHT_DECAY),
}


def _random_batch(
    preset: Preset, microbatch: int, generator: torch.Generator
) -> tuple[Batch, int | None]:
    """A collated batch of random tokens at the preset's lengths, and T5's target length."""
    vocab = preset.vocab_size
    if preset.family == "bert":
        rows = torch.randint(NUM_SPECIAL, vocab, (microbatch, preset.seq_len), generator=generator)
        collator = MLMCollator(vocab, mask_id=4, special_ids=frozenset(range(NUM_SPECIAL)))
        return collator(rows, generator), None
    tokens_length, target_length = compute_t5_lengths(preset.seq_len, 0.15, 3.0)
    rows = torch.randint(3, vocab - NUM_SENTINELS, (microbatch, tokens_length), generator=generator)
    collator = SpanCorruptionCollator(
        input_length=preset.seq_len,
        target_length=target_length,
        noise_density=0.15,
        mean_noise_span_length=3.0,
        eos_id=1,
        sentinel_ids=list(range(vocab - 1, vocab - 1 - NUM_SENTINELS, -1)),
    )
    return collator(rows, generator), target_length


def _timed(action: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``action`` takes, waiting for the GPU where there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    action()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _strictly_increasing(values: dict[int, float]) -> bool:
    ordered = [values[k] for k in sorted(values)]
    return all(a < b for a, b in itertools.pairwise(ordered))


def _layer_timings(
    engine: TorchEngine, batch: Batch, num_layers: int, repeats: int, warmup: int
) -> tuple[dict[int, float], dict[int, float]]:
    """Median fwd+bwd and forward-only seconds per active-layer count.

    Layer counts are measured in interleaved rounds, so a drift in machine load falls on every
    entry alike rather than on the last ones measured. When noise leaves the medians out of
    order, up to ``repeats`` more rounds are taken before giving up.
    """
    samples: dict[str, dict[int, list[float]]] = {
        "train": {k: [] for k in range(1, num_layers + 1)},
        "forward": {k: [] for k in range(1, num_layers + 1)},
    }

    def train_pass() -> None:
        engine.forward_backward(batch, scale=1.0)
        engine.optimizer.zero_grad(set_to_none=True)

    def one_round(keep: bool) -> None:
        for layers in range(1, num_layers + 1):
            engine.set_active_layers(layers)
            train = _timed(train_pass, engine.device)
            forward = _timed(lambda: engine.loss_sum(batch), engine.device)
            if keep:
                samples["train"][layers].append(train)
                samples["forward"][layers].append(forward)

    def medians(kind: str) -> dict[int, float]:
        return {k: statistics.median(v) for k, v in samples[kind].items()}

    for _ in range(warmup):
        one_round(keep=False)
    for _ in range(repeats):
        one_round(keep=True)
    for _ in range(repeats):
        if _strictly_increasing(medians("train")) and _strictly_increasing(medians("forward")):
            break
        one_round(keep=True)
    engine.set_active_layers(None)
    return medians("train"), medians("forward")


def _optimizer_seconds(engine: TorchEngine, batch: Batch, repeats: int, warmup: int) -> float:
    """Median seconds of one optimizer step of the full model (the backward before it untimed)."""
    timings = []
    for index in range(warmup + repeats):
        engine.forward_backward(batch, scale=1.0)
        seconds = _timed(lambda: engine.step(lr=0.0), engine.device)
        if index >= warmup:
            timings.append(seconds)
    return statistics.median(timings)


def _optimizer_step_seconds(
    engine: TorchEngine, batch: Batch, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of one step of each optimizer a strategy can charge, on the full model."""
    seconds = {}
    for name, build in TIMED_OPTIMIZERS.items():
        engine.replace_optimizer(build(engine.model))
        seconds[name] = _optimizer_seconds(engine, batch, repeats, warmup)
    return seconds


def _hessian_seconds(
    engine: TorchEngine, batch: Batch, precision: str, repeats: int, warmup: int
) -> float:
    """Median seconds of one Sophia-G Hessian estimate over ``batch``, EMA update included."""
    optimizer = build_sophia(engine.model, TIMED_LR, TIMED_WEIGHT_DECAY)
    generator = torch.Generator(device=engine.device).manual_seed(0)

    def estimate() -> None:
        optimizer.update_hessian(gnb_gradient_sums(engine.model, [batch], generator, precision))

    timings = [_timed(estimate, engine.device) for _ in range(warmup + repeats)]
    return statistics.median(timings[warmup:])


def calibrate(
    preset_name: str,
    microbatch: int = 32,
    repeats: int = 7,
    warmup: int = 2,
    device: str = "auto",
    precision: str = "fp32",
    name: str | None = None,
) -> ReferenceTable:
    """Time fwd+bwd and forward-only per layer count, each optimizer's step, and Sophia's
    Hessian estimate, for ``preset_name``."""
    if preset_name not in PRESETS:
        raise NtngError(f"--preset {preset_name!r}: unknown; allowed: {', '.join(PRESETS)}")
    for flag, value, low in (
        ("--microbatch", microbatch, 1),
        ("--repeats", repeats, 1),
        ("--warmup", warmup, 0),
    ):
        if value < low:
            raise NtngError(f"{flag} = {value}: must be at least {low}")
    from ntng_ray.engines.device import environment, pick_device

    preset = PRESETS[preset_name]
    torch_device = pick_device(device)
    model = build_model(preset, preset.vocab_size, TokenIds(pad_id=0, eos_id=1), seed=0)
    engine = TorchEngine(
        model,
        build_optimizer(OptimizerConfig(name="adamw"), model.to(torch_device)),
        torch_device,
        precision,
        grad_clip=None,
    )
    batch, target_length = _random_batch(preset, microbatch, torch.Generator().manual_seed(0))

    train_seconds, forward_seconds = _layer_timings(
        engine, batch, preset.num_layers, repeats, warmup
    )
    optimizer_seconds = _optimizer_step_seconds(engine, batch, repeats, warmup)
    hessian_seconds = _hessian_seconds(engine, batch, precision, repeats, warmup)
    env = environment(torch_device)
    return ReferenceTable(
        name=name or f"calibrated-{preset_name}",
        preset=preset_name,
        description=(
            f"{preset_name} measured by `ntng calibrate` on {env['hardware']} "
            f"({env['device']}, {precision}, {env['torch_threads']} threads)"
        ),
        unit=TableUnit(
            kind="microbatch",
            sequences=microbatch,
            seq_len=preset.seq_len,
            target_len=target_length,
            includes_optimizer=False,
            reference_optimizer="adamw",
        ),
        train_seconds=train_seconds,
        forward_seconds=forward_seconds,
        optimizer_step_seconds=optimizer_seconds,
        hessian_seconds=hessian_seconds,
        machine={
            "hardware": env["hardware"],
            "device": env["device"],
            "platform": platform.platform(),
            "torch_threads": env["torch_threads"],
            "precision": precision,
        },
        software={k: env[k] for k in ("ntng_ray", "python", "torch", "transformers")}
        | {"calibrated_with": f"ntng_ray {__version__}", "repeats": repeats, "warmup": warmup},
    )
