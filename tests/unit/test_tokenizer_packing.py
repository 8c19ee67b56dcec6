"""Tokenizer training and caching, packing, T5 lengths, the split, and prepare_data end to end."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from ntng_ray.config import DataConfig, RunConfig
from ntng_ray.data import packing, prepare, tokenizer
from ntng_ray.data.collators import MLMCollator, SpanCorruptionCollator
from ntng_ray.data.packing import (
    compute_t5_lengths,
    corrupted_lengths,
    pack_corpus,
    split_sequences,
)
from ntng_ray.data.prepare import prepare_data
from ntng_ray.data.sources import load_corpus
from ntng_ray.data.tokenizer import NUM_SENTINELS, TokenizerInfo, get_tokenizer
from ntng_ray.errors import NtngError

VOCAB = 1024
ENGLISH = "The old man walked to the market with his friends."


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="module")
def corpus(cache: Path) -> datasets.Dataset:
    return load_corpus(DataConfig(synthetic={"num_documents": 1000}, cache_dir=str(cache)))


@pytest.fixture(scope="module")
def bert(corpus: datasets.Dataset, cache: Path) -> TokenizerInfo:
    return get_tokenizer(corpus, "bert", VOCAB, lowercase=True, cache_dir=cache)


@pytest.fixture(scope="module")
def t5(corpus: datasets.Dataset, cache: Path) -> TokenizerInfo:
    return get_tokenizer(corpus, "t5", VOCAB, lowercase=True, cache_dir=cache)


def run_config(tmp_path: Path, preset: str, **data: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"preset": preset},
            "budget": {"rst_seconds": 10},
            "rst": {"table": "unused"},
            "tokenizer": {"vocab_size": VOCAB},
            "data": {"synthetic": {"num_documents": 300}, "cache_dir": str(tmp_path), **data},
        }
    )


def forbid(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """Make ``module.name`` fail if called: proves a result came from the cache."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} was called; the cache should have been used")

    monkeypatch.setattr(module, name, fail)


# --- tokenizers -------------------------------------------------------------------------------


def test_bert_tokenizer_covers_plain_english(bert: TokenizerInfo) -> None:
    encoding = bert.tokenizer.encode(ENGLISH, add_special_tokens=False)
    assert bert.unk_id not in encoding.ids
    assert encoding.tokens == [w.strip(".") for w in ENGLISH.lower().split()] + ["."]
    other = "My sister and her children often read books in the quiet library on Sunday."
    assert bert.unk_id not in bert.tokenizer.encode(other).ids


def test_t5_tokenizer_covers_plain_english(t5: TokenizerInfo) -> None:
    encoding = t5.tokenizer.encode(ENGLISH, add_special_tokens=False)
    assert t5.unk_id not in encoding.ids
    assert t5.tokenizer.decode(encoding.ids) == ENGLISH


def test_bert_special_ids(bert: TokenizerInfo) -> None:
    assert (bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id) == (0, 1, 2, 3, 4)
    assert bert.special_ids == frozenset(range(5))
    assert bert.separator_id == bert.sep_id and bert.eos_id is None
    assert bert.trained_size <= bert.vocab_size == VOCAB
    assert bert.tokenizer.encode("market").ids[0] == bert.cls_id


def test_t5_sentinels_sit_at_the_top_of_the_vocabulary(t5: TokenizerInfo) -> None:
    assert (t5.pad_id, t5.eos_id, t5.unk_id) == (0, 1, 2)
    assert t5.sentinel_ids == tuple(range(VOCAB - 1, VOCAB - 1 - NUM_SENTINELS, -1))
    assert t5.tokenizer.id_to_token(VOCAB - 1) == "<extra_id_0>"
    assert t5.tokenizer.id_to_token(VOCAB - NUM_SENTINELS) == "<extra_id_99>"
    assert t5.trained_size == VOCAB
    ids = t5.tokenizer.encode("Anna bought <extra_id_3> apples", add_special_tokens=False).ids
    assert t5.sentinel_ids[3] in ids
    plain = t5.tokenizer.encode(ENGLISH * 5, add_special_tokens=False).ids
    assert max(plain) < VOCAB - NUM_SENTINELS
    assert t5.special_ids >= {0, 1, 2, *t5.sentinel_ids}


def test_tokenizer_cache_is_reused(
    bert: TokenizerInfo, corpus: datasets.Dataset, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bert.path.parent == cache / "tokenizers"
    assert bert.path.name == f"bert-v{VOCAB}-lc-{corpus._fingerprint}.json"
    written = bert.path.stat().st_mtime_ns
    forbid(monkeypatch, tokenizer, "train_tokenizer")
    again = get_tokenizer(corpus, "bert", VOCAB, lowercase=True, cache_dir=cache)
    assert again.path == bert.path and again.content_hash == bert.content_hash
    assert bert.path.stat().st_mtime_ns == written
    assert not list(bert.path.parent.glob(".*")), "no temporary files left behind"


def test_cache_key_separates_case_and_size(corpus: datasets.Dataset, cache: Path) -> None:
    cased = tokenizer.tokenizer_path(cache, "bert", VOCAB, False, corpus._fingerprint)
    bigger = tokenizer.tokenizer_path(cache, "bert", 2048, True, corpus._fingerprint)
    lowered = tokenizer.tokenizer_path(cache, "bert", VOCAB, True, corpus._fingerprint)
    assert len({cased, bigger, lowered}) == 3
    assert "-cased-" in tokenizer.tokenizer_path(cache, "t5", VOCAB, True, "f").name


@pytest.mark.parametrize(
    ("family", "refused", "minimum"), [("bert", 604, 5 + 600), ("t5", 700, 3 + 601 + 1 + 100)]
)
def test_vocab_too_small_for_the_alphabet(
    tmp_path: Path, family: str, refused: int, minimum: int
) -> None:
    """600 distinct CJK characters: each needs its own id, plus the special tokens (and, for
    T5, the "▁" word marker, one spare piece for the Unigram trainer and the sentinels)."""
    chars = [chr(0x4E00 + i) for i in range(600)]
    corpus = datasets.Dataset.from_dict({"text": [" ".join(chars[i::7]) for i in range(7)]})
    with pytest.raises(NtngError) as info:
        get_tokenizer(corpus, family, refused, lowercase=True, cache_dir=tmp_path)
    message = str(info.value)
    assert f"tokenizer.vocab_size = {refused}" in message and f"at least {minimum}" in message
    assert not (tmp_path / "tokenizers").exists(), "nothing is cached for a refused size"
    fitted = get_tokenizer(corpus, family, minimum, lowercase=True, cache_dir=tmp_path)
    assert fitted.trained_size <= minimum


# --- packing ----------------------------------------------------------------------------------


def expected_stream(corpus: datasets.Dataset, info: TokenizerInfo) -> list[int]:
    """The reference stream, one document at a time (packing itself uses batched map)."""
    stream: list[int] = []
    for text in corpus["text"]:
        stream += [*info.tokenizer.encode(text, add_special_tokens=False).ids, info.separator_id]
    return stream


def test_bert_rows_are_framed_and_concatenate_back(
    bert: TokenizerInfo, corpus: datasets.Dataset, cache: Path
) -> None:
    rows = pack_corpus(corpus, bert, 64, cache)
    assert rows.dtype == np.int32 and rows.shape[1] == 64
    assert (rows[:, 0] == bert.cls_id).all() and (rows[:, -1] == bert.sep_id).all()
    stream = expected_stream(corpus, bert)
    assert len(rows) == len(stream) // 62
    assert rows[:, 1:-1].ravel().tolist() == stream[: len(rows) * 62]


def test_t5_rows_are_raw_and_concatenate_back(
    t5: TokenizerInfo, corpus: datasets.Dataset, cache: Path
) -> None:
    rows = pack_corpus(corpus, t5, 141, cache)
    stream = expected_stream(corpus, t5)
    assert rows.shape == (len(stream) // 141, 141)
    assert rows.ravel().tolist() == stream[: rows.size]
    first_doc = t5.tokenizer.decode(stream[: stream.index(t5.eos_id)])
    assert first_doc == corpus[0]["text"].replace("\n", " ")


def test_packed_rows_are_cached(
    bert: TokenizerInfo, corpus: datasets.Dataset, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = pack_corpus(corpus, bert, 32, cache)
    path = packing.packed_path(cache, corpus._fingerprint, bert, 32)
    assert path.parent == cache / "packed" and path.suffix == ".npy"
    forbid(monkeypatch, packing, "token_stream")
    np.testing.assert_array_equal(pack_corpus(corpus, bert, 32, cache), rows)


def test_too_small_a_corpus_is_refused_before_caching(bert: TokenizerInfo, tmp_path: Path) -> None:
    tiny = datasets.Dataset.from_dict({"text": ["the old man", "walked home"]})
    with pytest.raises(NtngError, match=r"packs into 0 sequence.*add documents"):
        pack_corpus(tiny, bert, 128, tmp_path)
    assert not (tmp_path / "packed").exists()


# --- T5 lengths and the split -----------------------------------------------------------------


def test_t5_lengths_match_t5() -> None:
    assert compute_t5_lengths(512, 0.15, 3.0) == (568, 114)
    assert compute_t5_lengths(128, 0.15, 3.0) == (141, 29)


@pytest.mark.parametrize("inputs", [32, 64, 100, 128, 256, 512])
@pytest.mark.parametrize(("density", "span"), [(0.15, 3.0), (0.3, 2.0), (0.1, 1.0)])
def test_t5_lengths_give_exact_inputs(inputs: int, density: float, span: float) -> None:
    tokens, targets = compute_t5_lengths(inputs, density, span)
    assert corrupted_lengths(tokens, density, span) == (inputs, targets)
    assert corrupted_lengths(tokens + 1, density, span)[0] > inputs


def test_t5_lengths_refuse_more_spans_than_sentinels() -> None:
    with pytest.raises(NtngError, match=r"data.mean_noise_span_length.*100 sentinels"):
        compute_t5_lengths(512, 0.5, 2.0)


def test_split_is_deterministic_disjoint_and_sized() -> None:
    train, val = split_sequences(1000, 0.05, 256, split_seed=3)
    again_train, again_val = split_sequences(1000, 0.05, 256, split_seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert len(val) == 50 and len(train) == 950
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(1000))
    assert not np.array_equal(val, split_sequences(1000, 0.05, 256, split_seed=4)[1])
    assert len(split_sequences(100_000, 0.05, 256, split_seed=3)[1]) == 256
    assert [len(ids) for ids in split_sequences(2, 0.01, 256, split_seed=0)] == [1, 1]


def test_split_needs_two_rows() -> None:
    with pytest.raises(NtngError, match=r"packs into 1 sequence.*at least 2"):
        split_sequences(1, 0.05, 256, split_seed=0)


# --- prepare_data -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["bert-tiny", "t5-tiny"])
def test_prepare_data_end_to_end_and_cached(
    tmp_path: Path, preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = run_config(tmp_path, preset)
    data = prepare_data(cfg)
    seq_len = cfg.preset.seq_len
    assert data.rows.shape[1] == data.row_length
    assert len(data.train_ids) + len(data.val_ids) == len(data.rows)
    assert len(data.val_ids) == max(1, round(0.05 * len(data.rows)))
    batch = data.collator()(torch.from_numpy(data.rows[:4]).long(), torch.Generator())
    assert batch["input_ids"].shape == (4, seq_len)
    if preset == "bert-tiny":
        assert isinstance(data.collator(), MLMCollator) and data.target_length is None
        assert data.row_length == seq_len and batch["labels"].shape == (4, seq_len)
    else:
        assert isinstance(data.collator(), SpanCorruptionCollator)
        assert (data.row_length, data.target_length) == compute_t5_lengths(seq_len, 0.15, 3.0)
        assert batch["labels"].shape == (4, data.target_length)
    forbid(monkeypatch, tokenizer, "train_tokenizer")
    forbid(monkeypatch, packing, "token_stream")
    again = prepare_data(cfg)
    np.testing.assert_array_equal(again.rows, data.rows)
    np.testing.assert_array_equal(again.val_ids, data.val_ids)


def test_prepare_data_checks_settings_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid(monkeypatch, prepare, "load_corpus")
    cfg = run_config(tmp_path, "t5-tiny", noise_density=0.5, mean_noise_span_length=1.0)
    with pytest.raises(NtngError, match=r"data\.noise_density"):
        prepare_data(cfg)
    assert list(tmp_path.iterdir()) == []
