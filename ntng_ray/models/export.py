"""Where a run's final model lives in its output folder, and how to load it back for scoring.

The pretraining run writes it (``ntng_ray.train.lifecycle.export_model``); fine-tuning and a
strategy's preparation (RHO-loss's irreducible losses) read it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

MODEL_FOLDER = "model"


def load_exported_model(folder: Path) -> nn.Module:
    """A run's exported model (its ``model/`` folder) as the class that trained it, in eval mode."""
    from transformers import AutoConfig

    from ntng_ray.models.builders import SparseBertForMaskedLM
    from ntng_ray.models.crammed_bert import MODEL_TYPE as CRAMMED
    from ntng_ray.models.crammed_bert import CrammedBertForMaskedLM
    from ntng_ray.models.t5_v1_1 import load_untied_t5

    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type == "t5":
        return load_untied_t5(folder).eval()
    classes = {"bert": SparseBertForMaskedLM, CRAMMED: CrammedBertForMaskedLM}
    if model_type not in classes:
        raise ValueError(
            f"{str(folder)!r}: model_type {model_type!r}; allowed: {', '.join([*classes, 't5'])}"
        )
    return classes[model_type].from_pretrained(folder).eval()
