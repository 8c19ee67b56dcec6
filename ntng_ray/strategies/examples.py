"""Collated training examples with their row ids, and the subsets and unions strategies form.

A masked-LM batch carries ``masked_positions``, the flat indices of its labelled tokens, so the
sparse head runs without a host synchronisation. Taking a subset must renumber them: that is
done from a host copy of the positions (the collator made them on the host), so selecting
examples costs no more device round trips than the selection's own scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ntng_ray.engines.engine import Batch

POSITIONS = "masked_positions"


@dataclass
class Examples:
    """Collated examples with their stable row ids (the packed row index).

    ``host_positions`` mirrors ``batch["masked_positions"]`` on the host when the batch has
    them (None: read back from the device when first needed, e.g. after a restore).
    """

    ids: np.ndarray
    batch: Batch
    host_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _positions_on_host(self) -> np.ndarray:
        if self.host_positions is None:
            self.host_positions = self.batch[POSITIONS].cpu().numpy()
        return self.host_positions

    def take(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> Examples:
        """The examples at ``index`` (positions within this set), in that order."""
        picked = torch.as_tensor(np.asarray(index), dtype=torch.long).cpu()
        rows = picked.numpy()
        batch = {k: v[picked.to(v.device)] for k, v in self.batch.items() if k != POSITIONS}
        if POSITIONS not in self.batch:
            return Examples(self.ids[rows], batch)
        positions = renumbered_positions(
            self._positions_on_host(), rows, self.batch["labels"].shape[1]
        )
        batch[POSITIONS] = to_device(torch.from_numpy(positions), self.batch[POSITIONS].device)
        return Examples(self.ids[rows], batch, positions)

    @staticmethod
    def concat(parts: Sequence[Examples]) -> Examples:
        """One set from several, in order."""
        ids = np.concatenate([p.ids for p in parts])
        keys = [k for k in parts[0].batch if k != POSITIONS]
        batch = {k: torch.cat([p.batch[k] for p in parts]) for k in keys}
        if POSITIONS not in parts[0].batch:
            return Examples(ids, batch)
        length = parts[0].batch["labels"].shape[1]
        offsets = np.cumsum([0] + [len(p) * length for p in parts[:-1]])
        host = np.concatenate(
            [p._positions_on_host() + o for p, o in zip(parts, offsets, strict=True)]
        )
        batch[POSITIONS] = torch.cat(
            [p.batch[POSITIONS] + int(o) for p, o in zip(parts, offsets, strict=True)]
        )
        return Examples(ids, batch, host)


def renumbered_positions(positions: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
    """Flat labelled positions of ``rows`` (in that order) of a batch whose rows hold
    ``length`` tokens and whose labelled positions are ``positions`` (ascending)."""
    starts = np.searchsorted(positions, rows * length)
    ends = np.searchsorted(positions, (rows + 1) * length)
    parts = [
        positions[start:end] + (new - row) * length
        for new, (row, start, end) in enumerate(zip(rows, starts, ends, strict=True))
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU from pinned memory, so the copy does not wait."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
