"""A run's output folder: refused when it already holds a run, files written whole or not at all."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ntng_ray.config import RunConfig
from ntng_ray.errors import NtngError


def resolve_output_dir(cfg: RunConfig) -> Path:
    """The run's output folder, checked (not created): an existing non-empty one needs overwrite."""
    if cfg.output_dir:
        path = Path(cfg.output_dir).expanduser()
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{cfg.name}-{stamp}"
    if path.exists() and not path.is_dir():
        raise NtngError(f"output_dir = {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not cfg.overwrite:
        raise NtngError(
            f"output_dir = {str(path)!r} is not empty; choose a new folder or set overwrite=true"
        )
    return path


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a crashed run keeps what it logged."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("a")

    def __call__(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
