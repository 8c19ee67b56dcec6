"""The seeded collators: BERT masking statistics and T5 span corruption, shape and content."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntng_ray.data.collators import MLMCollator, SpanCorruptionCollator
from ntng_ray.data.packing import compute_t5_lengths, noise_span_counts

VOCAB = 1000
SPECIALS = frozenset({0, 1, 2, 3, 4})
MASK = 4
EOS = 1
SENTINELS = tuple(range(VOCAB - 1, VOCAB - 101, -1))


def bert_rows(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random ordinary tokens, framed by [CLS]/[SEP] and with some [SEP]s inside, like packing."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(5, VOCAB, (batch, length), generator=generator)
    rows[:, 0], rows[:, -1] = 2, 3
    rows[:, length // 3] = 3
    return rows


def t5_rows(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Ordinary tokens with a few document separators (EOS); never sentinels."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(3, VOCAB - 100, (batch, length), generator=generator)
    rows[:, length // 2] = EOS
    return rows


def span_collator(inputs: int, density: float = 0.15, span: float = 3.0) -> SpanCorruptionCollator:
    _, targets = compute_t5_lengths(inputs, density, span)
    return SpanCorruptionCollator(inputs, targets, density, span, EOS, SENTINELS)


# --- MLM --------------------------------------------------------------------------------------


MLMBatch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def mlm_batch() -> MLMBatch:
    rows = bert_rows(256, 128)
    collator = MLMCollator(VOCAB, MASK, SPECIALS, mlm_probability=0.15)
    return rows, collator(rows, torch.Generator().manual_seed(0))


def test_mlm_masks_fifteen_percent_of_ordinary_tokens(mlm_batch: MLMBatch) -> None:
    rows, batch = mlm_batch
    chosen = batch["labels"] != -100
    ordinary = ~torch.isin(rows, torch.tensor(sorted(SPECIALS)))
    rate = chosen.sum().item() / ordinary.sum().item()
    assert abs(rate - 0.15) < 0.01


def test_mlm_splits_chosen_tokens_80_10_10(mlm_batch: MLMBatch) -> None:
    rows, batch = mlm_batch
    chosen = batch["labels"] != -100
    inputs = batch["input_ids"][chosen]
    original = rows[chosen]
    total = chosen.sum().item()
    masked = (inputs == MASK).sum().item() / total
    kept = (inputs == original).sum().item() / total
    randomized = ((inputs != MASK) & (inputs != original)).sum().item() / total
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015 and abs(randomized - 0.1) < 0.015
    assert not torch.isin(inputs, torch.tensor(sorted(SPECIALS - {MASK}))).any()


def test_mlm_never_touches_special_tokens_and_labels_only_chosen(mlm_batch: MLMBatch) -> None:
    rows, batch = mlm_batch
    special = torch.isin(rows, torch.tensor(sorted(SPECIALS)))
    assert (batch["labels"][special] == -100).all()
    assert torch.equal(batch["input_ids"][special], rows[special])
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], rows[chosen])
    assert torch.equal(batch["input_ids"][~chosen], rows[~chosen])
    assert (batch["attention_mask"] == 1).all()
    assert batch["input_ids"].shape == batch["labels"].shape == rows.shape


def test_mlm_same_seed_same_batch() -> None:
    rows = bert_rows(8, 64)
    collator = MLMCollator(VOCAB, MASK, SPECIALS)
    first = collator(rows, torch.Generator().manual_seed(5))
    second = collator(rows, torch.Generator().manual_seed(5))
    other = collator(rows, torch.Generator().manual_seed(6))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["labels"], other["labels"])


# --- span corruption --------------------------------------------------------------------------


def reconstruct(inputs: list[int], labels: list[int]) -> list[int]:
    """Fill each sentinel in the input with the span that follows it in the target."""
    assert inputs[-1] == EOS and labels[-1] == EOS
    spans: dict[int, list[int]] = {}
    current: list[int] = []
    for token in labels[:-1]:
        if token in SENTINELS:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    row: list[int] = []
    for token in inputs[:-1]:
        row += spans[token] if token in SENTINELS else [token]
    return row


@pytest.mark.parametrize("inputs", [32, 64, 128, 512])
@pytest.mark.parametrize(("density", "span"), [(0.15, 3.0), (0.3, 2.0), (0.1, 1.0)])
def test_span_corruption_lengths_noise_and_reconstruction(
    inputs: int, density: float, span: float
) -> None:
    collator = span_collator(inputs, density, span)
    tokens, targets = compute_t5_lengths(inputs, density, span)
    rows = t5_rows(16, tokens)
    batch = collator(rows, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (16, inputs)
    assert batch["attention_mask"].shape == (16, inputs)
    assert batch["labels"].shape == (16, targets)
    num_noise, num_spans = noise_span_counts(tokens, density, span)
    assert num_noise == round(tokens * density)
    for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"], strict=True):
        label_list = labels.tolist()
        noise = [t for t in label_list[:-1] if t not in SENTINELS]
        assert len(noise) == num_noise
        used = [t for t in ids.tolist() if t in SENTINELS]
        assert used == list(SENTINELS[:num_spans])
        assert [t for t in label_list if t in SENTINELS] == used
        assert reconstruct(ids.tolist(), label_list) == row.tolist()


def test_spans_are_random_per_row_and_average_the_mean_length() -> None:
    collator = span_collator(512)
    rows = t5_rows(64, collator.tokens_length)
    batch = collator(rows, torch.Generator().manual_seed(1))
    masks = {tuple((row == SENTINELS[0]).nonzero().ravel().tolist()) for row in batch["input_ids"]}
    assert len(masks) > 32, "each row draws its own spans"
    noise = collator.noise_mask(2000, np.random.default_rng(0))
    assert not noise[:, 0].any() and noise[:, -1].all()
    starts = (noise[:, 1:] & ~noise[:, :-1]).sum()
    assert abs(noise.sum() / starts - 3.0) < 0.1
    assert abs(noise.mean() - 0.15) < 0.005


def test_span_corruption_same_seed_same_batch() -> None:
    collator = span_collator(128)
    rows = t5_rows(8, collator.tokens_length)
    first = collator(rows, torch.Generator().manual_seed(9))
    second = collator(rows, torch.Generator().manual_seed(9))
    other = collator(rows, torch.Generator().manual_seed(10))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["input_ids"], other["input_ids"])


def test_span_corruption_refuses_wrong_lengths() -> None:
    collator = span_collator(128)
    with pytest.raises(ValueError, match=f"rows of {collator.tokens_length} tokens, got 128"):
        collator(t5_rows(2, 128), torch.Generator())
    with pytest.raises(ValueError, match="target_length 30"):
        SpanCorruptionCollator(128, 30, 0.15, 3.0, EOS, SENTINELS)
