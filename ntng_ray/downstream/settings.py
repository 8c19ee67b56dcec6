"""Fine-tuning settings: the study's recipe by default, ``key=value`` overrides, validated early.

Defaults follow DESIGN.md §2: batch 16, cosine schedule with 10% warm-up, length 128, and per
suite GLUE 5 epochs at LR 4e-5, SuperGLUE 10 epochs at LR 5e-5 (``epochs`` and ``lr`` left
unset take the suite's value). The score reported is the last epoch's; ``report=best`` reports
the best epoch on the validation set instead (the study's choice), labelled as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ntng_ray.config import DataConfig, apply_overrides, validate_mapping
from ntng_ray.downstream.tasks import Suite

SUITE_DEFAULTS: dict[Suite, dict[str, float]] = {
    "glue": {"epochs": 5, "lr": 4e-5},
    "superglue": {"epochs": 10, "lr": 5e-5},
}


class FinetuneSettings(BaseModel):
    """One fine-tuning recipe, applied to every task of a suite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int | None = Field(None, ge=1, description="Default: GLUE 5, SuperGLUE 10.")
    batch_size: int = Field(16, ge=1)
    lr: float | None = Field(
        None, gt=0.0, le=1.0, description="Peak LR; GLUE 4e-5, SuperGLUE 5e-5."
    )
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="Warm-up fraction of the steps.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW's; not on biases and norms.")
    grad_clip: float | None = Field(1.0, gt=0.0, description="Max gradient norm; null: off.")
    dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout while fine-tuning (pretraining runs without)."
    )
    max_length: int = Field(128, ge=8, description="Input tokens (longer inputs are truncated).")
    seed: int = Field(0, description="Fixes the head's initialisation, shuffling and dropout.")
    max_train_examples: int | None = Field(
        None, ge=1, description="Train on a seeded random subset of this many examples."
    )
    max_eval_examples: int | None = Field(
        None, ge=1, description="Score a fixed random subset (the same for every seed)."
    )
    report: Literal["last", "best"] = Field(
        "last", description="last: the last epoch's score; best: the best epoch's (labelled)."
    )
    eval_batch_size: int = Field(64, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    hub_repo: str | None = Field(
        None,
        description="Without --data-dir: the hub dataset (or a folder in its parquet layout); "
        "default nyu-mll/glue or aps/super_glue.",
    )
    cache_dir: str | None = Field(
        None, description="Default: $NTNG_CACHE_DIR or ~/.cache/ntng_ray."
    )
    output_dir: str | None = Field(None, description="Default: runs/finetune-<suite>-<UTC time>.")

    def resolved_cache_dir(self) -> Path:
        """The project's cache, as pretraining resolves it (task data goes under it)."""
        return DataConfig(cache_dir=self.cache_dir).resolved_cache_dir()

    def for_suite(self, suite: Suite) -> FinetuneSettings:
        """These settings with the suite's epochs and LR where they were left unset."""
        defaults = SUITE_DEFAULTS[suite]
        return self.model_copy(
            update={
                "epochs": self.epochs if self.epochs is not None else int(defaults["epochs"]),
                "lr": self.lr if self.lr is not None else defaults["lr"],
            }
        )


def load_settings(overrides: list[str] | None = None) -> FinetuneSettings:
    """Settings from ``key=value`` overrides (values parsed as YAML), validated."""
    data = apply_overrides({}, list(overrides or []))
    return validate_mapping(data, FinetuneSettings, "fine-tuning settings")
