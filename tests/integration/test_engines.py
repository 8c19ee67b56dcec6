"""The engines: DeepSpeed (ZeRO 0/1/2, CPU accelerator, gloo) and plain torch agree step by step.

All engines share one single-process gloo group: torch.distributed's default group can be
initialised once per process, and ``deepspeed.initialize`` reuses an existing one, so many
engines are built in one pytest process. The DeepSpeed shm op must be prebuilt
(``ntng prebuild-ops``), else the first DeepSpeed test spends ~45 s
compiling it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn

from ntng_ray.config import RunConfig
from ntng_ray.config.presets import PRESETS
from ntng_ray.engines.deepspeed_engine import DeepSpeedEngine, deepspeed_config
from ntng_ray.engines.dist_env import (
    DISTRIBUTED_VARIABLES,
    ensure_deepspeed_accelerator,
    ensure_single_process_env,
    free_port,
)
from ntng_ray.engines.engine import Engine, TorchEngine
from ntng_ray.engines.factory import build_engine, data_parallel, engine_kind
from ntng_ray.engines.optimizers import build_optimizer
from ntng_ray.errors import NtngError
from ntng_ray.models.active_layers import layer_stacks
from ntng_ray.models.builders import TokenIds, build_model

CPU = torch.device("cpu")
VOCAB = 512
MICROBATCH, SEQ_LEN, ACCUM, STEPS, LR = 4, 128, 2, 3, 1e-3
# fp32 engines differ only in summation order (DeepSpeed's flat buffers, its own norm).
FP32_TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def process_group() -> Iterator[None]:
    """One gloo world of one process for every engine in this module, on one thread.

    Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    threads wait on each other: one thread was ten times faster there. The environment,
    thread count and process group are put back afterwards for the other test modules.
    """
    names = (*DISTRIBUTED_VARIABLES, "DS_ACCELERATOR")
    saved_env = {name: os.environ.get(name) for name in names}
    threads = torch.get_num_threads()
    ensure_deepspeed_accelerator(CPU)
    ensure_single_process_env()
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if owns_group:
        # DeepSpeed caches groups of its own; destroying only torch's leaves them stale and a
        # later DeepSpeed engine in this process fails ("Group … is not registered").
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def run_config(engine: str = "torch", zero: int = 0, precision: str = "fp32", **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"preset": "bert-tiny"},
            "tokenizer": {"vocab_size": VOCAB},
            "budget": {"rst_seconds": 60},
            "rst": {"table": "paper-bert-rtx3090-fixed"},
            "optimizer": {"lr": LR, "grad_clip": 0.5},
            "train": {"microbatch_size": MICROBATCH, "grad_accum": ACCUM, "precision": precision}
            | train,
            "backend": {"engine": engine, "zero_stage": zero},
            "tracking": {"enabled": False},
        }
    )


def new_model(preset: str = "bert-tiny") -> nn.Module:
    return build_model(PRESETS[preset], VOCAB, TokenIds(pad_id=0), seed=0)


def engine_for(cfg: RunConfig, model: nn.Module | None = None) -> Engine:
    return build_engine(cfg, model or new_model(), CPU)


def batch(index: int) -> dict[str, torch.Tensor]:
    """Random tokens with ~15% of positions as MLM targets; the same for every engine."""
    gen = torch.Generator().manual_seed(index)
    ids = torch.randint(5, VOCAB, (MICROBATCH, SEQ_LEN), generator=gen)
    labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.15, ids, -100)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


History = list[tuple[float, float | None]]


def train(engine: Engine, steps: range) -> History:
    """(mean microbatch loss, grad norm) per optimizer step, as the loop drives an engine."""
    out = []
    for step in steps:
        losses = [
            engine.forward_backward(batch(step * ACCUM + m), 1.0 / ACCUM).item()
            for m in range(ACCUM)
        ]
        norm = engine.step(LR)
        out.append((sum(losses) / ACCUM, None if norm is None else norm.item()))
    return out


def flat(history: History) -> list[float | None]:
    return [value for record in history for value in record]


def layer_params(model: nn.Module, index: int) -> list[nn.Parameter]:
    return list(layer_stacks(model)[0][index].parameters())


def snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before: list[torch.Tensor], params: list[nn.Parameter]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


CONFIGS = {
    "torch": run_config("torch"),
    "zero0": run_config("deepspeed", 0),
    "zero1": run_config("deepspeed", 1),
    "zero2": run_config("deepspeed", 2),
}


@pytest.fixture(scope="module")
def torch_history() -> History:
    return train(engine_for(CONFIGS["torch"]), range(STEPS))


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2"])
def test_deepspeed_matches_torch_with_accumulation_and_clipping(
    name: str, torch_history: History
) -> None:
    engine = engine_for(CONFIGS[name])
    assert isinstance(engine, DeepSpeedEngine)
    history = train(engine, range(STEPS))
    for (loss, norm), (ref_loss, ref_norm) in zip(history, torch_history, strict=True):
        assert loss == pytest.approx(ref_loss, abs=FP32_TOL)
        assert norm == pytest.approx(ref_norm, rel=FP32_TOL)
        assert ref_norm > 0.5  # clipping was active
    assert torch_history[-1][0] < torch_history[0][0]


def test_loss_sum_agrees_across_engines() -> None:
    sums = [engine_for(CONFIGS[name]).loss_sum(batch(99)) for name in ("torch", "zero2")]
    (torch_sum, torch_count), (ds_sum, ds_count) = sums
    assert torch_count == ds_count == int((batch(99)["labels"] != -100).sum())
    assert ds_sum == pytest.approx(torch_sum, rel=1e-5)


@pytest.mark.parametrize("zero", [0, 2])
def test_deepspeed_bf16_trains_on_cpu(zero: int, torch_history: History) -> None:
    engine = engine_for(run_config("deepspeed", zero, "bf16"))
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    history = train(engine, range(STEPS))
    for (loss, norm), (ref_loss, _) in zip(history, torch_history, strict=True):
        assert loss == pytest.approx(ref_loss, abs=0.05)
        assert norm is not None and norm > 0.5
    assert history[-1][0] < history[0][0]
    if zero == 0:
        with pytest.raises(NtngError, match="per-parameter state"):
            engine.reset_optimizer_state(layer_params(engine.model, 2)[0])
    else:
        check_stacking_primitives(engine)


@pytest.mark.skipif(
    not get_accelerator().is_fp16_supported(),
    reason="DeepSpeed's CPU accelerator has no fp16 on this processor (oneDNN lacks fp16 here)",
)
def test_deepspeed_fp16_trains_with_dynamic_loss_scaling() -> None:
    """A step that overflows at the current loss scale reports an inf norm and is skipped."""
    engine = engine_for(run_config("deepspeed", 2, "fp16"))
    assert next(engine.model.parameters()).dtype == torch.float16
    before = snapshot(list(engine.model.parameters()))
    history = train(engine, range(4))
    assert all(norm is not None and norm > 0.5 for _, norm in history)
    assert history[-1][1] < float("inf")
    assert changed(before, list(engine.model.parameters()))


@pytest.mark.parametrize("name", ["torch", "zero0", "zero2"])
def test_save_load_continues_identically(name: str, tmp_path: Path) -> None:
    cfg = CONFIGS[name]
    first = engine_for(cfg)
    train(first, range(2))
    first.save_state(tmp_path)
    expected = train(first, range(2, 4))
    other = build_model(PRESETS["bert-tiny"], VOCAB, TokenIds(pad_id=0), seed=1)
    resumed = engine_for(cfg, other)
    resumed.load_state(tmp_path)
    assert flat(train(resumed, range(2, 4))) == pytest.approx(flat(expected), rel=1e-6)


def test_load_state_from_empty_folder_fails(tmp_path: Path) -> None:
    for name in ("torch", "zero0"):
        with pytest.raises(NtngError):
            engine_for(CONFIGS[name]).load_state(tmp_path)


@pytest.mark.parametrize("name", ["torch", "zero0", "zero2"])
def test_stacking_primitives_copy_weights_and_state(name: str) -> None:
    engine = engine_for(CONFIGS[name])
    train(engine, range(1))
    check_stacking_primitives(engine)


def check_stacking_primitives(engine: Engine) -> None:
    """Copy block 0 into block 1 with its state, reset block 2: what layer stacking does."""
    sources, targets = layer_params(engine.model, 0), layer_params(engine.model, 1)
    for source, target in zip(sources, targets, strict=True):
        assert state_norm(engine, target) > 0.0
        engine.copy_parameter(source, target)
        engine.copy_optimizer_state(source, target)
        assert_same_state(engine, source, target)
    for param in layer_params(engine.model, 2):
        engine.reset_optimizer_state(param)
        assert state_norm(engine, param) == 0.0
    # An lr-0 step moves no weight, so the copies must survive DeepSpeed's master -> module copy.
    engine.forward_backward(batch(50), 1.0)
    engine.step(0.0)
    assert all(torch.equal(s, t) for s, t in zip(sources, targets, strict=True))


def assert_same_state(engine: Engine, source: nn.Parameter, target: nn.Parameter) -> None:
    source_state, target_state = engine.optimizer_state(source), engine.optimizer_state(target)
    assert source_state.keys() == target_state.keys() == {"exp_avg", "exp_avg_sq"}
    assert all(torch.equal(source_state[key], target_state[key]) for key in source_state)


def state_norm(engine: Engine, param: nn.Parameter) -> float:
    return sum(float(value.norm()) for value in engine.optimizer_state(param).values())


def test_replace_optimizer() -> None:
    for name in ("torch", "zero0"):
        engine = engine_for(CONFIGS[name])
        replacement = torch.optim.SGD(engine.model.parameters(), lr=0.0)
        engine.replace_optimizer(replacement)
        assert engine.optimizer is replacement
        before = snapshot(list(engine.model.parameters()))
        train(engine, range(1))  # step(lr) sets the new optimizer's lr
        assert changed(before, list(engine.model.parameters()))
        with pytest.raises(NtngError, match="not the model's"):
            engine.replace_optimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    zero2 = engine_for(CONFIGS["zero2"])
    with pytest.raises(NtngError, match="cannot replace the optimizer"):
        zero2.replace_optimizer(torch.optim.SGD(zero2.model.parameters(), lr=0.1))


def test_ddp_leaves_inactive_layers_alone_and_matches_one_process() -> None:
    """find_unused_parameters: a layer no worker ran keeps grad None and its weights."""
    cfg = run_config("torch")
    reference = engine_for(cfg)
    model = new_model()
    ddp = TorchEngine(
        model,
        build_optimizer(cfg.optimizer, model),
        CPU,
        "fp32",
        0.5,
        train_module=data_parallel(model, CPU, find_unused=True),
        grad_accum=ACCUM,
    )
    for engine in (reference, ddp):
        engine.set_active_layers(2)
    before = snapshot(layer_params(ddp.model, 3))
    assert flat(train(ddp, range(2))) == pytest.approx(flat(train(reference, range(2))), rel=1e-6)
    assert not changed(before, layer_params(ddp.model, 3))
    ddp.forward_backward(batch(0), 0.5)
    with pytest.raises(NtngError, match="microbatch 2"):
        ddp.step(LR)


@pytest.mark.parametrize("preset", ["bert-tiny", "bert-crammed-tiny"])
def test_deepspeed_moves_inactive_layers_but_trains_the_active_ones_alike(preset: str) -> None:
    """DeepSpeed fills missing gradients with zeros: weight decay still moves inactive layers."""
    engines = [engine_for(CONFIGS[name], new_model(preset)) for name in ("torch", "zero2")]
    before = [snapshot(layer_params(e.model, 3)) for e in engines]
    histories = []
    for engine in engines:
        engine.set_active_layers(2)
        histories.append(flat(train(engine, range(2))))
    assert histories[1] == pytest.approx(histories[0], rel=FP32_TOL)
    moved = [changed(old, layer_params(e.model, 3)) for old, e in zip(before, engines, strict=True)]
    assert moved == [False, True]


WORKERS, WORKER_ACCUM = 2, 2


def sequential_batches(step: int, first: int, count: int) -> list[dict[str, torch.Tensor]]:
    """Microbatches ``first .. first + count - 1`` of a step of WORKERS * WORKER_ACCUM."""
    return [batch(step * WORKERS * WORKER_ACCUM + first + m) for m in range(count)]


def train_worker(rank: int, port: int, out: Path) -> None:
    """One of two data-parallel workers: each engine kind trains 2 steps on its share."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORKERS)}
    torch.set_num_threads(1)
    ensure_deepspeed_accelerator(CPU)
    dist.init_process_group("gloo")
    for kind, zero in (("torch", 0), ("deepspeed", 2)):
        cfg = run_config(kind, zero, grad_accum=WORKER_ACCUM)
        engine = build_engine(cfg, new_model(), CPU, world_size=WORKERS)
        for step in range(2):
            for micro in sequential_batches(step, rank * WORKER_ACCUM, WORKER_ACCUM):
                engine.forward_backward(micro, 1.0 / WORKER_ACCUM)
            engine.step(LR)
        if rank == 0:
            torch.save(engine.model.state_dict(), out / f"{kind}.pt")
    dist.destroy_process_group()


def test_two_workers_match_one_process(tmp_path: Path) -> None:
    """DDP (with no_sync) and ZeRO 2 over two gloo workers equal one process's accumulation."""
    torch.multiprocessing.spawn(train_worker, args=(free_port(), tmp_path), nprocs=WORKERS)
    engine = engine_for(run_config("torch"))
    count = WORKERS * WORKER_ACCUM
    for step in range(2):
        for micro in sequential_batches(step, 0, count):
            engine.forward_backward(micro, 1.0 / count)
        engine.step(LR)
    # Attention key biases get a gradient that is zero up to rounding (softmax ignores a
    # per-row constant), which Adam's tiny eps turns into lr-sized steps of random sign.
    expected = {k: v for k, v in engine.model.state_dict().items() if not k.endswith("key.bias")}
    for kind in ("torch", "deepspeed"):
        state = torch.load(tmp_path / f"{kind}.pt", weights_only=True)
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5)


def test_deepspeed_config_contents() -> None:
    cfg = run_config("deepspeed", 2, "bf16", microbatch_size=8, grad_accum=3)
    assert deepspeed_config(cfg, world_size=4) == {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 3,
        "train_batch_size": 96,
        "gradient_clipping": 0.5,
        "zero_optimization": {"stage": 2},
        "managed_gradient_accumulation": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": True},
    }
    fp32 = run_config("deepspeed", 0)
    fp32.optimizer.grad_clip = None
    config = deepspeed_config(fp32, world_size=1)
    assert config["gradient_clipping"] == 0.0
    assert config["train_batch_size"] == MICROBATCH * ACCUM
    assert "bf16" not in config and "fp16" not in config
    fp16 = deepspeed_config(run_config("deepspeed", 1, "fp16"), world_size=2)
    assert fp16["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    assert fp16["zero_optimization"] == {"stage": 1}


def test_engine_choice_and_fp16_guard() -> None:
    auto = run_config("auto")
    assert engine_kind(auto, CPU) == "torch"
    assert engine_kind(auto, torch.device("cuda")) == "deepspeed"
    assert engine_kind(run_config("deepspeed"), CPU) == "deepspeed"
    with pytest.raises(NtngError, match="fp16"):
        TorchEngine(new_model(), torch.optim.SGD([nn.Parameter(torch.zeros(1))]), CPU, "fp16", None)


def test_single_process_env_fills_only_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DISTRIBUTED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    ensure_single_process_env()
    assert os.environ["MASTER_ADDR"] == "10.0.0.7"
    assert [os.environ[name] for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")] == ["0", "0", "1"]
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_accelerator_cannot_switch_once_chosen() -> None:
    engine_for(CONFIGS["zero0"])  # DeepSpeed has chosen its accelerator by now
    ensure_deepspeed_accelerator(CPU)
    with pytest.raises(NtngError, match="fresh process"):
        ensure_deepspeed_accelerator(torch.device("cuda"))
