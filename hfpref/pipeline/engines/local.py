"""The local engine: ``Dataset.map`` in this process, or in one worker process per GPU.

Every step runs in resumable shards (``hfpref.pipeline.resume``). With ``num_proc=k`` (``--gpus k`` for model
steps) the shards not yet in the cache are dealt round-robin to k worker processes; worker r passes
rank r to the step, so a model step loads its model once, on ``cuda:r``, and keeps it for all its
shards. (``Dataset.map(num_proc=k)`` would unpickle the step afresh for each shard job, loading the
model again for every resume shard, so the workers here are long-lived, one per rank.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from hfpref.core.step import Step, make_fork_safe
from hfpref.pipeline.engines import EngineError, is_model_step
from hfpref.pipeline.engines.base import Engine
from hfpref.pipeline.resume import (
    DEFAULT_SHARD_ROWS,
    ShardRows,
    cached_only,
    can_resume,
    is_cached,
    join_shards,
    plan_shards,
    shard_of,
)


class LocalEngine(Engine):
    """Runs recipe steps with ``datasets`` on this machine.

    ``gpus``: worker processes (one per GPU, rank = GPU index) for model steps, whatever ``num_proc``
    the recipe gives them; pure-CPU steps use ``num_proc`` as given. ``shard_rows``: rows per
    resumable shard (None or 0: a step is cached only when it finishes).
    """

    name = "local"

    def __init__(self, *, gpus: int | None = None, shard_rows: int | None = DEFAULT_SHARD_ROWS) -> None:
        if gpus is not None and gpus < 1:
            raise ValueError(f"gpus must be at least 1, got {gpus}")
        self.gpus = gpus
        self.shard_rows = shard_rows

    def workers_for(self, step: Step, num_proc: int | None) -> int:
        """``gpus`` for a model step (after checking this machine has them), else ``num_proc`` (at least 1)."""
        if self.gpus is not None and is_model_step(step):
            check_gpus(self.gpus)
            return self.gpus
        return max(1, num_proc or 1)

    def map_step(self, step: Step, dataset: Any, *, batch_size: int = 64, num_proc: int | None = None) -> Any:
        """``step`` over ``dataset``; shards finished by an earlier, interrupted run come from the cache."""
        return map_step(
            step,
            dataset,
            batch_size=batch_size,
            num_proc=self.workers_for(step, num_proc),
            shard_rows=self.shard_rows,
        )

    def run_selectors(
        self, selectors: dict[str, Step], candidates: Any, *, batch_size: int, num_proc: int | None
    ) -> dict[str, Any]:
        """With ``num_proc=k``, the selectors not yet cached run first in k worker processes, one selector per
        task (each writes its own cache file, the one a run in this process would write), and are read back
        from the cache; so the pairs and their fingerprints are the same whatever ``num_proc``. Otherwise
        (or with at most one selector to run) they run here."""
        workers = max(1, num_proc or 1)
        if workers == 1 or not can_resume(candidates):
            return {}
        todo = [s for s, selector in selectors.items() if not is_cached(selector, candidates)]
        if len(todo) < 2:
            return {}
        run_selectors_in_workers([selectors[s] for s in todo], candidates, workers, batch_size)
        return {
            strategy: selectors[strategy].apply(
                candidates,
                batch_size=batch_size,
                function=cached_only(selectors[strategy], 0),
                desc=f"pairs: {strategy}",
            )
            for strategy in todo
        }


def map_step(
    step: Step,
    dataset: Any,
    *,
    batch_size: int = 64,
    num_proc: int | None = None,
    shard_rows: int | None = DEFAULT_SHARD_ROWS,
) -> Any:
    """Run ``step`` over ``dataset`` in resumable shards, in this process or in ``num_proc`` workers.

    The output equals ``step.apply(dataset, batch_size=batch_size)``'s, row for row, and carries its
    fingerprint.
    """
    workers = max(1, num_proc or 1)
    if step.needs_whole_dataset or not can_resume(dataset):  # in memory or caching off: nothing to resume
        return step.apply(dataset, batch_size=batch_size, num_proc=workers if workers > 1 else None)
    bounds = plan_shards(len(dataset), batch_size, shard_rows, min_shards=workers)
    shards = [(start, shard_of(dataset, start, stop)) for start, stop in bounds]
    if workers > 1:
        todo = [(start, shard) for start, shard in shards if not is_cached(step, shard)]
        if todo:
            run_in_workers(step, todo, workers, batch_size)
        outputs = [
            step.apply(shard, batch_size=batch_size, function=cached_only(step, start), desc=step.name)
            for start, shard in shards
        ]
    else:
        outputs = [
            step.apply(
                shard, batch_size=batch_size, function=ShardRows(step, start), desc=_desc(step, i, shards)
            )
            for i, (start, shard) in enumerate(shards)
        ]
    return join_shards(step, dataset, outputs)


def check_gpus(gpus: int) -> None:
    """Fail when CUDA is present with fewer than ``gpus`` devices (ranks would share GPUs unasked).

    Without CUDA the ranks run on the CPU, which is how a machine without GPUs tests a multi-GPU run.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < gpus:
        raise EngineError(
            f"{gpus} GPUs asked for, but only {torch.cuda.device_count()} CUDA devices are visible"
        )


def _desc(step: Step, index: int, shards: list) -> str:
    return step.name if len(shards) == 1 else f"{step.name} [shard {index + 1}/{len(shards)}]"


def _work(step: Step, rank: int, shards: list[tuple[int, Any]], batch_size: int) -> int:
    """One worker: the step with its rank over its shards, in order (each cached when done)."""
    make_fork_safe()
    for start, shard in shards:
        step.apply(
            shard,
            batch_size=batch_size,
            function=ShardRows(step, start, rank),
            desc=f"{step.name} [rank {rank}, rows {start}-{start + len(shard) - 1}]",
        )
    return len(shards)


def run_in_workers(step: Step, shards: list[tuple[int, Any]], workers: int, batch_size: int) -> None:
    """Map ``shards`` (pairs of first row and shard) in ``workers`` processes, shard i on rank i mod k."""
    import multiprocess  # datasets' own pool library: dill pickles the steps (and test-defined ones)

    assigned = [shards[rank::workers] for rank in range(workers)]
    jobs = [(step, rank, part, batch_size) for rank, part in enumerate(assigned) if part]
    # one task per process (maxtasksperchild=1), so no process ever holds two ranks' models
    with _fork_safe_env(), _pool_context(multiprocess).Pool(len(jobs), maxtasksperchild=1) as pool:
        pool.starmap(_work, jobs, chunksize=1)


def _select(selector: Step, candidates: Any, batch_size: int) -> None:
    """One worker task: a pair selector over all candidates, cached (its output is read back by the parent)."""
    make_fork_safe()
    selector.apply(candidates, batch_size=batch_size, desc=f"pairs: {selector.name}")


def run_selectors_in_workers(selectors: list[Step], candidates: Any, workers: int, batch_size: int) -> None:
    """Run ``selectors`` over ``candidates`` in ``workers`` processes, one selector per task as workers free up
    (selectors differ in cost); each output lands in the ``datasets`` cache."""
    import multiprocess

    jobs = [(selector, candidates, batch_size) for selector in selectors]
    with _fork_safe_env(), _pool_context(multiprocess).Pool(min(workers, len(jobs))) as pool:
        pool.starmap(_select, jobs, chunksize=1)


def _pool_context(multiprocess: Any) -> Any:
    """Fork (fast, like ``Dataset.map``) unless this process already uses CUDA, which a forked child cannot."""
    torch = sys.modules.get("torch")
    cuda_started = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    return multiprocess.get_context("spawn" if cuda_started else "fork")


@contextlib.contextmanager
def _fork_safe_env() -> Iterator[None]:
    """Tokenizers' thread pool does not survive a fork (datasets sets the same for its workers)."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


__all__ = ["LocalEngine", "check_gpus", "map_step", "run_in_workers", "run_selectors_in_workers"]
