"""Sparse prediction (Cramming): the masked-LM head runs on the labelled positions only.

The loss equals the dense head's (mean cross-entropy over the labelled positions), but the
vocabulary projection costs ~15% of the dense one, which dominates small models' steps. Both
BERT architectures (HF's and the crammed one) share it, so their outputs mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import MaskedLMOutput

IGNORE = -100  # the label of an unscored position (the collators' and cross_entropy's)


def sparse_mlm_output(
    hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> MaskedLMOutput:
    """Loss and logits at the labelled positions: one logits row each, in row-major order."""
    selected = labels != IGNORE
    logits = head(hidden[selected])
    loss = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
    return MaskedLMOutput(loss=loss / selected.sum().clamp_min(1), logits=logits)
