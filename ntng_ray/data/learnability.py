"""How much a run can learn without context: figures that put its loss in perspective.

A model that sees no context predicts each labelled token from what is at its position alone.
Its best expected loss (the context-free bound) is computed here from the training split's
token histogram under the run's own corruption; a final loss well below it shows that the model
learned from context, one near it that the run learned the unigram statistics and little else.
Numpy only: the figures are exact sums over the vocabulary, not samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ntng_ray.data.collators import KEEP_FRACTION, MASK_FRACTION, RANDOM_FRACTION

CHUNK_ROWS = 1 << 16  # rows counted at once: bounds the copy of a large split


@dataclass(frozen=True)
class Learnability:
    """A run's data figures: what a context-free model reaches, and how much data there is."""

    unigram_entropy_nats: float
    context_free_bound_nats: float
    train_tokens: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def token_histogram(rows: np.ndarray, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """int64 [vocab_size]: how often each id occurs in ``rows[ids]``, counted in chunks."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(ids), CHUNK_ROWS):
        chunk = rows[ids[start : start + CHUNK_ROWS]].ravel()
        if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
            raise ValueError(
                f"rows hold ids in [{chunk.min()}, {chunk.max()}], outside "
                f"vocab_size = {vocab_size}"
            )
        counts += np.bincount(chunk, minlength=vocab_size)
    return counts


def entropy_nats(counts: np.ndarray) -> float:
    """Entropy (natural log) of the distribution proportional to ``counts``."""
    p = _distribution(counts, "counts")
    return -float(_xlogx(p).sum())


def mlm_bounds(
    counts: np.ndarray, special_ids: Sequence[int] | np.ndarray, replacement_ids: np.ndarray
) -> tuple[float, float]:
    """(unigram entropy, context-free bound) of BERT's masked LM, in nats per labelled token.

    Labels x ~ p, the histogram without ``special_ids`` (never chosen). The model sees [MASK]
    (MASK_FRACTION: no information, H(p)), x itself (KEEP_FRACTION) or a replacement r drawn
    uniformly from ``replacement_ids`` (RANDOM_FRACTION), and cannot tell the last two apart:
    seeing y, its best guess is P(x | y) ∝ p(x) (keep·1{x=y} + random·q(y)). The bound is
    H(X | O) = mask·H(p) + Σ_y P(y) H(X | y), in closed form per y from Σ_x p log p, so O(V).
    Kept and replaced are equally likely, so it lies in [0.9·H, 0.9·H + 0.2·ln 2]: at most
    0.1·H below the unigram entropy.
    """
    p = np.asarray(counts, dtype=np.float64).copy()
    p[np.asarray(list(special_ids), dtype=np.int64)] = 0.0
    p = _distribution(p, "counts without special ids")
    replacement_ids = np.asarray(replacement_ids, dtype=np.int64)
    if replacement_ids.size == 0:
        raise ValueError("replacement_ids is empty: MLM needs tokens to draw replacements from")
    if replacement_ids.min() < 0 or replacement_ids.max() >= p.size:
        raise ValueError(
            f"replacement_ids span [{replacement_ids.min()}, {replacement_ids.max()}], outside "
            f"[0, len(counts) = {p.size})"
        )
    q = np.zeros_like(p)
    q[replacement_ids] = 1.0 / replacement_ids.size
    plogp = _xlogx(p)
    entropy = -float(plogp.sum())
    kept, random = KEEP_FRACTION * p, RANDOM_FRACTION * q  # P(o = y, kept), P(o = y, replaced)
    seen = kept + random  # P(o = y)
    observed = seen > 0
    # Seeing y: x = y has posterior (kept + random·p(y)) / seen; any other x has
    # random·p(x) / seen, whose entropy terms sum in closed form over x ≠ y.
    share = np.divide(random, seen, out=np.zeros_like(p), where=observed)
    log_share = np.log(share, out=np.zeros_like(p), where=share > 0)
    same = np.divide(kept + random * p, seen, out=np.zeros_like(p), where=observed)
    others = -random * ((-entropy - plogp) + (1.0 - p) * log_share)
    bound = MASK_FRACTION * entropy + float((others - seen * _xlogx(same)).sum())
    return entropy, bound


def span_corruption_entropy(
    counts: np.ndarray,
    num_noise: int,
    num_spans: int,
    eos_id: int,
    sentinel_ids: Sequence[int] | np.ndarray,
) -> float:
    """Entropy of T5's target tokens: per target, ``num_noise`` tokens drawn from the raw rows
    (specials included, as they come), the first ``num_spans`` sentinels once each, one EOS.

    It is also the context-free bound: the noise is removed from the encoder input, so with the
    decoder's context ignored nothing at a target position tells which token it holds.
    """
    if num_noise < 1 or not 1 <= num_spans <= len(sentinel_ids):
        raise ValueError(
            f"num_noise = {num_noise} must be >= 1 and num_spans = {num_spans} in "
            f"[1, {len(sentinel_ids)}] (the sentinels)"
        )
    target = num_noise * _distribution(counts, "counts")
    target[np.asarray(sentinel_ids[:num_spans], dtype=np.int64)] += 1.0
    target[eos_id] += 1.0
    return entropy_nats(target)


def _distribution(counts: np.ndarray, name: str) -> np.ndarray:
    """``counts`` as float64 probabilities; an error names ``name`` if none is positive."""
    values = np.asarray(counts, dtype=np.float64)
    if values.ndim != 1 or (values < 0).any() or values.sum() <= 0:
        raise ValueError(
            f"{name} must be a 1-d histogram, none negative, with a positive total; got shape "
            f"{values.shape}, minimum {values.min(initial=np.inf)}, total {values.sum()}"
        )
    return values / values.sum()


def _xlogx(p: np.ndarray) -> np.ndarray:
    """p·log p elementwise, 0 where p is 0."""
    return p * np.log(p, out=np.zeros_like(p), where=p > 0)
