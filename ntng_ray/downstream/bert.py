"""BERT with a classification or regression head on the pretrained encoder.

The head is newly initialised from the seed and the MLM head is dropped. HF BERT gets
``BertForSequenceClassification`` (its pooler, which the MLM checkpoint lacks, is new too);
crammed BERT gets Cramming's head (``CrammedBertForSequenceClassification``: mean pooling,
dense, tanh) and no segment ids, as it has no token-type embedding. Classification tasks
train cross-entropy over the classes, STS-B mean squared error on the score. COPA and ReCoRD
rank candidates: every (context, candidate) pair is a yes/no example in training, and the
prediction is the candidate whose "yes" logit most exceeds its "no" logit (COPA: the better
choice; ReCoRD: the entity that fills the query's ``@placeholder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch
from transformers import AutoModelForSequenceClassification

from ntng_ray.downstream.checkpoint import Pretrained
from ntng_ray.downstream.encoding import (
    Features,
    Predictions,
    batched,
    fill,
    model_device,
    pad,
    to_device,
    truncating,
)
from ntng_ray.downstream.settings import FinetuneSettings
from ntng_ray.downstream.tasks import TaskSpec
from ntng_ray.errors import NtngError
from ntng_ray.models import crammed_bert  # noqa: F401  (registers crammed BERT's Auto classes)

PLACEHOLDER = "@placeholder"


class BertTask:
    """A task's BERT classifier built from the checkpoint folder."""

    def __init__(self, pretrained: Pretrained, spec: TaskSpec, settings: FinetuneSettings) -> None:
        self.spec = spec
        self.pad_id = pretrained.pad_id
        torch.manual_seed(settings.seed)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            pretrained.folder,
            num_labels=spec.num_labels,
            problem_type=(
                "regression" if spec.kind == "regression" else "single_label_classification"
            ),
            hidden_dropout_prob=settings.dropout,
            attention_probs_dropout_prob=settings.dropout,
        )
        self.segments = hasattr(self.model.config, "type_vocab_size")
        limit = self.model.config.max_position_embeddings
        if settings.max_length > limit:
            raise NtngError(
                f"max_length = {settings.max_length}: the checkpoint's BERT has {limit} "
                f"positions; allowed: at most {limit}"
            )
        self.tokenizer = truncating(pretrained.tokenizer, settings.max_length)

    def _candidates(self, row: dict[str, Any]) -> list[str | None]:
        """What is scored for a row: its choices (COPA), its entities (ReCoRD), or itself."""
        if self.spec.kind == "choice":
            return [row[column] for column in self.spec.choices]
        if self.spec.kind == "record":
            return list(row["entities"])
        return [None]

    def _segments(self, row: dict[str, Any], candidate: str | None) -> str | tuple[str, str]:
        first, second = self.spec.bert_segments
        if candidate is not None and self.spec.kind == "record":
            row = row | {"query": row["query"].replace(PLACEHOLDER, candidate)}
        extra = {"candidate": candidate} if candidate is not None else {}
        a = fill(first, row, **extra)
        return a if second is None else (a, fill(second, row, **extra))

    def _encode(self, inputs: list[str | tuple[str, str]]) -> list[Features]:
        encodings = self.tokenizer.encode_batch(inputs) if inputs else []
        if not self.segments:
            return [{"input_ids": e.ids} for e in encodings]
        return [{"input_ids": e.ids, "token_type_ids": e.type_ids} for e in encodings]

    def _target(self, row: dict[str, Any], index: int, candidate: str | None) -> float | int:
        if self.spec.kind == "choice":
            return int(index == row["label"])
        if self.spec.kind == "record":
            return int(candidate in row["answers"])
        return row["label"]

    def train_features(self, table: datasets.Dataset) -> list[Features]:
        inputs, targets = [], []
        for row in table.to_list():
            for index, candidate in enumerate(self._candidates(row)):
                inputs.append(self._segments(row, candidate))
                targets.append(self._target(row, index, candidate))
        features = self._encode(inputs)
        for feature, target in zip(features, targets, strict=True):
            feature["labels"] = target
        return features

    def collate(self, features: Sequence[Features]) -> dict[str, torch.Tensor]:
        ids = pad([f["input_ids"] for f in features], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}
        if self.segments:
            batch["token_type_ids"] = pad([f["token_type_ids"] for f in features], 0)
        if "labels" in features[0]:
            dtype = torch.float32 if self.spec.kind == "regression" else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch

    @torch.no_grad()
    def _logits(self, features: list[Features], batch_size: int) -> torch.Tensor:
        self.model.eval()
        device = model_device(self.model)
        outputs = [
            self.model(**to_device(self.collate(chunk), device)).logits.float().cpu()
            for chunk in batched(features, batch_size)
        ]
        return torch.cat(outputs) if outputs else torch.empty(0, self.spec.num_labels)

    def predict(self, table: datasets.Dataset, batch_size: int) -> Predictions:
        rows = table.to_list()
        candidates = [self._candidates(row) for row in rows]
        inputs = [self._segments(r, c) for r, cs in zip(rows, candidates, strict=True) for c in cs]
        logits = self._logits(self._encode(inputs), batch_size)
        if self.spec.kind == "regression":
            return Predictions(logits[:, 0].tolist())
        if self.spec.kind == "classification":
            return Predictions(logits.argmax(dim=-1).tolist())
        margins = (logits[:, 1] - logits[:, 0]).tolist()
        values, start = [], 0
        for options in candidates:
            scores = margins[start : start + len(options)]
            start += len(options)
            best = max(range(len(options)), key=scores.__getitem__) if options else None
            if self.spec.kind == "choice":
                values.append(best)
            else:
                values.append(options[best] if best is not None else "")
        return Predictions(values)
