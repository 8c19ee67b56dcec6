"""Tokenizers trained locally with HF ``tokenizers``, cached per corpus and vocabulary size.

BERT gets a WordPiece vocabulary (BERT's normalizer and pre-tokenizer, lower-cased by default);
T5 gets a Unigram vocabulary (NFKC, Metaspace) with T5's layout: ``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, and 100 sentinels at the top, ``<extra_id_0>`` = vocab_size - 1, descending.
The model's embedding has the configured ``vocab_size``; the trained vocabulary may be smaller
(a small corpus has fewer pieces) but never larger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import datasets
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from ntng_ray.atomic import write_atomic
from ntng_ray.config.presets import Family
from ntng_ray.errors import NtngError

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")
NUM_SENTINELS = 100
BATCH = 1000


@dataclass(frozen=True)
class TokenizerInfo:
    """A trained tokenizer and the ids the collators and models need."""

    tokenizer: Tokenizer
    family: Family
    vocab_size: int
    pad_id: int
    unk_id: int
    path: Path
    content_hash: str
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    eos_id: int | None = None
    sentinel_ids: tuple[int, ...] = ()

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that are never masked nor drawn as random replacements."""
        ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id, self.eos_id)
        return frozenset(i for i in ids if i is not None) | frozenset(self.sentinel_ids)

    @property
    def separator_id(self) -> int:
        """The token between packed documents: [SEP] for BERT, </s> for T5."""
        separator = self.sep_id if self.family == "bert" else self.eos_id
        assert separator is not None
        return separator

    @property
    def trained_size(self) -> int:
        """Ids the tokenizer can emit (at most ``vocab_size``)."""
        return self.tokenizer.get_vocab_size()


def tokenizer_path(
    cache_dir: Path, family: Family, vocab_size: int, lowercase: bool, fingerprint: str
) -> Path:
    case = "lc" if lowercase and family == "bert" else "cased"
    return cache_dir / "tokenizers" / f"{family}-v{vocab_size}-{case}-{fingerprint}.json"


def get_tokenizer(
    corpus: datasets.Dataset, family: Family, vocab_size: int, lowercase: bool, cache_dir: Path
) -> TokenizerInfo:
    """The cached tokenizer for this corpus and size, training and caching it on first use.

    ``lowercase`` applies to BERT only: T5's sentencepiece vocabulary is cased.
    """
    path = tokenizer_path(cache_dir, family, vocab_size, lowercase, corpus._fingerprint)
    if not path.exists():
        tokenizer = train_tokenizer(corpus, family, vocab_size, lowercase)
        write_atomic(path, lambda temp: tokenizer.save(str(temp)))
    return load_tokenizer(path, family, vocab_size)


def train_tokenizer(
    corpus: datasets.Dataset, family: Family, vocab_size: int, lowercase: bool
) -> Tokenizer:
    """Train in memory; a ``vocab_size`` too small for the corpus alphabet is an NtngError."""
    if family == "bert":
        return _train_wordpiece(corpus, vocab_size, lowercase)
    return _train_unigram(corpus, vocab_size)


def _texts(corpus: datasets.Dataset) -> Iterator[list[str]]:
    for batch in corpus.iter(batch_size=BATCH):
        yield batch["text"]


def _train_wordpiece(corpus: datasets.Dataset, vocab_size: int, lowercase: bool) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS), show_progress=False
    )
    tokenizer.train_from_iterator(_texts(corpus), trainer, length=len(corpus))
    if tokenizer.get_vocab_size() > vocab_size:
        _too_small(tokenizer, corpus, vocab_size, "bert")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def _train_unigram(corpus: datasets.Dataset, vocab_size: int) -> Tokenizer:
    """Train ``vocab_size - 100`` pieces, pad with unused pieces, then put the sentinels on top."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    pieces_budget = vocab_size - NUM_SENTINELS
    trainer = trainers.UnigramTrainer(
        vocab_size=pieces_budget,
        special_tokens=list(T5_SPECIALS),
        unk_token="<unk>",
        show_progress=False,
    )
    try:
        tokenizer.train_from_iterator(_texts(corpus), trainer, length=len(corpus))
    except Exception as exc:
        if "not large enough" not in str(exc):
            raise
        _too_small(tokenizer, corpus, vocab_size, "t5")
    model = json.loads(tokenizer.to_str())["model"]
    pieces = [(piece, score) for piece, score in model["vocab"]]
    if len(pieces) > pieces_budget:
        _too_small(tokenizer, corpus, vocab_size, "t5")
    floor = min(score for _, score in pieces[len(T5_SPECIALS) :])
    pieces += [(f"<unused_{i}>", floor) for i in range(pieces_budget - len(pieces))]
    tokenizer.model = models.Unigram(pieces, unk_id=model["unk_id"], byte_fallback=False)
    tokenizer.add_special_tokens([_sentinel(i) for i in reversed(range(NUM_SENTINELS))])
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return tokenizer


def _sentinel(index: int) -> str:
    return f"<extra_id_{index}>"


def _too_small(
    tokenizer: Tokenizer, corpus: datasets.Dataset, vocab_size: int, family: Family
) -> NoReturn:
    """Raise with the smallest vocabulary that holds the specials and the corpus alphabet."""
    raise NtngError(
        f"tokenizer.vocab_size = {vocab_size} is too small for this corpus: its special tokens "
        f"and alphabet need at least {minimum_vocab_size(tokenizer, corpus, family)}"
    )


def minimum_vocab_size(tokenizer: Tokenizer, corpus: datasets.Dataset, family: Family) -> int:
    """Specials plus every character the trainer must keep (WordPiece: initial and ##-forms).

    Unigram needs one piece beyond the alphabet, or its trainer overshoots the budget.
    """
    alphabet: set[str] = set()
    for texts in _texts(corpus):
        for text in texts:
            normalized = tokenizer.normalizer.normalize_str(text)
            for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized):
                if family == "bert":
                    alphabet.add(word[0])
                    alphabet.update(f"##{char}" for char in word[1:])
                else:
                    alphabet.update(word)
    if family == "bert":
        return len(BERT_SPECIALS) + len(alphabet)
    return len(T5_SPECIALS) + len(alphabet) + 1 + NUM_SENTINELS


def load_tokenizer(path: Path, family: Family, vocab_size: int) -> TokenizerInfo:
    """A TokenizerInfo for a tokenizer file written by ``get_tokenizer``."""
    raw = path.read_bytes()
    tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    if tokenizer.get_vocab_size() > vocab_size:
        raise NtngError(
            f"tokenizer {str(path)!r} has {tokenizer.get_vocab_size()} tokens, more than "
            f"tokenizer.vocab_size = {vocab_size}"
        )

    def token_id(token: str) -> int:
        found = tokenizer.token_to_id(token)
        if found is None:
            raise NtngError(f"tokenizer {str(path)!r} lacks {token!r}: not a {family} tokenizer")
        return found

    common = {
        "tokenizer": tokenizer,
        "family": family,
        "vocab_size": vocab_size,
        "path": path,
        "content_hash": hashlib.sha256(raw).hexdigest(),
    }
    if family == "bert":
        pad, unk, cls, sep, mask = (token_id(t) for t in BERT_SPECIALS)
        return TokenizerInfo(**common, pad_id=pad, unk_id=unk, cls_id=cls, sep_id=sep, mask_id=mask)
    sentinels = tuple(token_id(_sentinel(i)) for i in range(NUM_SENTINELS))
    if sentinels[0] != vocab_size - 1:
        raise NtngError(
            f"tokenizer {str(path)!r}: <extra_id_0> has id {sentinels[0]}, expected "
            f"tokenizer.vocab_size - 1 = {vocab_size - 1}"
        )
    pad, eos, unk = (token_id(t) for t in T5_SPECIALS)
    return TokenizerInfo(**common, pad_id=pad, unk_id=unk, eos_id=eos, sentinel_ids=sentinels)
