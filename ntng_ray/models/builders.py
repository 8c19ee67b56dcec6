"""Build BERT-for-MLM and T5 v1.1 from presets: random init from configs, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import MaskedLMOutput

from ntng_ray.config.presets import Preset
from ntng_ray.models.active_layers import layer_stacks


@dataclass(frozen=True)
class TokenIds:
    """The token ids a model must know: padding, and for T5 the end-of-sequence token."""

    pad_id: int
    eos_id: int | None = None


def build_model(preset: Preset, vocab_size: int, ids: TokenIds, seed: int) -> nn.Module:
    """A freshly initialised model of ``preset`` with a ``vocab_size`` embedding.

    Dropout is off, as in Cramming's and nanoT5's pretraining recipes. The layer lists are
    switched to ``ActiveLayerList`` so strategies can run a subset of layers.
    """
    torch.manual_seed(seed)
    if preset.family == "bert":
        model = SparseBertForMaskedLM(_bert_config(preset, vocab_size, ids))
    else:
        model = T5ForConditionalGeneration(_t5_config(preset, vocab_size, ids))
        _rescale_t5_output_init(model)
    layer_stacks(model)
    return model


def _rescale_t5_output_init(model: T5ForConditionalGeneration) -> None:
    """Initialise T5 v1.1's untied output layer with std d_model**-0.5, as the original does.

    Mesh TensorFlow's T5 v1.1 initialises the untied logits layer with fan-in variance scaling
    (std = d_model**-0.5); HF initialises it with std 1.0, which makes the initial logits
    sqrt(d_model) times too large (an initial loss near 60-100 instead of ln(vocab)).
    """
    with torch.no_grad():
        model.lm_head.weight.normal_(mean=0.0, std=model.config.d_model**-0.5)


class SparseBertForMaskedLM(BertForMaskedLM):
    """BERT MLM whose head runs on the masked positions only (Cramming's "sparse prediction").

    The loss is the same as the dense head's (cross-entropy over the labelled positions), but
    the vocabulary projection costs ~15% of the dense one, which dominates small models' steps.
    The weights and state_dict are BertForMaskedLM's, so checkpoints load into stock HF classes.
    """

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        selected = labels != -100
        logits = self.cls(hidden[selected])
        loss = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
        return MaskedLMOutput(loss=loss / selected.sum().clamp_min(1), logits=logits)


def _bert_config(preset: Preset, vocab_size: int, ids: TokenIds) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.heads,
        intermediate_size=preset.ffn,
        max_position_embeddings=preset.seq_len,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=ids.pad_id,
        attn_implementation="sdpa",
    )


def _t5_config(preset: Preset, vocab_size: int, ids: TokenIds) -> T5Config:
    if ids.eos_id is None:
        raise ValueError("T5 needs an end-of-sequence token id")
    return T5Config(
        vocab_size=vocab_size,
        d_model=preset.hidden,
        d_kv=preset.d_kv,
        d_ff=preset.ffn,
        num_layers=preset.num_layers,
        num_decoder_layers=preset.num_layers,
        num_heads=preset.heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=ids.pad_id,
        eos_token_id=ids.eos_id,
        decoder_start_token_id=ids.pad_id,
        use_cache=False,
        attn_implementation="sdpa",
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())
