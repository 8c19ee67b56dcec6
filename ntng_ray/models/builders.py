"""Build the presets' models (HF BERT, crammed BERT, T5 v1.1): random init, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, T5Config
from transformers.modeling_outputs import MaskedLMOutput

from ntng_ray.config.presets import Preset
from ntng_ray.models.active_layers import layer_stacks
from ntng_ray.models.crammed_bert import CrammedBertConfig, CrammedBertForMaskedLM
from ntng_ray.models.sparse_prediction import sparse_mlm_output
from ntng_ray.models.t5_v1_1 import UntiedT5ForConditionalGeneration


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
    if preset.architecture == "hf-bert":
        model: nn.Module = SparseBertForMaskedLM(_bert_config(preset, vocab_size, ids))
    elif preset.architecture == "crammed-bert":
        model = CrammedBertForMaskedLM(_crammed_config(preset, vocab_size, ids))
    else:
        model = UntiedT5ForConditionalGeneration(_t5_config(preset, vocab_size, ids))
    layer_stacks(model)
    return model


class SparseBertForMaskedLM(BertForMaskedLM):
    """HF BERT MLM whose head runs on the masked positions only (Cramming's "sparse prediction").

    The weights and state_dict are BertForMaskedLM's, so checkpoints load into stock HF classes.
    """

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        return sparse_mlm_output(hidden, labels, self.cls, masked_positions)


def _encoder_sizes(preset: Preset, vocab_size: int, ids: TokenIds) -> dict[str, int]:
    """The config fields both BERT architectures name alike."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": preset.hidden,
        "num_hidden_layers": preset.num_layers,
        "num_attention_heads": preset.heads,
        "intermediate_size": preset.ffn,
        "max_position_embeddings": preset.seq_len,
        "pad_token_id": ids.pad_id,
    }


def _crammed_config(preset: Preset, vocab_size: int, ids: TokenIds) -> CrammedBertConfig:
    return CrammedBertConfig(**_encoder_sizes(preset, vocab_size, ids))


def _bert_config(preset: Preset, vocab_size: int, ids: TokenIds) -> BertConfig:
    return BertConfig(
        **_encoder_sizes(preset, vocab_size, ids),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
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
