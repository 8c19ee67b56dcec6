"""Model presets: the sizes a run can name. Pure data, so config validation needs no torch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Family = Literal["bert", "t5"]
# The model class a preset builds: HF's post-LN BERT, Cramming's crammed BERT (both masked
# LM, family "bert"), or T5 v1.1 with its untied output layer (family "t5").
Architecture = Literal["hf-bert", "crammed-bert", "t5-v1_1"]


@dataclass(frozen=True)
class Preset:
    """One named model size.

    For T5, ``num_layers`` is the depth of each stack (encoder and decoder alike), so that
    "k active layers" means k encoder and k decoder blocks, as in the study's T5 stacking.
    ``seq_len`` is BERT's sequence length or T5's input (encoder) length. For crammed BERT,
    ``ffn`` is the gated layer's input width (the gate halves it, as in Cramming's configs).
    """

    name: str
    family: Family
    architecture: Architecture
    num_layers: int
    hidden: int
    heads: int
    ffn: int
    seq_len: int
    vocab_size: int
    description: str
    d_kv: int | None = None


BERT_TINY = Preset(
    name="bert-tiny",
    family="bert",
    architecture="hf-bert",
    num_layers=4,
    hidden=128,
    heads=2,
    ffn=512,
    seq_len=128,
    vocab_size=4096,
    description=(
        "CPU-sized HF BERT (post-LN) for tests and debug runs (stacking grows 1 -> 2 -> 4)."
    ),
)
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        BERT_TINY,
        Preset(
            name="t5-tiny",
            family="t5",
            architecture="t5-v1_1",
            num_layers=4,
            hidden=128,
            heads=4,
            d_kv=32,
            ffn=256,
            seq_len=128,
            vocab_size=4096,
            description="CPU-sized T5 v1.1 (4 + 4 layers, gated-GELU) for tests and debug sweeps.",
        ),
        Preset(
            name="bert-crammed",
            family="bert",
            architecture="crammed-bert",
            num_layers=16,
            hidden=768,
            heads=12,
            ffn=3072,
            seq_len=128,
            vocab_size=32768,
            description=(
                "The study's BERT: Cramming's bert-c5 (pre-LN, gated GELU, no biases, tied "
                "embeddings), 16 layers, ~119.6M parameters; charged by paper-bert-rtx3090-fixed."
            ),
        ),
        replace(
            BERT_TINY,
            name="bert-crammed-tiny",
            architecture="crammed-bert",
            description=(
                "bert-crammed's architecture at bert-tiny's sizes (4 layers, hidden 128), so the "
                "two architectures compare at one shape."
            ),
        ),
        Preset(
            name="t5-v1_1-base",
            family="t5",
            architecture="t5-v1_1",
            num_layers=12,
            hidden=768,
            heads=12,
            d_kv=64,
            ffn=2048,
            seq_len=512,
            vocab_size=32128,
            description="T5 v1.1-base (12 + 12 layers, gated-GELU FFN 2048), in 512, target 114.",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a KeyError lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}"
        ) from None
