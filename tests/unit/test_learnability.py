"""Learnability figures: exact entropies, the MLM context-free bound against a brute-force
H(X | O) and against the collator's own samples, and T5's target mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntng_ray.data import learnability
from ntng_ray.data.collators import (
    IGNORE,
    KEEP_FRACTION,
    MASK_FRACTION,
    RANDOM_FRACTION,
    MLMCollator,
    SpanCorruptionCollator,
)
from ntng_ray.data.learnability import (
    Learnability,
    entropy_nats,
    mlm_bounds,
    span_corruption_entropy,
    token_histogram,
)
from ntng_ray.data.packing import compute_t5_lengths

SPECIALS = (0, 1, 2)
MASK = 2


def brute_force_mlm_bound(
    counts: np.ndarray, specials: tuple[int, ...], replacements: np.ndarray
) -> float:
    """H(X | O) from the full joint table of label and observation, O(V²)."""
    vocab = len(counts)
    p = counts.astype(np.float64)
    p[list(specials)] = 0.0
    p /= p.sum()
    joint = np.zeros((vocab, vocab + 1))  # label x, observation y (the last column: [MASK])
    for x in range(vocab):
        joint[x, vocab] += MASK_FRACTION * p[x]
        joint[x, x] += KEEP_FRACTION * p[x]
        for y in replacements:
            joint[x, y] += RANDOM_FRACTION * p[x] / len(replacements)
    return conditional_entropy(joint)


def conditional_entropy(joint: np.ndarray) -> float:
    """H(X | Y) of a (possibly unnormalised) table indexed [x, y]."""
    joint = joint / joint.sum()
    seen = joint.sum(axis=0)
    total = 0.0
    for y in np.nonzero(seen)[0]:
        posterior = joint[:, y][joint[:, y] > 0] / seen[y]
        total -= seen[y] * float((posterior * np.log(posterior)).sum())
    return total


def test_entropy_of_uniform_is_log_k_and_specials_are_not_labels() -> None:
    assert entropy_nats(np.array([0, 5, 5, 5, 5])) == pytest.approx(math.log(4))
    counts = np.array([1000, 1000, 1000, 7, 7, 7, 7, 7, 0])  # three special ids, five tokens
    entropy, _ = mlm_bounds(counts, SPECIALS, np.arange(3, 9))
    assert entropy == pytest.approx(math.log(5))


def test_mlm_bound_equals_brute_force_conditional_entropy() -> None:
    counts = np.random.default_rng(0).integers(1, 60, size=12)
    counts[7] = 0  # observable as a random replacement only: the posterior is then p itself
    replacements = np.arange(3, 10)  # 10 and 11 occur as labels but are never drawn
    entropy, bound = mlm_bounds(counts, SPECIALS, replacements)
    assert bound == pytest.approx(brute_force_mlm_bound(counts, SPECIALS, replacements), rel=1e-12)
    # [MASK] costs H; kept and replaced (equally likely) cost H/2 at least, so the bound is at
    # most 0.1·H below H, and not knowing which of the two happened costs at most ln 2 more.
    assert 0.9 * entropy <= bound <= min(entropy, 0.9 * entropy + 0.2 * math.log(2))


def test_mlm_bound_matches_the_collator_samples() -> None:
    """The collator's own (observation, label) pairs have the conditional entropy computed."""
    vocab = 12
    weights = np.array([4, 0, 0, 30, 20, 12, 8, 5, 3, 2, 1, 0], dtype=np.float64)
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(rng.choice(vocab, size=(800, 64), p=weights / weights.sum()))
    collator = MLMCollator(vocab, MASK, SPECIALS, mlm_probability=1.0)
    batch = collator(rows, torch.Generator().manual_seed(1))
    chosen = batch["labels"] != IGNORE
    joint = np.zeros((vocab, vocab))
    np.add.at(joint, (batch["labels"][chosen].numpy(), batch["input_ids"][chosen].numpy()), 1)

    counts = token_histogram(rows.numpy(), np.arange(len(rows)), vocab)
    _, bound = mlm_bounds(counts, SPECIALS, collator.replacements.numpy())
    assert conditional_entropy(joint) == pytest.approx(bound, abs=0.01)


def t5_collator(inputs: int, eos: int, sentinels: tuple[int, ...]) -> SpanCorruptionCollator:
    _, targets = compute_t5_lengths(inputs, 0.15, 3.0)
    return SpanCorruptionCollator(inputs, targets, 0.15, 3.0, eos, sentinels)


@pytest.mark.parametrize("constant_rows", [True, False])
def test_t5_target_entropy_is_that_of_the_collator_targets(constant_rows: bool) -> None:
    """Constant rows make the noise tokens' histogram exact; random rows match it in
    expectation. Raw rows hold EOS (the document separator) among the noise, as packed."""
    vocab, eos, sentinels = 40, 1, tuple(range(39, 19, -1))
    collator = t5_collator(32, eos, sentinels)
    rng = np.random.default_rng(2)
    if constant_rows:
        values = rng.integers(1, 20, size=(3000, 1))
        rows = np.repeat(values, collator.tokens_length, axis=1)
    else:
        rows = rng.integers(1, 20, size=(3000, collator.tokens_length))
    labels = collator(torch.from_numpy(rows), torch.Generator().manual_seed(2))["labels"]
    target_histogram = np.bincount(labels.numpy().ravel(), minlength=vocab)

    counts = token_histogram(rows, np.arange(len(rows)), vocab)
    got = span_corruption_entropy(
        counts, collator.num_noise, collator.num_spans, eos, collator.sentinel_ids
    )
    assert got == pytest.approx(
        entropy_nats(target_histogram), abs=1e-12 if constant_rows else 5e-3
    )


def test_token_histogram_counts_the_given_rows_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learnability, "CHUNK_ROWS", 2)
    rows = np.arange(30, dtype=np.int32).reshape(5, 6) % 8
    ids = np.array([0, 2, 3])
    counts = token_histogram(rows, ids, vocab_size=8)
    np.testing.assert_array_equal(counts, np.bincount(rows[ids].ravel(), minlength=8))
    assert counts.sum() == len(ids) * rows.shape[1]
    with pytest.raises(ValueError, match=r"vocab_size = 4"):
        token_histogram(rows, ids, vocab_size=4)


def test_bad_histograms_are_named() -> None:
    with pytest.raises(ValueError, match=r"counts without special ids"):
        mlm_bounds(np.array([5, 5, 5, 0]), SPECIALS, np.array([3]))
    with pytest.raises(ValueError, match=r"num_spans = 3"):
        span_corruption_entropy(np.ones(8), 4, 3, 1, (7, 6))


def test_learnability_figures_as_a_dict() -> None:
    figures = Learnability(6.0, 5.45, 128 * 10)
    assert figures.to_dict() == {
        "unigram_entropy_nats": 6.0,
        "context_free_bound_nats": 5.45,
        "train_tokens": 1280,
    }
