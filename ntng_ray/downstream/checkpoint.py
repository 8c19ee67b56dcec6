"""The pretrained model a run exported: its folder, family, special ids and tokenizer.

``--checkpoint`` may name the run's output_dir or its ``model/`` folder; both resolve to the
folder holding the HF model, ``tokenizer.json`` and ``ntng_model.json`` (see
``ntng_ray.train.lifecycle.export_model``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ntng_ray.config.presets import Family
from ntng_ray.errors import NtngError
from ntng_ray.models.export import MODEL_FOLDER

MODEL_INFO = "ntng_model.json"
TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class Pretrained:
    """An exported model: where it is, which family, and the ids fine-tuning needs."""

    folder: Path
    family: Family
    info: dict[str, Any]
    tokenizer: Tokenizer

    @property
    def pad_id(self) -> int:
        return int(self.info["pad_id"])


def model_folder(checkpoint: Path) -> Path:
    """The folder with ``ntng_model.json``: ``checkpoint`` itself or its ``model/``."""
    for folder in (checkpoint, checkpoint / MODEL_FOLDER):
        if (folder / MODEL_INFO).is_file():
            return folder
    raise NtngError(
        f"--checkpoint {str(checkpoint)!r}: no exported model there; expected a pretraining "
        f"run's output_dir (with {MODEL_FOLDER}/{MODEL_INFO}) or its {MODEL_FOLDER}/ folder"
    )


def load_pretrained(checkpoint: Path) -> Pretrained:
    """Read the exported model's description and tokenizer (the weights load per task)."""
    folder = model_folder(Path(checkpoint).expanduser())
    info = json.loads((folder / MODEL_INFO).read_text())
    family = info.get("family")
    if family not in ("bert", "t5"):
        raise NtngError(f"{str(folder / MODEL_INFO)!r}: family {family!r}; allowed: bert, t5")
    if not (folder / TOKENIZER).is_file():
        raise NtngError(f"--checkpoint {str(folder)!r}: {TOKENIZER} is missing")
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
    return Pretrained(folder=folder, family=family, info=info, tokenizer=tokenizer)
