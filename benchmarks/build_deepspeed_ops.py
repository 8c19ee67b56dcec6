"""Compile DeepSpeed's JIT ops once, before the tests, so no test pays the ~45 s build.

Usage (CI, once per cache of $TORCH_EXTENSIONS_DIR):

    python benchmarks/build_deepspeed_ops.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from ntng_ray.train.deepspeed_engine import prebuild_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    started = time.perf_counter()
    built = prebuild_ops(torch.device(args.device))
    names = ", ".join(built) or "none needed"
    print(f"DeepSpeed ops ready ({names}) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
