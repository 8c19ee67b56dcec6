"""Text in, tensors out: what BERT's and T5's task models share.

Rows become text through the task's templates, text becomes ids through the checkpoint's own
``tokenizers`` tokenizer (truncated, never padded: batches pad to their longest row), and ids
become padded tensors per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import datasets
import torch
from tokenizers import Tokenizer
from torch import nn

Features = dict[str, Any]


@dataclass
class Predictions:
    """One evaluation split's predictions, in the form its metrics take.

    ``values``: class indices (-1: no valid class), scores (STS-B) or answer texts (ReCoRD);
    ``invalid``: how many T5 outputs named no label (always 0 for BERT).
    """

    values: list[Any] = field(default_factory=list)
    invalid: int = 0


class TaskModel(Protocol):
    """A pretrained model with a task's head, as the shared fine-tuning loop drives it."""

    model: nn.Module

    def train_features(self, table: datasets.Dataset) -> list[Features]: ...

    def collate(self, features: Sequence[Features]) -> dict[str, torch.Tensor]: ...

    def predict(self, table: datasets.Dataset, batch_size: int) -> Predictions: ...


def fill(template: str, row: dict[str, Any], **extra: str) -> str:
    """A template filled from a row; lists (ReCoRD's entities) are joined with commas."""
    values = {key: ", ".join(v) if isinstance(v, list) else v for key, v in row.items()}
    return template.format(**(values | extra))


def truncating(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """A copy of ``tokenizer`` that truncates to ``max_length`` ids (pairs: longest first)."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, strategy="longest_first")
    return copy


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad id lists to the longest one."""
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows])


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
