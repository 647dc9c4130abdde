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
