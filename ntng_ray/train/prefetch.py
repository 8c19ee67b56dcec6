"""Training examples made ahead of the step that uses them.

``ExampleSource`` is the synchronous path: the next ids of the shared order, this worker's
slice, gathered rows, collated with the run's masking generator. ``Prefetcher`` runs the same
source on a background thread, ``depth`` draws ahead, and also pins the batch and starts its
copy to the GPU on a side stream, so collation and the host-to-device copy overlap the
previous step instead of stalling it.

The examples are exactly the synchronous path's: one thread makes the draws in order, with the
same sizes, from the same stream and generator. A request of another size than the draws
made ahead (RHO-loss's mega-batches, once, at its first draw) rewinds the source to where the
consumer stands and continues from there. A checkpoint saves that position too, never the
prefetched one, so a restored run draws the same examples as the uninterrupted one.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ntng_ray.data.collators import MLMCollator, SpanCorruptionCollator
from ntng_ray.strategies.examples import POSITIONS, Examples, to_device
from ntng_ray.train.batches import BatchStream


class ExampleSource:
    """This worker's next examples: its slice of the group's shared order, collated."""

    def __init__(
        self,
        stream: BatchStream,
        rows: np.ndarray,
        collator: MLMCollator | SpanCorruptionCollator,
        generator: torch.Generator,
        rank: int,
        world_size: int,
    ) -> None:
        self.stream, self.rows, self.collator, self.generator = stream, rows, collator, generator
        self.rank, self.world_size = rank, world_size

    def draw(self, count: int) -> Examples:
        ids = self.stream.take(count * self.world_size)
        mine = ids[self.rank * count : (self.rank + 1) * count]
        batch = self.collator(torch.from_numpy(self.rows[mine]).long(), self.generator)
        positions = batch[POSITIONS].numpy() if POSITIONS in batch else None
        return Examples(mine, batch, positions)

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict(), "mask_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
        self.generator.set_state(state["mask_generator"])


@dataclass
class _Ahead:
    """A draw made ahead: its size, and the future of (source state before it, examples,
    copy-done event)."""

    size: int
    future: Future


class Prefetcher:
    """``ExampleSource`` draws made ``depth`` ahead on a thread, on ``device`` when it is done.

    ``depth`` 0 draws in the caller's thread, when asked (``train.prefetch=0``).
    """

    def __init__(self, source: ExampleSource, device: torch.device, depth: int) -> None:
        self.source, self.device, self.depth = source, device, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ntng-prefetch")
        self._ahead: deque[_Ahead] = deque()
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def draw(self, count: int) -> Examples:
        """The next ``count`` examples, exactly as ``ExampleSource.draw`` would give them."""
        if self.depth == 0:
            return self.source.draw(count)
        if self._ahead and self._ahead[0].size != count:
            self._rewind()
        if not self._ahead:
            self._fill(count)
        _, examples, ready = self._ahead.popleft().future.result()
        self._fill(count)
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for tensor in examples.batch.values():
                tensor.record_stream(current)
        return examples

    def _fill(self, count: int) -> None:
        while len(self._ahead) < self.depth:
            self._ahead.append(_Ahead(count, self._pool.submit(self._make, count)))

    def _make(self, count: int) -> tuple[dict[str, Any], Examples, Any]:
        """Runs on the thread: the source's state before the draw, the draw, its copy event."""
        state = self.source.state_dict()
        examples = self.source.draw(count)
        if self._copy_stream is None:
            return state, examples, None
        with torch.cuda.stream(self._copy_stream):
            examples.batch = {k: to_device(v, self.device) for k, v in examples.batch.items()}
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return state, examples, ready

    def _settle(self) -> dict[str, Any] | None:
        """Stop drawing ahead; the state before the first draw made ahead (None: none made)."""
        first_state = None
        while self._ahead:
            ahead = self._ahead.popleft()
            if ahead.future.cancel():
                continue
            state = ahead.future.result()[0]
            if first_state is None:
                first_state = state
        return first_state

    def _rewind(self) -> None:
        state = self._settle()
        if state is not None:
            self.source.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer stands (not the draws made ahead): what a checkpoint keeps."""
        if self._ahead:
            return self._ahead[0].future.result()[0]
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._settle()
        self.source.load_state_dict(state)

    def close(self) -> None:
        self._settle()
        self._pool.shutdown(wait=True)
