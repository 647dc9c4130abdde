"""What a step may know about the ``datasets`` cache of map outputs.

Whether map outputs over a dataset are cached on disk, which file(s) a map with a given fingerprint
writes, and ``NotComputed``, the error of a map that was expected to be a cache hit. The pipeline's
shard-level resume (``hfpref.pipeline.resume``) and the steps that keep an output out of later runs'
cache (the judge steps, ``hfpref.steps.judges.base``) share them, so no step imports the pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class NotComputed(RuntimeError):
    """A shard that should have been in the cache was not (caching off, or the cache was removed)."""


def can_resume(dataset: Any) -> bool:
    """Whether map outputs over ``dataset`` are cached on disk (an in-memory dataset's are not)."""
    import datasets

    return datasets.is_caching_enabled() and bool(dataset.cache_files)


def map_cache_files(dataset: Any, fingerprint: str) -> list[str]:
    """The ``datasets`` cache file(s) a map over ``dataset`` with ``fingerprint`` writes (one, or one per
    worker of ``Dataset.map(num_proc=k)``, named ``..._00000_of_0000k.arrow``); they may not exist yet."""
    path = dataset._get_cache_file_path(fingerprint)  # no public call names a map's cache file
    stem, suffix = os.path.splitext(path)
    return sorted({path, *(str(p) for p in Path(stem).parent.glob(f"{Path(stem).name}_*_of_*{suffix}"))})


def reopened(dataset: Any) -> Any:
    """``dataset`` with fresh memory maps of its cache files, when all of its data (and its indices) are
    memory-mapped from files; otherwise ``dataset`` itself.

    The pages of a memory-mapped Arrow file count in the process's RSS once read, for as long as the map
    lives; a fresh map of the same files counts none until read. Dropping the original after a full read
    and keeping the copy gives back what the read made resident (issue 15: peak memory). ``datasets``
    pickles a memory-mapped table as its path and the operations replayed on it, and unpickling maps the
    file again, so a copy costs a few milliseconds whatever the size; rows, features, format and
    fingerprint are the original's.
    """
    import pickle

    from datasets.table import ConcatenationTable, MemoryMappedTable

    def mapped(table: Any) -> bool:
        if isinstance(table, ConcatenationTable):
            return all(isinstance(block, MemoryMappedTable) for row in table.blocks for block in row)
        return isinstance(table, MemoryMappedTable)

    data, indices = getattr(dataset, "_data", None), getattr(dataset, "_indices", None)
    if data is None or not mapped(data) or (indices is not None and not mapped(indices)):
        return dataset
    try:
        return pickle.loads(pickle.dumps(dataset))
    except FileNotFoundError:  # its cache files were removed since: only the open maps still read them
        return dataset
