"""Training order: seeded epochs over the training rows, with a position that can be saved."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BatchStream:
    """Yields training row ids, a fresh seeded permutation per epoch.

    The state is two integers (epoch, position), so a checkpoint can resume the exact order.
    """

    train_ids: np.ndarray
    seed: int
    epoch: int = 0
    position: int = 0

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.train_ids[rng.permutation(len(self.train_ids))]

    def __post_init__(self) -> None:
        if len(self.train_ids) == 0:
            raise ValueError("no training rows")
        self._current = self._order()

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` row ids, crossing into the next epoch when one ends."""
        out = []
        while count > 0:
            chunk = self._current[self.position : self.position + count]
            out.append(chunk)
            self.position += len(chunk)
            count -= len(chunk)
            if self.position == len(self._current):
                self.epoch += 1
                self.position = 0
                self._current = self._order()
        return np.concatenate(out)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._current = self._order()
