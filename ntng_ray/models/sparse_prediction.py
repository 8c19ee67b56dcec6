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
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    positions: torch.Tensor | None = None,
) -> MaskedLMOutput:
    """Loss and logits at the labelled positions: one logits row each, in row-major order.

    ``positions`` (the collator's ``masked_positions``: flat indices of the labelled tokens,
    ascending) keeps the step free of host synchronisation: selecting by a boolean mask needs
    the device to report how many positions there are before the head can be launched.
    """
    if positions is None:
        positions = labelled_positions(labels)
    selected = hidden.flatten(0, 1).index_select(0, positions)
    logits = head(selected)
    targets = labels.flatten().index_select(0, positions)
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return MaskedLMOutput(loss=loss / max(positions.numel(), 1), logits=logits)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices of the labelled tokens of ``labels`` [batch, length], ascending."""
    return (labels.flatten() != IGNORE).nonzero().squeeze(1)
