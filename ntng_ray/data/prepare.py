"""From a run config to ready rows: corpus -> tokenizer -> packed rows -> train/validation split.

Lengths and settings are checked before anything is written to the cache; the tokenizer and
the packed rows are cached, so a second run (or another worker) on the same data only loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ntng_ray.config import DataConfig, RunConfig
from ntng_ray.config.presets import Family
from ntng_ray.data.collators import MLMCollator, SpanCorruptionCollator
from ntng_ray.data.learnability import (
    Learnability,
    mlm_bounds,
    span_corruption_entropy,
    token_histogram,
)
from ntng_ray.data.packing import compute_t5_lengths, pack_corpus, split_sequences
from ntng_ray.data.sources import load_corpus
from ntng_ray.data.tokenizer import TokenizerInfo, get_tokenizer


@dataclass
class PreparedData:
    """Packed rows (the row index is the example id), their split, and how to collate them."""

    tokenizer: TokenizerInfo
    rows: np.ndarray
    train_ids: np.ndarray
    val_ids: np.ndarray
    row_length: int
    input_length: int
    target_length: int | None
    data: DataConfig
    corpus_fingerprint: str

    @property
    def family(self) -> Family:
        return self.tokenizer.family

    def collator(self) -> MLMCollator | SpanCorruptionCollator:
        """MLM masking for BERT, span corruption for T5, with the run's settings."""
        tok = self.tokenizer
        if self.family == "bert":
            assert tok.mask_id is not None
            return MLMCollator(
                tok.trained_size, tok.mask_id, tok.special_ids, self.data.mlm_probability
            )
        assert tok.eos_id is not None and self.target_length is not None
        return SpanCorruptionCollator(
            self.input_length,
            self.target_length,
            self.data.noise_density,
            self.data.mean_noise_span_length,
            tok.eos_id,
            tok.sentinel_ids,
        )

    @cached_property
    def learnability(self) -> Learnability:
        """The training split's unigram entropy of labelled tokens and the loss a model without
        context can reach under this run's corruption (the collator's own settings), once."""
        counts = token_histogram(self.rows, self.train_ids, self.tokenizer.vocab_size)
        collator = self.collator()
        if isinstance(collator, MLMCollator):
            entropy, bound = mlm_bounds(
                counts, collator.special_ids.numpy(), collator.replacements.numpy()
            )
        else:
            entropy = bound = span_corruption_entropy(
                counts,
                collator.num_noise,
                collator.num_spans,
                collator.eos_id,
                collator.sentinel_ids,
            )
        return Learnability(entropy, bound, len(self.train_ids) * self.row_length)


def row_lengths(cfg: RunConfig) -> tuple[int, int | None]:
    """(row length, T5 target length or None): BERT rows are the sequence; T5 rows are raw."""
    preset = cfg.preset
    if preset.family == "bert":
        return preset.seq_len, None
    return compute_t5_lengths(
        preset.seq_len, cfg.data.noise_density, cfg.data.mean_noise_span_length
    )


def prepare_data(cfg: RunConfig) -> PreparedData:
    """The run's data, built (and cached) on first use and loaded afterwards."""
    row_length, target_length = row_lengths(cfg)
    corpus = load_corpus(cfg.data)
    cache_dir = cfg.data.resolved_cache_dir()
    family = cfg.preset.family
    info = get_tokenizer(corpus, family, cfg.vocab_size, cfg.tokenizer.lowercase, cache_dir)
    rows = pack_corpus(corpus, info, row_length, cache_dir)
    train_ids, val_ids = split_sequences(
        len(rows),
        cfg.data.validation_fraction,
        cfg.data.max_validation_sequences,
        cfg.data.split_seed,
    )
    return PreparedData(
        tokenizer=info,
        rows=rows,
        train_ids=train_ids,
        val_ids=val_ids,
        row_length=row_length,
        input_length=cfg.preset.seq_len,
        target_length=target_length,
        data=cfg.data,
        corpus_fingerprint=corpus._fingerprint,
    )
