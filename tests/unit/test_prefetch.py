"""Batches made ahead are the synchronous path's batches: same examples, same masks, also when
the draw size changes, across epochs, and after a restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntng_ray.data.collators import MLMCollator
from ntng_ray.strategies.examples import Examples
from ntng_ray.train.batches import BatchStream
from ntng_ray.train.prefetch import ExampleSource, Prefetcher

VOCAB, LENGTH, ROWS = 64, 16, 37
SIZES = [4, 4, 4, 12, 12, 4, 4, 4, 4, 4, 4, 4]  # a size change rewinds what was made ahead


def source(rank: int = 0, world_size: int = 1) -> ExampleSource:
    rows = np.random.default_rng(0).integers(5, VOCAB, (ROWS, LENGTH), dtype=np.int32)
    stream = BatchStream(np.arange(ROWS), seed=3)
    collator = MLMCollator(VOCAB, mask_id=4, special_ids=range(5), mlm_probability=0.3)
    generator = torch.Generator().manual_seed(11 + rank)
    return ExampleSource(stream, rows, collator, generator, rank, world_size)


def assert_same(a: Examples, b: Examples) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.batch.keys() == b.batch.keys()
    for key in a.batch:
        torch.testing.assert_close(a.batch[key], b.batch[key], rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(a.host_positions, b.host_positions)


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_prefetched_draws_equal_the_synchronous_ones(depth: int) -> None:
    reference, ahead = source(), Prefetcher(source(), torch.device("cpu"), depth)
    try:
        for size in SIZES:  # 68 rows of 37: two epoch changes on the way
            assert_same(ahead.draw(size), reference.draw(size))
    finally:
        ahead.close()


def test_a_restored_prefetcher_continues_where_the_consumer_stood() -> None:
    ahead = Prefetcher(source(), torch.device("cpu"), depth=3)
    for size in SIZES[:4]:
        ahead.draw(size)
    state = ahead.state_dict()  # draws were made ahead beyond this point; not saved
    expected = [ahead.draw(size) for size in SIZES[4:]]
    ahead.close()

    restored = Prefetcher(source(), torch.device("cpu"), depth=3)
    restored.draw(4)  # some draws already made ahead of the restore: they are dropped
    restored.load_state_dict(state)
    try:
        for size, want in zip(SIZES[4:], expected, strict=True):
            assert_same(restored.draw(size), want)
    finally:
        restored.close()


def test_workers_take_their_slices_of_one_shared_order() -> None:
    ranks = [Prefetcher(source(r, 2), torch.device("cpu"), depth=2) for r in range(2)]
    try:
        drawn = [p.draw(4).ids for p in ranks]
    finally:
        for p in ranks:
            p.close()
    order = BatchStream(np.arange(ROWS), seed=3).take(8)
    np.testing.assert_array_equal(np.concatenate(drawn), order)


def test_subsets_and_unions_renumber_the_masked_positions() -> None:
    examples = source().draw(6)
    picked = examples.take([4, 1, 1])
    assert_same(picked, Examples(
        examples.ids[[4, 1, 1]],
        {k: v[[4, 1, 1]] for k, v in examples.batch.items() if k != "masked_positions"}
        | {"masked_positions": (picked.batch["labels"].flatten() != -100).nonzero().squeeze(1)},
        (picked.batch["labels"].flatten() != -100).nonzero().squeeze(1).numpy(),
    ))  # fmt: skip
    joined = Examples.concat([examples.take([0, 1]), examples.take([2, 3, 4, 5])])
    assert_same(joined, examples)
