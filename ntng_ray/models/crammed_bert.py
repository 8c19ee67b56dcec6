"""Crammed BERT: Cramming's ``bert-c5`` encoder (Geiping & Goldstein, 2023) as a transformers model.

The study's BERT and its RTX 3090 reference table are this architecture, not HF's BERT: pre-LN
blocks (LayerNorm, eps 1e-12), a GELU-gated feed-forward layer whose gate halves the
intermediate width, no biases on dense layers (nor on the fused query/key/value projection),
a scaled sinusoidal position embedding (a fixed sinusoid times one learned scalar), a
LayerNorm after the embedding and one after the last block, input and output embeddings tied
with no decoder bias and no head transform, sparse prediction (the vocabulary projection runs
on the masked positions only), and every weight drawn from N(0, 0.02). Attention goes through
``scaled_dot_product_attention``. Dropout defaults to off, as the project pretrains.

Being a ``PreTrainedModel`` with its own registered config type, an exported crammed model
saves and loads like any HF model: ``AutoModelForMaskedLM`` / ``AutoModelForSequenceClassification``
``.from_pretrained`` load it once this module is imported.

Downstream, ``CrammedBertForSequenceClassification`` is Cramming's classification head: the
mean of the final hidden states, a dense layer to 1024, tanh, dropout, then the label layer.
It averages over the attention mask's tokens only (Cramming's mean also counts padding), so a
prediction does not depend on how much padding its batch happens to have. Crammed BERT has no
token-type (segment) embedding: sentence pairs are told apart by the [SEP] between them.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput

from ntng_ray.models.active_layers import ActiveLayerList
from ntng_ray.models.sparse_prediction import sparse_mlm_output

MODEL_TYPE = "ntng-crammed-bert"


@strict
class CrammedBertConfig(PreTrainedConfig):
    """bert-c5's sizes by default; ``intermediate_size`` is the gated layer's input width."""

    model_type = MODEL_TYPE

    vocab_size: int = 32768
    hidden_size: int = 768
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 128
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    classifier_head_size: int = 1024
    classifier_dropout: float | int | None = None
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True

    def validate_architecture(self) -> None:
        """Refuse sizes the blocks cannot be built with, naming the field."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size = {self.hidden_size} is not a multiple of "
                f"num_attention_heads = {self.num_attention_heads}"
            )
        if self.intermediate_size % 2:
            raise ValueError(
                f"intermediate_size = {self.intermediate_size}: the gated layer halves it, so "
                "it must be even"
            )


class ScaledSinusoidalPosition(nn.Module):
    """Sinusoidal position codes times one learned scalar, initialised to hidden**-0.5."""

    def __init__(self, hidden: int, max_positions: int) -> None:
        super().__init__()
        self.register_buffer("codes", sinusoid_table(max_positions, hidden), persistent=False)
        self.scale = nn.Parameter(torch.tensor([hidden**-0.5]))

    def forward(self, length: int) -> torch.Tensor:
        return self.scale * self.codes[:length]


def sinusoid_table(positions: int, hidden: int) -> torch.Tensor:
    """[positions, hidden]: sin on even, cos on odd channels (Vaswani et al.'s frequencies)."""
    position = torch.arange(positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, hidden, 2).float() * (-math.log(10000.0) / hidden))
    table = torch.zeros(positions, hidden)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class CrammedEmbeddings(nn.Module):
    """Token embedding plus scaled sinusoidal positions, then LayerNorm."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(
            config.vocab_size, hidden, padding_idx=config.pad_token_id
        )
        self.positions = ScaledSinusoidalPosition(hidden, config.max_position_embeddings)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.word_embeddings(input_ids) + self.positions(input_ids.shape[1])
        return self.dropout(self.norm(embedded))


class CrammedAttention(nn.Module):
    """Multi-head self-attention: one bias-free qkv projection, SDPA, a bias-free output."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.output = nn.Linear(hidden, hidden, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, hidden = states.shape
        q, k, v = (
            self.qkv(states).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.output(attended.transpose(1, 2).reshape(batch, length, hidden))


class GatedFeedForward(nn.Module):
    """GELU-gated linear unit: ``in`` to the intermediate width, split, ``gelu(gate) * x``, out."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dense_out = nn.Linear(config.intermediate_size // 2, config.hidden_size, bias=False)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        value, gate = self.dense_in(states).chunk(2, dim=-1)
        return self.dense_out(F.gelu(gate) * value)


class CrammedLayer(nn.Module):
    """A pre-LN block: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = CrammedAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = GatedFeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        states = states + self.dropout(self.attention(self.attention_norm(states), mask))
        return states + self.dropout(self.ffn(self.ffn_norm(states)))


class CrammedBertPreTrainedModel(PreTrainedModel):
    """Config class and init: N(0, initializer_range) weights, unit norms, position scale."""

    config_class = CrammedBertConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ScaledSinusoidalPosition):
            hidden = module.codes.shape[1]
            init.copy_(module.codes, sinusoid_table(module.codes.shape[0], hidden))
            init.constant_(module.scale, hidden**-0.5)


class CrammedBertModel(CrammedBertPreTrainedModel):
    """The encoder: embeddings, the blocks (an ``ActiveLayerList``), the final LayerNorm."""

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.embeddings = CrammedEmbeddings(config)
        self.layers = ActiveLayerList(CrammedLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states [batch, length, hidden]; ``attention_mask`` 1 = attend, 0 = pad."""
        length = input_ids.shape[1]
        limit = self.config.max_position_embeddings
        if length > limit:
            raise ValueError(f"input length {length} exceeds max_position_embeddings = {limit}")
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        states = self.embeddings(input_ids)
        for layer in self.layers:
            states = layer(states, mask)
        return self.final_norm(states)


class CrammedBertForMaskedLM(CrammedBertPreTrainedModel):
    """The pretraining model: the encoder and a bias-free decoder tied to the token embedding.

    With labels, the loss and logits are sparse (one row per labelled position, row-major;
    ``masked_positions`` names them without a host sync), as ``SparseBertForMaskedLM``'s;
    without, logits are dense [batch, length, vocab].
    """

    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "decoder.weight": "encoder.embeddings.word_embeddings.weight"
    }

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.encoder = CrammedBertModel(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        hidden = self.encoder(input_ids, attention_mask)
        if labels is None:
            return MaskedLMOutput(logits=self.decoder(hidden))
        return sparse_mlm_output(hidden, labels, self.decoder, masked_positions)


class CrammedBertForSequenceClassification(CrammedBertPreTrainedModel):
    """Cramming's downstream head: masked mean pooling, dense to 1024, tanh, dropout, labels.

    ``config.problem_type`` "regression" trains mean squared error on one output, otherwise
    cross-entropy over ``num_labels`` classes.
    """

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^decoder\."]

    def __init__(self, config: CrammedBertConfig) -> None:
        super().__init__(config)
        self.encoder = CrammedBertModel(config)
        dropout = config.classifier_dropout
        self.pooler = nn.Linear(config.hidden_size, config.classifier_head_size)
        self.pooler_dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.classifier_head_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids, attention_mask)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        logits = self.classifier(self.pooler_dropout(torch.tanh(self.pooler(pooled))))
        if labels is None:
            return SequenceClassifierOutput(logits=logits)
        if self.config.problem_type == "regression":
            loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        else:
            loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, CrammedBertConfig)
AutoModel.register(CrammedBertConfig, CrammedBertModel)
AutoModelForMaskedLM.register(CrammedBertConfig, CrammedBertForMaskedLM)
AutoModelForSequenceClassification.register(CrammedBertConfig, CrammedBertForSequenceClassification)
