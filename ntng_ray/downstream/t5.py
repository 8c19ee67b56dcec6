"""T5 text-to-text: the task as a prompt in, the label as words out, scored by generation.

Every task becomes ``"<task> field: value ..."`` in and a target string out: the label's word
(``TaskSpec.target_words``), STS-B's score rounded to 0.2 ("3.8"), ReCoRD's answer entity.
Predictions are **generated** (greedy decoding), not chosen by scoring the label words: an
output that is no label word counts as wrong (and is counted in ``invalid_predictions``), so
the score also says whether the model learned the task's output format. An STS-B output that
is no number is scored as the middle of the scale, 2.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import torch

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
from ntng_ray.models.t5_v1_1 import load_untied_t5

MODE = "generation"
IGNORE = -100
SCORE_RANGE = (0.0, 5.0)
SCORE_WORDS = tuple(f"{step / 5:.1f}" for step in range(26))


def score_word(score: float) -> str:
    """STS-B's score as T5's target: rounded to the nearest 0.2, one decimal."""
    return f"{round(score * 5) / 5:.1f}"


class T5Task:
    """A task's T5 model, fine-tuned to write the label (or answer) as text."""

    def __init__(self, pretrained: Pretrained, spec: TaskSpec, settings: FinetuneSettings) -> None:
        self.spec = spec
        self.pad_id = pretrained.pad_id
        torch.manual_seed(settings.seed)
        self.model = load_untied_t5(pretrained.folder, dropout_rate=settings.dropout)
        self.tokenizer = truncating(pretrained.tokenizer, settings.max_length)
        self.words = self._target_vocabulary()
        self.target_length = max(
            (len(self.tokenizer.encode(word).ids) for word in self.words), default=1
        )

    def _target_vocabulary(self) -> tuple[str, ...]:
        """The words T5 must write, each checked to survive the tokenizer's round trip."""
        if self.spec.kind == "record":
            return ()
        words = SCORE_WORDS if self.spec.kind == "regression" else self.spec.target_words
        for word in words:
            decoded = self._decode(self.tokenizer.encode(word).ids)
            if decoded != word:
                raise NtngError(
                    f"{self.spec.name}: T5's target word {word!r} comes back from the "
                    f"checkpoint's tokenizer as {decoded!r} (its vocabulary lacks some of these "
                    "characters), so no output could ever match it; pretrain on text that "
                    "contains them"
                )
        return words

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def _target(self, row: dict[str, Any]) -> str:
        if self.spec.kind == "record":
            return row["answers"][0] if row["answers"] else ""
        if self.spec.kind == "regression":
            return score_word(row["label"])
        return self.words[row["label"]]

    def _encode_inputs(self, rows: list[dict[str, Any]]) -> list[list[int]]:
        texts = [fill(self.spec.t5_input, row) for row in rows]
        return [e.ids for e in self.tokenizer.encode_batch(texts)] if texts else []

    def train_features(self, table: datasets.Dataset) -> list[Features]:
        rows = table.to_list()
        targets = [e.ids for e in self.tokenizer.encode_batch([self._target(r) for r in rows])]
        self.target_length = max([self.target_length, *(len(t) for t in targets)])
        inputs = self._encode_inputs(rows)
        return [{"input_ids": i, "labels": t} for i, t in zip(inputs, targets, strict=True)]

    def collate(self, features: Sequence[Features]) -> dict[str, torch.Tensor]:
        ids = pad([f["input_ids"] for f in features], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}
        if "labels" in features[0]:
            batch["labels"] = pad([f["labels"] for f in features], IGNORE)
        return batch

    def _parse(self, text: str, row: dict[str, Any]) -> tuple[Any, bool]:
        """The prediction an output stands for, and whether it was a valid one."""
        if self.spec.kind == "record":
            return text, text in row["entities"]
        if self.spec.kind == "regression":
            try:
                score = float(text)
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                return sum(SCORE_RANGE) / 2, False
            return min(max(score, SCORE_RANGE[0]), SCORE_RANGE[1]), True
        return (self.words.index(text), True) if text in self.words else (-1, False)

    @torch.no_grad()
    def predict(self, table: datasets.Dataset, batch_size: int) -> Predictions:
        self.model.eval()
        device = model_device(self.model)
        rows = table.to_list()
        features = [{"input_ids": ids} for ids in self._encode_inputs(rows)]
        texts: list[str] = []
        for chunk in batched(features, batch_size):
            generated = self.model.generate(
                **to_device(self.collate(chunk), device),
                max_new_tokens=self.target_length,
                do_sample=False,
                num_beams=1,
                use_cache=True,
            )
            texts.extend(self._decode(ids) for ids in generated.tolist())
        predictions = Predictions()
        for text, row in zip(texts, rows, strict=True):
            value, valid = self._parse(text, row)
            predictions.values.append(value)
            predictions.invalid += not valid
        return predictions
