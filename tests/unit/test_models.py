"""Presets build, and the active-layer interface runs a subset while keeping every weight."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from ntng_ray.config.presets import PRESETS
from ntng_ray.models.active_layers import (
    active_layers,
    layer_stacks,
    num_layers,
    set_active_layers,
)
from ntng_ray.models.builders import TokenIds, build_model
from ntng_ray.models.export import load_exported_model
from ntng_ray.models.t5_v1_1 import load_untied_t5

VOCAB = 512


def _batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (2, 32), generator=g)
    if family == "bert":
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, -100)
    else:
        labels = torch.randint(5, VOCAB, (2, 8), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.fixture(params=["bert-tiny", "bert-crammed-tiny", "t5-tiny"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return build_model(PRESETS[request.param], VOCAB, TokenIds(pad_id=0, eos_id=1), seed=0).eval()


def _truncated(model: torch.nn.Module, keep: tuple[int, ...]) -> torch.nn.Module:
    """A deep copy whose layer lists physically hold only ``keep``: the reference behaviour."""
    clone = copy.deepcopy(model)
    set_active_layers(clone, None)
    stacks = layer_stacks(clone)
    for stack in stacks:
        kept = [stack[i] for i in keep]
        for name in list(stack._modules):
            del stack._modules[name]
        for i, layer in enumerate(kept):
            stack._modules[str(i)] = layer
    return clone


def test_presets_are_consistent() -> None:
    for preset in PRESETS.values():
        assert preset.hidden % preset.heads == 0 or preset.d_kv is not None
    assert PRESETS["bert-crammed"].num_layers == 16
    assert PRESETS["t5-v1_1-base"].num_layers == 12


def test_first_k_layers_match_a_truncated_model(model: torch.nn.Module) -> None:
    batch = _batch("t5" if hasattr(model, "shared") else "bert")
    keys = set(model.state_dict())
    assert set_active_layers(model, 2) == (0, 1)
    with torch.no_grad():
        subset = model(**batch).loss
        reference = _truncated(model, (0, 1))(**batch).loss
    torch.testing.assert_close(subset, reference)
    assert set(model.state_dict()) == keys
    assert active_layers(model) == (0, 1)
    set_active_layers(model, None)
    assert active_layers(model) == tuple(range(num_layers(model)))


@pytest.mark.parametrize("preset", ["bert-tiny", "bert-crammed-tiny"])
def test_bert_arbitrary_subset_skips_the_others(preset: str) -> None:
    model = build_model(PRESETS[preset], VOCAB, TokenIds(pad_id=0), seed=0).eval()
    batch = _batch("bert")
    set_active_layers(model, [1, 3])
    with torch.no_grad():
        subset = model(**batch).loss
        reference = _truncated(model, (1, 3))(**batch).loss
    torch.testing.assert_close(subset, reference)


def test_t5_subset_without_block_zero_keeps_position_bias() -> None:
    model = build_model(PRESETS["t5-tiny"], VOCAB, TokenIds(pad_id=0, eos_id=1), seed=0).eval()
    params = sum(p.numel() for p in model.parameters())
    set_active_layers(model, [1, 2])
    for stack in (model.encoder.block, model.decoder.block):
        lender = stack[0].layer[0].SelfAttention
        borrower = stack[1].layer[0].SelfAttention
        assert borrower.has_relative_attention_bias
        assert borrower.relative_attention_bias is lender.relative_attention_bias
    assert sum(p.numel() for p in model.parameters()) == params
    set_active_layers(model, None)
    assert not model.encoder.block[1].layer[0].SelfAttention.has_relative_attention_bias
    assert "relative_attention_bias" not in model.encoder.block[1].layer[0].SelfAttention.__dict__


def test_bad_layer_requests_are_refused(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.4"):
        set_active_layers(model, 5)
    with pytest.raises(ValueError, match=r"within 0\.\.3"):
        set_active_layers(model, [0, 4])


def test_sparse_prediction_gives_the_dense_loss_and_gradients() -> None:
    model = build_model(PRESETS["bert-tiny"], VOCAB, TokenIds(pad_id=0), seed=0)
    dense = transformers.BertForMaskedLM(model.config)
    dense.load_state_dict(model.state_dict())
    batch = _batch("bert")
    sparse_loss = model(**batch).loss
    dense_loss = dense(**batch).loss
    torch.testing.assert_close(sparse_loss, dense_loss)
    sparse_loss.backward()
    dense_loss.backward()
    for (name, p), q in zip(model.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_t5_output_layer_is_untied_through_export_and_stock_loading(tmp_path: Path) -> None:
    """T5 v1.1: lm_head is its own weight (std d_model**-0.5), in the export and after loading."""
    preset = PRESETS["t5-tiny"]
    model = build_model(preset, VOCAB, TokenIds(pad_id=0, eos_id=1), seed=0).eval()
    assert model.lm_head.weight is not model.shared.weight
    assert model.lm_head.weight.std().item() == pytest.approx(preset.hidden**-0.5, rel=0.05)
    assert model.shared.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert not model.config.scale_decoder_outputs
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as stored:
        assert {"lm_head.weight", "shared.weight"} <= set(stored.keys())
    batch = _batch("t5")
    for loaded in (
        transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path),
        load_exported_model(tmp_path),
    ):
        assert loaded.lm_head.weight is not loaded.shared.weight
        torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
        assert not loaded.config.scale_decoder_outputs
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**batch).loss, model(**batch).loss)


def test_t5_export_from_a_tied_model_keeps_its_output_layer(tmp_path: Path) -> None:
    """An export without lm_head.weight (the tied era) loads with lm_head = the embedding."""
    tied = build_model(PRESETS["t5-tiny"], VOCAB, TokenIds(pad_id=0, eos_id=1), seed=0)
    stock = transformers.T5ForConditionalGeneration(tied.config).eval()
    stock.save_pretrained(tmp_path)
    loaded = load_untied_t5(tmp_path).eval()
    assert loaded.lm_head.weight is not loaded.shared.weight
    torch.testing.assert_close(loaded.lm_head.weight, stock.shared.weight)
    batch = _batch("t5")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).loss, stock(**batch).loss)
