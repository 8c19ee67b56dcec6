"""T5 v1.1 with its own (untied) output layer, as Google's T5 v1.1 and nanoT5 have it.

transformers 5 forces ``T5Config.tie_word_embeddings = True`` and ties ``lm_head`` to the
shared embedding in ``T5ForConditionalGeneration``; this subclass ties only the two stacks'
input embeddings to ``shared``. Its exports hold ``lm_head.weight`` beside ``shared.weight``,
and stock ``AutoModelForSeq2SeqLM.from_pretrained`` keeps them apart too (transformers never
ties two weights a checkpoint stores with different values; it logs that it did not). The
decoder output is not rescaled by d_model**-0.5 (``config.scale_decoder_outputs`` is False
when built with ``tie_word_embeddings=False``, and that is saved with the config).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers import initialization as init


class UntiedT5ForConditionalGeneration(T5ForConditionalGeneration):
    """T5 whose ``lm_head`` is a parameter of its own, initialised with std d_model**-0.5."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: T5Config) -> None:
        if config.scale_decoder_outputs:
            raise ValueError(
                "T5 v1.1 does not rescale decoder outputs: build the config with "
                "tie_word_embeddings=False (scale_decoder_outputs is then False)"
            )
        super().__init__(config)

    def _init_weights(self, module: nn.Module) -> None:
        """T5's own init, and the untied logits layer with fan-in scaling (std d_model**-0.5).

        Mesh TensorFlow's T5 v1.1 initialises it so; left alone it would keep torch's default
        init, whose initial logits are far larger (an initial loss well above ln(vocab)).
        """
        super()._init_weights(module)
        if module is self.lm_head:
            std = self.config.initializer_factor * self.config.d_model**-0.5
            init.normal_(module.weight, mean=0.0, std=std)


def load_untied_t5(
    folder: str | os.PathLike[str], **config_overrides: Any
) -> UntiedT5ForConditionalGeneration:
    """An exported T5 as ``UntiedT5ForConditionalGeneration``.

    Exports written before the output layer was untied hold no ``lm_head.weight``: their
    output layer was the shared embedding, so it starts as a copy of it (the same function),
    rather than from a fresh init that would silently discard what was trained.
    """
    model, info = UntiedT5ForConditionalGeneration.from_pretrained(
        folder, output_loading_info=True, **config_overrides
    )
    if "lm_head.weight" in info["missing_keys"]:
        with torch.no_grad():
            model.lm_head.weight.copy_(model.shared.weight)
    return model
