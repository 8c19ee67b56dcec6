"""Build BERT-for-MLM and T5 v1.1 from presets: random init from configs, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

from ntng_ray.models.active_layers import layer_stacks
from ntng_ray.models.presets import Preset


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
        model = BertForMaskedLM(_bert_config(preset, vocab_size, ids))
    else:
        model = T5ForConditionalGeneration(_t5_config(preset, vocab_size, ids))
    layer_stacks(model)
    return model


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
