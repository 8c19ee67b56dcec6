"""The sweep's own record of what is done, so ``--resume`` skips finished stages exactly.

Ray Tune restores each stage's experiment (finished trials are not rerun, unfinished ones
continue from their checkpoints); this file remembers which stages are complete, their
results (the best configuration per strategy, RST spent) and the MLflow parent run to reuse.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ntng_ray.atomic import write_text_atomic
from ntng_ray.errors import NtngError

STATE_FILE = "sweep_state.json"


@dataclass
class SweepState:
    path: Path
    sweep_sha256: str
    parent_run_id: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, root: Path, sweep_sha256: str, resume: bool, overwrite: bool) -> SweepState:
        """A new state, or the saved one when resuming; refuses to mix two different sweeps."""
        path = root / STATE_FILE
        if resume:
            if not path.is_file():
                raise NtngError(
                    f"--resume: no sweep to resume at {root} (no {STATE_FILE}); "
                    "run without --resume"
                )
            saved = json.loads(path.read_text())
            if saved["sweep_sha256"] != sweep_sha256:
                raise NtngError(
                    f"--resume: the sweep file changed since the sweep at {root} started; resume "
                    "with the same file and overrides, or start a new sweep (another name)"
                )
            return cls(path, **{k: v for k, v in saved.items() if k != "path"})
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise NtngError(
                    f"sweep folder {root} already holds a sweep; continue it with --resume, start "
                    "over with overwrite=true, or choose another name or output_dir"
                )
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(path, sweep_sha256)

    def done(self, key: str) -> dict[str, Any] | None:
        return self.stages.get(key)

    def finish_stage(self, key: str, record: dict[str, Any]) -> None:
        self.stages[key] = record
        self.save()

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        write_text_atomic(self.path, json.dumps(data, indent=2) + "\n")
