"""Crammed BERT is Cramming's bert-c5: checked against a forward written out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from ntng_ray.config.presets import PRESETS
from ntng_ray.models.builders import TokenIds, build_model, count_parameters
from ntng_ray.models.crammed_bert import (
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
)
from ntng_ray.models.export import load_exported_model

VOCAB, PAD = 97, 0
SMALL = CrammedBertConfig(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=24,
    max_position_embeddings=12,
)


def _batch(seed: int = 0, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, length), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -100)
    labels[0, 0] = ids[0, 0]  # at least one labelled position
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _model(seed: int = 0) -> CrammedBertForMaskedLM:
    torch.manual_seed(seed)
    model = CrammedBertForMaskedLM(SMALL).eval()
    with torch.no_grad():  # non-trivial norms and position scale, so the check sees them
        for name, p in model.named_parameters():
            if "norm" in name or "scale" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-12) * norm.weight + norm.bias


def _reference_logits(model: CrammedBertForMaskedLM, ids: torch.Tensor) -> torch.Tensor:
    """Dense logits written out from the architecture's definition, independent of the module."""
    encoder, hidden, heads = model.encoder, SMALL.hidden_size, SMALL.num_attention_heads
    batch, length = ids.shape
    codes = torch.tensor(
        [
            [
                math.sin(p / 10000 ** (i / hidden)) if i % 2 == 0
                else math.cos(p / 10000 ** ((i - 1) / hidden))
                for i in range(hidden)
            ]
            for p in range(length)
        ]
    )  # fmt: skip
    embedding = encoder.embeddings.word_embeddings.weight
    x = embedding[ids] + encoder.embeddings.positions.scale * codes
    x = _layer_norm(x, encoder.embeddings.norm)
    for layer in encoder.layers:
        h = _layer_norm(x, layer.attention_norm)
        qkv = h @ layer.attention.qkv.weight.T
        q, k, v = (
            part.reshape(batch, length, heads, -1).transpose(1, 2) for part in qkv.split(hidden, -1)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // heads), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = x + attended @ layer.attention.output.weight.T
        h = _layer_norm(x, layer.ffn_norm)
        value, gate = (h @ layer.ffn.dense_in.weight.T).chunk(2, dim=-1)
        x = x + (F.gelu(gate) * value) @ layer.ffn.dense_out.weight.T
    return _layer_norm(x, encoder.final_norm) @ embedding.T


def test_forward_matches_the_architecture_written_by_hand() -> None:
    model = _model()
    ids = _batch()["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        reference = _reference_logits(model, ids)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_dense_layers_have_no_bias_and_the_decoder_is_the_embedding() -> None:
    model = _model()
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * SMALL.num_hidden_layers
    assert all(m.bias is None for m in [*linears, model.decoder])
    assert model.decoder.weight is model.encoder.embeddings.word_embeddings.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(**_batch()).loss.backward()
    optimizer.step()
    assert model.decoder.weight is model.encoder.embeddings.word_embeddings.weight


def test_tied_embedding_survives_export_and_auto_loading(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as stored:
        assert "decoder.weight" not in set(stored.keys())
    for loaded in (AutoModelForMaskedLM.from_pretrained(tmp_path), load_exported_model(tmp_path)):
        assert type(loaded) is CrammedBertForMaskedLM
        assert loaded.decoder.weight is loaded.encoder.embeddings.word_embeddings.weight
        batch = _batch()
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**batch).loss, model(**batch).loss)


def test_sparse_prediction_gives_the_dense_loss_and_gradients() -> None:
    sparse, dense = _model(), _model()
    batch = _batch()
    sparse_loss = sparse.train()(**batch).loss
    logits = dense.train()(input_ids=batch["input_ids"]).logits
    dense_loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1))
    torch.testing.assert_close(sparse_loss, dense_loss)
    sparse_loss.backward()
    dense_loss.backward()
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_sparse_logits_are_the_labelled_positions_in_row_major_order() -> None:
    model = _model()
    batch = _batch()
    with torch.no_grad():
        sparse = model(**batch).logits
        dense = model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(sparse, dense[batch["labels"] != -100])


def test_padding_is_ignored_by_attention_and_by_the_classifier_pooling() -> None:
    torch.manual_seed(0)
    classifier = CrammedBertForSequenceClassification(SMALL.__class__(**SMALL.to_dict())).eval()
    ids = _batch(length=7)["input_ids"][:1]
    padded = torch.cat([ids, torch.full((1, 5), PAD)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        short = classifier(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = classifier(input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-5)


def test_classifier_loads_the_pretrained_encoder_with_a_new_head(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=1, problem_type="regression"
    )
    assert type(classifier) is CrammedBertForSequenceClassification
    for (name, p), q in zip(
        classifier.encoder.named_parameters(), model.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)
    assert classifier.pooler.out_features == SMALL.classifier_head_size
    ids = _batch()["input_ids"]
    out = classifier(input_ids=ids, labels=torch.tensor([0.5, 1.0, 2.0]))
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits[:, 0], torch.tensor([0.5, 1, 2])))


def test_bert_crammed_has_bert_c5_parameter_count() -> None:
    """bert-c5 at vocabulary 32768: embedding (tied) + 16 blocks + norms + the position scale."""
    preset = PRESETS["bert-crammed"]
    with torch.device("meta"):
        model = build_model(preset, preset.vocab_size, TokenIds(pad_id=PAD), seed=0)
    h, ffn, layers = preset.hidden, preset.ffn, preset.num_layers
    block = 2 * 2 * h + 3 * h * h + h * h + h * ffn + (ffn // 2) * h
    expected = preset.vocab_size * h + 2 * h + 1 + layers * block + 2 * h
    assert count_parameters(model) == expected == 119_589_889


def test_sizes_the_blocks_cannot_have_are_refused() -> None:
    with pytest.raises(StrictDataclassError, match="num_attention_heads = 5"):
        CrammedBertConfig(hidden_size=16, num_attention_heads=5)
    with pytest.raises(StrictDataclassError, match="intermediate_size = 25"):
        CrammedBertConfig(intermediate_size=25)


def test_longer_input_than_the_position_table_is_refused() -> None:
    with pytest.raises(ValueError, match="max_position_embeddings = 12"):
        _model()(input_ids=torch.ones(1, 13, dtype=torch.long))
