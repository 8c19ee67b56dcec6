"""The synthetic grammar and the corpus sources (synthetic, local files, hub)."""

from __future__ import annotations

import collections
import itertools
import json
import math
import re
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ntng_ray.config import DataConfig
from ntng_ray.data.sources import load_corpus
from ntng_ray.data.synthetic import TOPICS, generate_documents
from ntng_ray.errors import NtngError

WORD = re.compile(r"[a-z']+|[.,?!\"]")


def files_config(tmp_path: Path, files: list[str], **extra: object) -> DataConfig:
    return DataConfig(source="files", files=files, cache_dir=str(tmp_path / "cache"), **extra)


# --- synthetic grammar ------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_seeded() -> None:
    first = generate_documents(200, seed=7)
    assert first == generate_documents(200, seed=7)
    assert first != generate_documents(200, seed=8)
    assert generate_documents(50, seed=7) == first[:50]
    assert len(first) == 200 and len(set(first)) == 200


def test_synthetic_is_fast_and_document_sized() -> None:
    started = time.perf_counter()
    docs = generate_documents(3000, seed=0)
    assert time.perf_counter() - started < 1.5
    lengths = [len(doc.split()) for doc in docs]
    assert min(lengths) >= 15 and max(lengths) <= 400
    assert any("\n" in doc for doc in docs), "some documents should have several paragraphs"
    assert all(doc[0].isupper() and doc.rstrip()[-1] in '.?!"' for doc in docs)


def test_synthetic_uses_a_few_hundred_everyday_words_with_numbers_and_punctuation() -> None:
    text = "\n".join(generate_documents(3000, seed=1))
    words = collections.Counter(WORD.findall(text.lower()))
    assert 300 <= len(words) <= 2000
    for word in ["the", "and", "with", "his", "her", "they", "market", "friends", "walked", "old"]:
        assert words[word] > 0, word
    assert re.search(r"\d", text) and '"' in text and "?" in text and "," in text


def test_synthetic_verbs_agree_with_their_subjects() -> None:
    text = " ".join(generate_documents(2000, seed=2))
    verbs = [verb for topic in TOPICS.values() for verb in topic.verbs]
    bases = "|".join(base for base, _, past in verbs if base != past)
    thirds = "|".join(third for _, third, _ in verbs)
    assert not re.search(rf"\b(he|she) ({bases})\b", text)
    assert not re.search(rf"\b(they|we|I) ({thirds})\b", text)
    assert not re.search(r"\b[Aa] [aeiou]", text), "'a' before a vowel should be 'an'"


def test_synthetic_has_structure_beyond_word_frequencies() -> None:
    """The next word given the previous one is far more predictable than a unigram draw."""
    words = WORD.findall(" ".join(generate_documents(3000, seed=3)).lower())
    unigram = collections.Counter(words)
    total = len(words)
    unigram_entropy = -sum(c / total * math.log2(c / total) for c in unigram.values())
    pairs = collections.Counter(itertools.pairwise(words))
    previous = collections.Counter(words[:-1])
    conditional = -sum(c / (total - 1) * math.log2(c / previous[a]) for (a, _), c in pairs.items())
    assert conditional < 0.7 * unigram_entropy


def test_synthetic_source_is_a_text_dataset(tmp_path: Path) -> None:
    cfg = DataConfig(synthetic={"num_documents": 50, "seed": 4}, cache_dir=str(tmp_path))
    corpus = load_corpus(cfg)
    assert isinstance(corpus, datasets.Dataset)
    assert corpus.column_names == ["text"]
    assert corpus["text"] == generate_documents(50, seed=4)
    assert load_corpus(cfg)._fingerprint == corpus._fingerprint


# --- local files ------------------------------------------------------------------------------


def test_text_files_by_glob_drop_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first line\n\n   \nsecond line\n")
    (tmp_path / "b.txt").write_text("third line\n")
    corpus = load_corpus(files_config(tmp_path, [str(tmp_path / "*.txt")]))
    assert corpus.column_names == ["text"]
    assert corpus["text"] == ["first line", "second line", "third line"]


def test_jsonl_with_a_named_text_field(tmp_path: Path) -> None:
    records = [{"id": 1, "body": "one doc"}, {"id": 2, "body": ""}, {"id": 3, "body": "two"}]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = load_corpus(files_config(tmp_path, [str(path)], text_field="body"))
    assert corpus.column_names == ["text"]
    assert corpus["text"] == ["one doc", "two"]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["alpha beta", "gamma"], "n": [1, 2]}), path)
    corpus = load_corpus(files_config(tmp_path, [str(path)]))
    assert corpus["text"] == ["alpha beta", "gamma"]


def test_shared_real_text_files(shared_data: Path, tmp_path: Path) -> None:
    text_dir = shared_data / "pretrain_text"
    shakespeare = load_corpus(files_config(tmp_path, [str(text_dir / "tinyshakespeare.txt")]))
    assert len(shakespeare) > 30_000
    assert shakespeare[0]["text"] == "First Citizen:"
    wiki = load_corpus(files_config(tmp_path, [str(text_dir / "wikitext-2" / "valid.txt")]))
    assert len(wiki) > 2_000
    assert all(line.strip() for line in wiki["text"][:500])


# --- errors name what is wrong ----------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(NtngError, match=re.escape(missing)):
        load_corpus(files_config(tmp_path, [missing]))


def test_folder_and_malformed_file_are_explained(tmp_path: Path) -> None:
    with pytest.raises(NtngError, match=r"is not a file \(for a folder use a glob\)"):
        load_corpus(files_config(tmp_path, [str(tmp_path)]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(NtngError, match="could not read the files as json"):
        load_corpus(files_config(tmp_path, [str(bad)]))


def test_glob_matching_nothing_is_named(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.jsonl")
    with pytest.raises(NtngError, match=r"matches no files") as info:
        load_corpus(files_config(tmp_path, [pattern]))
    assert pattern in str(info.value)


def test_unknown_extension_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    path.write_text("a,b\n")
    with pytest.raises(NtngError) as info:
        load_corpus(files_config(tmp_path, [str(path)]))
    message = str(info.value)
    assert "'.csv'" in message and ".txt" in message and ".jsonl" in message
    assert ".parquet" in message


def test_mixed_formats_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(NtngError, match="mixes formats"):
        load_corpus(files_config(tmp_path, [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]))


def test_missing_text_field_names_the_column_and_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"title": "t", "content": "c"}\n')
    with pytest.raises(NtngError) as info:
        load_corpus(files_config(tmp_path, [str(path)], text_field="body"))
    message = str(info.value)
    assert "data.text_field" in message and "'body'" in message
    assert "title" in message and "content" in message


def test_hub_offline_says_so_and_suggests_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # datasets reads the offline switches at import time, so set the module flags as well.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = DataConfig(source="hub", hub_name="ntng-test/no-such-corpus", cache_dir=str(tmp_path))
    with pytest.raises(NtngError) as info:
        load_corpus(cfg)
    message = str(info.value)
    assert "ntng-test/no-such-corpus" in message
    assert "could not reach" in message and "offline" in message
    assert "HF_DATASETS_OFFLINE" in message and "HF_HUB_OFFLINE" in message
    assert "source=files" in message
