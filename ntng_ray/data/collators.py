"""Seeded batch collators: BERT's masked LM and T5's span corruption.

Written here because ``transformers`` has no T5 span-corruption collator and its MLM collator
draws from the global RNG; ours take a ``torch.Generator`` so the same seed gives the same batch
(validation masks are fixed, runs are reproducible). Rows are packed, so nothing is padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ntng_ray.data.packing import compute_t5_lengths, noise_span_counts

IGNORE = -100
Batch = dict[str, torch.Tensor]
# What BERT does with a chosen token; the learnability bound reads the same fractions.
MASK_FRACTION = 0.8  # becomes [MASK]
RANDOM_FRACTION = 0.1  # becomes a random replacement
KEEP_FRACTION = 1.0 - MASK_FRACTION - RANDOM_FRACTION  # stays as it is


class MLMCollator:
    """BERT masking: each non-special token is chosen with probability ``mlm_probability``;
    chosen tokens become [MASK] (80%), a random non-special token (10%) or stay (10%).
    Labels hold the original id at chosen positions and -100 elsewhere; ``masked_positions``
    lists the chosen positions' flat indices (the sparse head reads them instead of searching
    the labels on the device, which would stall the step). Random replacements
    are drawn from ``[0, vocab_size)`` without the special ids: pass the tokenizer's trained
    size, so they are tokens the model really sees.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_id: int,
        special_ids: Iterable[int],
        mlm_probability: float = 0.15,
    ) -> None:
        specials = sorted(set(special_ids))
        self.mask_id = mask_id
        self.mlm_probability = mlm_probability
        self.special_ids = torch.tensor(specials, dtype=torch.long)
        self.replacements = torch.tensor(
            [i for i in range(vocab_size) if i not in set(specials)], dtype=torch.long
        )

    def __call__(self, rows: torch.Tensor, generator: torch.Generator) -> Batch:
        device = rows.device
        special = torch.isin(rows, self.special_ids.to(device))
        draw = torch.rand(rows.shape, generator=generator, device=device)
        chosen = (draw < self.mlm_probability) & ~special
        action = torch.rand(rows.shape, generator=generator, device=device)
        picks = torch.randint(
            len(self.replacements), rows.shape, generator=generator, device=device
        )
        inputs = torch.where(chosen & (action < MASK_FRACTION), self.mask_id, rows)
        replaced = chosen & (action >= 1.0 - RANDOM_FRACTION)
        inputs = torch.where(replaced, self.replacements.to(device)[picks], inputs)
        return {
            "input_ids": inputs,
            "attention_mask": torch.ones_like(rows),
            "labels": torch.where(chosen, rows, IGNORE),
            "masked_positions": chosen.flatten().nonzero().squeeze(1),
        }


class SpanCorruptionCollator:
    """T5 span corruption of raw rows of ``tokens_length`` (from ``compute_t5_lengths``).

    Per row, T5's ``random_spans_noise_mask`` picks noise spans; the input keeps the other
    tokens with each noise span replaced by the next sentinel, then EOS; the target is each
    sentinel followed by its span, then EOS. Every row has the same numbers of noise tokens and
    spans, so inputs are exactly ``input_length`` and labels exactly ``target_length`` long.
    """

    def __init__(
        self,
        input_length: int,
        target_length: int,
        noise_density: float,
        mean_noise_span_length: float,
        eos_id: int,
        sentinel_ids: Sequence[int],
    ) -> None:
        self.tokens_length, expected_target = compute_t5_lengths(
            input_length, noise_density, mean_noise_span_length
        )
        if target_length != expected_target:
            raise ValueError(
                f"target_length {target_length} does not match input_length {input_length}: "
                f"span corruption gives {expected_target}"
            )
        self.num_noise, self.num_spans = noise_span_counts(
            self.tokens_length, noise_density, mean_noise_span_length
        )
        if self.num_spans > len(sentinel_ids):
            raise ValueError(
                f"{self.num_spans} spans need as many sentinels; got {len(sentinel_ids)}"
            )
        self.input_length, self.target_length = input_length, target_length
        self.eos_id = eos_id
        self.sentinel_ids = np.asarray(sentinel_ids, dtype=np.int64)

    def __call__(self, rows: torch.Tensor, generator: torch.Generator) -> Batch:
        if rows.shape[1] != self.tokens_length:
            raise ValueError(
                f"span corruption needs rows of {self.tokens_length} tokens, got {rows.shape[1]}"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        tokens = rows.cpu().numpy()
        noise = self.noise_mask(len(tokens), np.random.default_rng(seed))
        inputs = torch.from_numpy(self._replace_spans(tokens, noise)).to(rows.device)
        labels = torch.from_numpy(self._replace_spans(tokens, ~noise)).to(rows.device)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}

    def noise_mask(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """bool [batch, tokens_length]: alternating non-noise and noise spans, non-noise first."""
        noise = _segment_lengths(rng, batch, self.num_noise, self.num_spans)
        keep = _segment_lengths(rng, batch, self.tokens_length - self.num_noise, self.num_spans)
        span_ends = np.cumsum(np.stack([keep, noise], axis=2).reshape(batch, -1), axis=1)
        starts = np.zeros((batch, self.tokens_length + 1), dtype=np.int64)
        np.put_along_axis(starts, span_ends, 1, axis=1)
        return np.cumsum(starts[:, : self.tokens_length], axis=1) % 2 == 1

    def _replace_spans(self, tokens: np.ndarray, spans: np.ndarray) -> np.ndarray:
        """Replace each run of ``spans`` by the next sentinel, then append EOS."""
        previous = np.pad(spans[:, :-1], ((0, 0), (1, 0)))
        first = spans & ~previous
        span_number = np.maximum(np.cumsum(first, axis=1) - 1, 0)
        values = np.where(first, self.sentinel_ids[span_number], tokens)
        kept = values[~spans | first].reshape(len(tokens), -1)
        eos = np.full((len(tokens), 1), self.eos_id, dtype=kept.dtype)
        return np.concatenate([kept, eos], axis=1)


def _segment_lengths(
    rng: np.random.Generator, batch: int, num_items: int, num_segments: int
) -> np.ndarray:
    """[batch, num_segments] positive lengths summing to ``num_items``, uniformly at random."""
    boundaries = np.arange(num_items - 1) < num_segments - 1
    first = np.ones((batch, num_items), dtype=bool)
    first[:, 1:] = rng.permuted(np.broadcast_to(boundaries, (batch, num_items - 1)), axis=1)
    starts = np.nonzero(first)[1].reshape(batch, num_segments)
    return np.diff(starts, axis=1, append=num_items)
