"""Pretraining data: corpus sources, tokenizer training, packing, and the MLM and span collators.

``prepare_data(cfg)`` runs the whole chain; the pieces are importable for tests and tools.
"""

from ntng_ray.data.collators import MLMCollator, SpanCorruptionCollator
from ntng_ray.data.packing import compute_t5_lengths, pack_corpus, split_sequences
from ntng_ray.data.prepare import PreparedData, prepare_data
from ntng_ray.data.sources import load_corpus
from ntng_ray.data.synthetic import generate_documents
from ntng_ray.data.tokenizer import TokenizerInfo, get_tokenizer, load_tokenizer

__all__ = [
    "MLMCollator",
    "PreparedData",
    "SpanCorruptionCollator",
    "TokenizerInfo",
    "compute_t5_lengths",
    "generate_documents",
    "get_tokenizer",
    "load_corpus",
    "load_tokenizer",
    "pack_corpus",
    "prepare_data",
    "split_sequences",
]
