"""Where a run's final model lives in its output folder, and how to load it back for scoring.

The pretraining run writes it (``ntng_ray.train.lifecycle.export_model``); fine-tuning and a
strategy's preparation (RHO-loss's irreducible losses) read it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ntng_ray.config.presets import Family

MODEL_FOLDER = "model"


def load_exported_model(folder: Path, family: Family) -> nn.Module:
    """A model a run exported (its ``model/`` folder), in eval mode."""
    from transformers import T5ForConditionalGeneration

    from ntng_ray.models.builders import SparseBertForMaskedLM

    cls = SparseBertForMaskedLM if family == "bert" else T5ForConditionalGeneration
    return cls.from_pretrained(folder).eval()
