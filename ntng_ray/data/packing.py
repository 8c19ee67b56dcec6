"""Packing: tokenized documents, concatenated and cut into fixed-length rows, and the split.

Documents are joined by a separator ([SEP] for BERT, </s> for T5) and cut into rows with no
padding; the ragged tail is dropped. BERT rows are ``[CLS] + seq_len - 2 tokens + [SEP]``; T5
rows are raw tokens of the length that span corruption turns into exactly ``seq_len`` inputs.
A row's index is its stable example id. Packed rows are cached as int32 ``.npy`` files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NoReturn

import datasets
import numpy as np
import pyarrow.compute as pc

from ntng_ray.atomic import write_atomic
from ntng_ray.data.tokenizer import NUM_SENTINELS, TokenizerInfo
from ntng_ray.errors import NtngError

MIN_ROWS = 2


def noise_span_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(noise tokens, noise spans) in a row of ``length``, as T5's ``random_spans_noise_mask``.

    Shared by the length computation and the collator, so both always agree. At least one
    noise and one non-noise token, at least one span, never more spans than either kind fills.
    """
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = round(min(num_noise, length - num_noise) / mean_noise_span_length)
    return num_noise, max(num_spans, 1)


def corrupted_lengths(
    tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(input, target) lengths after span corruption of ``tokens_length`` tokens, EOS included."""
    num_noise, num_spans = noise_span_counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def compute_t5_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(tokens_length, targets_length): the raw row length whose corruption gives exactly
    ``inputs_length`` input tokens, and the resulting target length.

    As T5's ``random_spans_helper`` / HF's ``compute_input_and_target_lengths``: the largest
    raw length whose inputs fit. The input length never exceeds the raw length plus one, so the
    search starts just below ``inputs_length``.
    """
    tokens_length = inputs_length - 1
    while (
        corrupted_lengths(tokens_length + 1, noise_density, mean_noise_span_length)[0]
        <= inputs_length
    ):
        tokens_length += 1
    got_inputs, targets_length = corrupted_lengths(
        tokens_length, noise_density, mean_noise_span_length
    )
    settings = (
        f"data.noise_density = {noise_density}, "
        f"data.mean_noise_span_length = {mean_noise_span_length}"
    )
    if got_inputs != inputs_length:
        raise NtngError(
            f"{settings}: no row length corrupts to exactly {inputs_length} input tokens; "
            "change the density or the mean span length"
        )
    spans = noise_span_counts(tokens_length, noise_density, mean_noise_span_length)[1]
    if spans > NUM_SENTINELS:
        raise NtngError(
            f"{settings}: {spans} noise spans per sequence, more than T5's {NUM_SENTINELS} "
            "sentinels; raise the mean span length or lower the density"
        )
    return tokens_length, targets_length


def packed_path(
    cache_dir: Path, corpus_fingerprint: str, info: TokenizerInfo, row_length: int
) -> Path:
    key = f"{corpus_fingerprint}|{info.content_hash}|{info.family}|{row_length}"
    return cache_dir / "packed" / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"


def pack_corpus(
    corpus: datasets.Dataset, info: TokenizerInfo, row_length: int, cache_dir: Path
) -> np.ndarray:
    """int32 rows [N, row_length] of the packed corpus, from the cache when already built."""
    path = packed_path(cache_dir, corpus._fingerprint, info, row_length)
    if path.exists():
        return np.load(path)
    rows = cut_rows(token_stream(corpus, info), info, row_length)
    write_atomic(path, lambda temp: np.save(temp, rows))
    return rows


def _encode(texts: list[str], info: TokenizerInfo) -> dict[str, list[list[int]]]:
    encodings = info.tokenizer.encode_batch(texts, add_special_tokens=False)
    return {"ids": [[*encoding.ids, info.separator_id] for encoding in encodings]}


def token_stream(corpus: datasets.Dataset, info: TokenizerInfo) -> np.ndarray:
    """All documents' tokens, each followed by the separator, as one int32 array."""
    encoded = corpus.map(
        _encode,
        batched=True,
        input_columns="text",
        remove_columns=corpus.column_names,
        fn_kwargs={"info": info},
        features=datasets.Features({"ids": datasets.Sequence(datasets.Value("int32"))}),
        keep_in_memory=True,
        desc="Tokenize",
    )
    ids = encoded.with_format("arrow")[:]["ids"]
    return pc.list_flatten(ids).to_numpy().astype(np.int32, copy=False)


def cut_rows(stream: np.ndarray, info: TokenizerInfo, row_length: int) -> np.ndarray:
    """Cut ``stream`` into rows, framing BERT rows with [CLS] ... [SEP]; drop the tail."""
    frame = (info.cls_id, info.sep_id) if info.family == "bert" else None
    body = row_length - (2 if frame else 0)
    count = len(stream) // body
    if count < MIN_ROWS:
        _too_few_rows(count, f"{len(stream)} tokens, rows of {row_length}")
    rows = stream[: count * body].reshape(count, body)
    if frame:
        cls, sep = frame
        rows = np.concatenate([np.full((count, 1), cls), rows, np.full((count, 1), sep)], axis=1)
    return rows.astype(np.int32)


def _too_few_rows(count: int, detail: str) -> NoReturn:
    raise NtngError(
        f"the corpus packs into {count} sequence(s) ({detail}); a run needs at least {MIN_ROWS} "
        "(one to train on, one to validate): add documents (data.files, "
        "data.synthetic.num_documents)"
    )


def split_sequences(
    num_rows: int, validation_fraction: float, max_validation_sequences: int, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_ids, val_ids), sorted and disjoint; the same seed gives the same split."""
    num_val = min(max_validation_sequences, max(1, round(validation_fraction * num_rows)))
    if num_rows < MIN_ROWS or num_val >= num_rows:
        _too_few_rows(num_rows, f"{num_val} held out for validation")
    order = np.random.default_rng(split_seed).permutation(num_rows)
    return np.sort(order[num_val:]), np.sort(order[:num_val])
