"""Resumable steps: a long step runs in fixed row shards, each cached by ``datasets`` as it finishes.

``Dataset.map`` writes its cache file only when the whole map is done, so a crash or a kill in the
middle of a long step loses all of it. Here a step over more than ``shard_rows`` rows is mapped
shard by shard: shard ``[start, stop)`` is ``dataset.select(range(start, stop))`` with a fingerprint
derived from the dataset's and the row range, so its map output is cached under a fingerprint fixed
by (input, rows, step) and a rerun finds every finished shard in the cache. The shards' outputs are
then concatenated, and the result carries the fingerprint an unsharded ``Step.apply`` would give it,
so the steps after it are cached the same way whatever the shard size.

Shard sizes are multiples of the batch size, so every batch a step sees is the batch it sees in an
unsharded run: results do not depend on the shard size, even for steps whose numbers depend on what
is batched together (padded or packed model inputs).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from typing import Any

from hfpref.core.cache import NotComputed, can_resume
from hfpref.core.step import Batch, Step

DEFAULT_SHARD_ROWS = 1024


def plan_shards(
    num_rows: int, batch_size: int, shard_rows: int | None, min_shards: int = 1
) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges covering ``num_rows`` rows.

    Each range but the last holds a multiple of ``batch_size`` rows: ``shard_rows`` rounded up to one,
    or fewer when that is needed to make ``min_shards`` ranges (one per worker). ``shard_rows`` None
    or 0 with ``min_shards == 1`` gives a single range: no sharding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_rows == 0:
        return [(0, 0)]
    size = num_rows if not shard_rows or shard_rows <= 0 else shard_rows
    if min_shards > 1:
        size = min(size, math.ceil(num_rows / min_shards))
    size = max(batch_size, math.ceil(size / batch_size) * batch_size)
    return [(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


def shard_of(dataset: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of ``dataset`` with a fingerprint fixed by the dataset's and the range."""
    if (start, stop) == (0, len(dataset)):
        return dataset
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}:rows[{start}:{stop}]".encode()).hexdigest()[:32]
    return dataset.select(range(start, stop), new_fingerprint=fingerprint)


def is_cached(step: Step, dataset: Any) -> bool:
    """Whether ``step``'s output over ``dataset`` is already in the ``datasets`` cache."""
    if not can_resume(dataset):
        return False
    # datasets names a map's cache file after its fingerprint; there is no public "is it cached" call
    return os.path.exists(dataset._get_cache_file_path(step.output_fingerprint(dataset._fingerprint)))


def join_shards(step: Step, dataset: Any, outputs: list[Any]) -> Any:
    """The shards' outputs as one dataset, fingerprinted as ``step.apply(dataset)``'s output would be."""
    if len(outputs) == 1:
        return outputs[0]
    import datasets

    joined = datasets.concatenate_datasets(outputs)
    # concatenation derives its fingerprint from the shards'; the next step's cache key must not depend
    # on how this step was sharded, so the output gets the fingerprint of the unsharded map
    joined._fingerprint = step.output_fingerprint(dataset._fingerprint)
    return joined


class ShardRows:
    """The map function of one shard: the step, called with dataset row indices and a worker rank.

    ``Dataset.map`` numbers the rows of a shard from 0; adding the shard's first row keeps error
    messages naming rows of the whole dataset.
    """

    def __init__(self, step: Step, start: int, rank: int | None = None) -> None:
        self.step = step
        self.start = start
        self.rank = rank

    def __call__(self, batch: Batch, indices: list[int]) -> Batch:
        return self.step(batch, rank=self.rank, indices=[self.start + i for i in indices])


def cached_only(step: Step, start: int) -> Callable[[Batch, list[int]], Batch]:
    """A map function for a shard that must be a cache hit: it fails if ``Dataset.map`` calls it."""

    def not_computed(batch: Batch, indices: list[int]) -> Batch:
        raise NotComputed(
            f"{step.name}: rows from {start + indices[0]} were expected in the datasets cache and are not"
        )

    return not_computed


__all__ = [
    "DEFAULT_SHARD_ROWS",
    "NotComputed",
    "ShardRows",
    "cached_only",
    "can_resume",
    "is_cached",
    "join_shards",
    "plan_shards",
    "shard_of",
]
