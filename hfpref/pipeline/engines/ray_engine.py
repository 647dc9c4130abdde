"""The Ray engine: the same steps and recipe on a Ray cluster, through Ray Data.

Per step, the rows not yet in the ``datasets`` cache go to Ray as Arrow blocks (``ray.data.from_arrow``);
a model step (``hfpref.models.step.ModelStep``) runs in an actor pool, ``map_batches`` with a callable
class, ``num_gpus`` per actor and a fixed ``concurrency``, so each actor loads its model once; a pure-CPU
step runs as Ray tasks. Pair selection runs every strategy's ``PairSelector`` in one pass of tasks.

Exactness. Each Ray batch is decoded by ``datasets``' own Python formatter with the dataset's features,
so a step sees exactly the values ``Dataset.map`` gives it (Ray's numpy batches would not: ``Json``
columns arrive as undecoded strings, integers in structs with nulls as floats). The step's outputs
travel back pickled, one row at a time, and are written by ``Dataset.map`` replaying them
(``Step.apply(..., function=...)``): encoded, typed and cached exactly as the local engine writes
them, under the same fingerprints (Arrow's type inference on Ray's side would vary from batch to
batch, e.g. an all-None batch). Blocks hold whole batches of the local engine's batch size, so even a
model step batches the same rows together as it does locally.

Resumability. Steps run in the resumable shards of ``hfpref.pipeline.resume``: a shard is written to the
cache as soon as Ray has returned all its rows (in order: ``preserve_order``), so a rerun after a
crash or a kill sends only the unfinished shards to Ray. The caches are the local engine's, so a run
may also be finished by the other engine.

The input is read on the driver (from the Hub, a Parquet or JSON file, or the embedded data) as a
``datasets.Dataset``, as the local engine reads it, and the release folder is written on the driver.
Every node of the cluster needs hfpref (and any step module a recipe registers) importable.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from hfpref.core.step import Batch, Step
from hfpref.pipeline.engines import EngineError, is_model_step
from hfpref.pipeline.resume import (
    DEFAULT_SHARD_ROWS,
    ShardRows,
    cached_only,
    is_cached,
    join_shards,
    plan_shards,
    shard_of,
)

ROW_COLUMN = "_hfpref_row"  # dataset row index of each Ray row: the key outputs are matched back by
OUTPUT_COLUMN = "_hfpref_output"  # one pickled {column: value} dict per row
ERROR_COLUMN = "_hfpref_error"  # in a block whose step raised: the exception, pickled
BLOCKS_PER_WORKER = 4  # enough blocks for every actor or task slot to stay busy


class RayBatches:
    """A Ray Data ``map_batches`` function: decode a pyarrow batch as ``Dataset.map`` would, run ``fn``.

    ``fn(batch, indices)`` returns columns with one value per row (a step: ``ShardRows(step, 0)``);
    the result is the rows' dataset indices and their output dicts, pickled. Passed as a class (with
    ``fn_constructor_kwargs``) it runs in actors, each keeping ``fn``'s loaded model; as an instance,
    in tasks.
    """

    def __init__(self, fn: Callable[[Batch, list[int]], Batch], features: Any, name: str) -> None:
        self.fn = fn
        self.features = features
        self.name = name

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa
        from datasets.formatting import PythonFormatter

        rows = table.column(ROW_COLUMN).to_pylist()
        batch = PythonFormatter(features=self.features).format_batch(table.drop_columns([ROW_COLUMN]))
        try:
            out = self.fn(dict(batch), rows)
        except Exception as error:  # sent back as it is: Ray would wrap it, and both engines raise the same
            return error_block(rows[0], error)
        for column, values in out.items():
            if len(values) != len(rows):
                raise ValueError(
                    f"{self.name} returned {len(values)} values of column {column!r} for {len(rows)} rows; "
                    "the Ray engine matches outputs to input rows one to one"
                )
        payloads = [
            pickle.dumps(
                {column: values[i] for column, values in out.items()}, protocol=pickle.HIGHEST_PROTOCOL
            )
            for i in range(len(rows))
        ]
        return pa.table(
            {ROW_COLUMN: pa.array(rows, pa.int64()), OUTPUT_COLUMN: pa.array(payloads, pa.binary())}
        )


def error_block(row: int, error: Exception) -> Any:
    """A one-row output block carrying ``error`` (pickled, with the worker's traceback as a note)."""
    import pyarrow as pa

    if hasattr(error, "add_note"):
        error.add_note("(raised in a Ray worker)\n" + "".join(traceback.format_exception(error)))
    try:
        payload = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot be pickled travels as Ray's own error
        raise error from None
    return pa.table(
        {
            ROW_COLUMN: pa.array([row], pa.int64()),
            OUTPUT_COLUMN: pa.array([b""], pa.binary()),
            ERROR_COLUMN: pa.array([payload], pa.binary()),
        }
    )


class AllSelectors:
    """Every pair strategy's selector over one batch: ``{strategy: [its output row dict, ...]}``."""

    def __init__(self, selectors: dict[str, Step]) -> None:
        self.selectors = selectors

    def __call__(self, batch: Batch, indices: list[int]) -> Batch:
        out: Batch = {}
        for strategy, selector in self.selectors.items():
            columns = selector(batch, indices=indices)
            out[strategy] = [{c: v[i] for c, v in columns.items()} for i in range(len(indices))]
        return out


class Replay:
    """A map function for ``Step.apply`` that returns outputs computed on Ray, by dataset row.

    ``outputs`` maps row index to pickled ``{column: value}`` (``key`` picks one strategy's dict
    out of an ``AllSelectors`` row); ``start`` is the shard's first row.
    """

    def __init__(self, outputs: dict[int, bytes], start: int, key: str | None = None) -> None:
        self.outputs = outputs
        self.start = start
        self.key = key

    def __call__(self, batch: Batch, indices: list[int]) -> Batch:
        rows = [pickle.loads(self.outputs[self.start + i]) for i in indices]
        if self.key is not None:
            rows = [row[self.key] for row in rows]
        return {column: [row[column] for row in rows] for column in rows[0]} if rows else {}


class RayEngine:
    """Runs recipe steps on a Ray cluster (``address``: None starts a local one; "auto" joins a running one).

    ``gpus``: GPUs a model step uses, one actor per GPU (default: every GPU of the cluster, or one
    actor per CPU on a cluster without GPUs); ``concurrency``: actors per model step instead;
    ``num_gpus_per_actor``: GPUs each model actor reserves (default 1 on a cluster with GPUs, else 0;
    a fraction packs several actors on a GPU); ``task_concurrency``: the most tasks of a pure-CPU step
    at once (default: Ray's choice); ``shard_rows``: rows per resumable shard; ``init_kwargs``: extra
    ``ray.init`` arguments (e.g. ``num_cpus``, ``runtime_env``). A cluster this engine starts is shut
    down by ``close``; one that was already running is left alone.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        gpus: int | None = None,
        concurrency: int | None = None,
        num_gpus_per_actor: float | None = None,
        task_concurrency: int | None = None,
        shard_rows: int | None = DEFAULT_SHARD_ROWS,
        progress: bool = True,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        for name, value in (
            ("gpus", gpus),
            ("concurrency", concurrency),
            ("task_concurrency", task_concurrency),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if num_gpus_per_actor is not None and num_gpus_per_actor < 0:
            raise ValueError(f"num_gpus_per_actor must not be negative, got {num_gpus_per_actor}")
        self.address = address
        self.gpus = gpus
        self.concurrency = concurrency
        self.num_gpus_per_actor = num_gpus_per_actor
        self.task_concurrency = task_concurrency
        self.shard_rows = shard_rows
        self.progress = progress
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False
        self.executions = 0  # Ray Data executions run (tests and benchmarks read it)

    # ---- the cluster -----------------------------------------------------------------------------
    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as error:
            raise EngineError(
                "the Ray engine needs Ray Data: pip install 'hfpref[ray]' (ray[data]>=2.40)"
            ) from error
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_kwargs)
            self._started = True
        return ray

    def close(self) -> None:
        """Shut down the Ray cluster if this engine started it."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def actor_options(self) -> dict[str, Any]:
        """``map_batches`` arguments of a model step: concurrency (actors) and resources per actor."""
        ray = self._ray()
        resources = ray.cluster_resources()
        cluster_gpus, cluster_cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
        num_gpus = self.num_gpus_per_actor
        if num_gpus is None:
            num_gpus = 1.0 if (self.gpus or cluster_gpus) else 0.0
        if self.concurrency is not None:
            concurrency = self.concurrency
        elif self.gpus is not None:
            concurrency = self.gpus
        elif num_gpus > 0:
            concurrency = max(1, int(cluster_gpus / num_gpus))
        else:
            concurrency = max(1, int(cluster_cpus))
        if num_gpus * concurrency > cluster_gpus:
            raise EngineError(
                f"{concurrency} model actors x {num_gpus:g} GPU need {num_gpus * concurrency:g} GPUs; the Ray "
                f"cluster has {cluster_gpus:g}"
            )
        options: dict[str, Any] = {"concurrency": concurrency, "num_gpus": num_gpus}
        if num_gpus == 0:
            options["num_cpus"] = 1
        return options

    def _workers(self, options: dict[str, Any]) -> int:
        if "concurrency" in options and options["concurrency"] is not None:
            return int(options["concurrency"])
        return max(1, int(self._ray().cluster_resources().get("CPU", 1.0)))

    @contextlib.contextmanager
    def _data_context(self) -> Iterator[None]:
        """Ray Data settings for our executions, restored after: rows in order, progress bars as asked."""
        import ray.data

        context = ray.data.DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        context.execution_options.preserve_order = True
        context.enable_progress_bars = self.progress
        try:
            yield
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved

    def _outputs(
        self,
        dataset: Any,
        ranges: list[tuple[int, int]],
        fn: Callable[[Batch, list[int]], Batch],
        name: str,
        *,
        actors: bool,
        batch_size: int,
    ) -> Iterator[tuple[list[int], list[bytes]]]:
        """Run ``fn`` on Ray over the rows in ``ranges``; yield (rows, pickled outputs) blocks, in order."""
        ray = self._ray()
        options = self.actor_options() if actors else {"num_cpus": 1, "concurrency": self.task_concurrency}
        total = sum(stop - start for start, stop in ranges)
        block_rows = batch_size * max(
            1, math.ceil(total / (batch_size * BLOCKS_PER_WORKER * self._workers(options)))
        )
        arrow = dataset.with_format("arrow")
        blocks = []
        for start, stop in ranges:
            for first in range(start, stop, block_rows):
                last = min(first + block_rows, stop)
                table = arrow[first:last]
                blocks.append(table.append_column(ROW_COLUMN, _int64(range(first, last))))
        with self._data_context():
            source = ray.data.from_arrow(blocks)
            if actors:
                mapped = source.map_batches(
                    RayBatches,
                    fn_constructor_kwargs={"fn": fn, "features": dataset.features, "name": name},
                    batch_size=batch_size,
                    batch_format="pyarrow",
                    **options,
                )
            else:
                mapped = source.map_batches(
                    RayBatches(fn, dataset.features, name),
                    batch_size=batch_size,
                    batch_format="pyarrow",
                    **{k: v for k, v in options.items() if v is not None},
                )
            self.executions += 1
            for block in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
                if ERROR_COLUMN in block.column_names:
                    for payload in block.column(ERROR_COLUMN).to_pylist():
                        if payload is not None:
                            raise pickle.loads(payload)
                yield block.column(ROW_COLUMN).to_pylist(), block.column(OUTPUT_COLUMN).to_pylist()

    # ---- the engine protocol -----------------------------------------------------------------------
    def map_step(self, step: Step, dataset: Any, *, batch_size: int = 64, num_proc: int | None = None) -> Any:
        """``step`` over ``dataset`` on Ray (``num_proc`` is the local engine's and is not used here)."""
        # a step that ranks or inspects all rows at once, or a pair maker (its outputs are not one per input
        # row, which is how blocks come back from Ray), runs here
        if len(dataset) == 0 or step.needs_whole_dataset or step.changes_row_count:
            return step.apply(dataset, batch_size=batch_size)
        bounds = plan_shards(len(dataset), batch_size, self.shard_rows)
        shards = {start: (stop, shard_of(dataset, start, stop)) for start, stop in bounds}
        done: dict[int, Any] = {}
        pending = [start for start, (_, shard) in shards.items() if not is_cached(step, shard)]
        if pending:
            collected: dict[int, bytes] = {}
            queue = list(pending)
            outputs = self._outputs(
                dataset,
                [(start, shards[start][0]) for start in pending],
                ShardRows(step, 0),
                step.name,
                actors=is_model_step(step),
                batch_size=batch_size,
            )
            for rows, payloads in outputs:
                collected.update(zip(rows, payloads, strict=True))
                while queue and all(row in collected for row in range(queue[0], shards[queue[0]][0])):
                    start = queue.pop(0)  # every row of the next shard is back: cache it now
                    stop, shard = shards[start]
                    done[start] = step.apply(
                        shard,
                        batch_size=batch_size,
                        function=Replay(collected, start),
                        desc=f"{step.name} (ray)",
                    )
                    for row in range(start, stop):
                        del collected[row]
            if queue:
                raise RuntimeError(f"{step.name}: Ray returned no output for rows from {queue[0]}")
        results = [
            done[start]
            if start in done
            else step.apply(shard, batch_size=batch_size, function=cached_only(step, start), desc=step.name)
            for start, (_, shard) in shards.items()
        ]
        return join_shards(step, dataset, results)

    def select_pairs(
        self,
        selectors: dict[str, Step],
        candidates: Any,
        *,
        batch_size: int = 64,
        num_proc: int | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """(strategy, pairs with ``drop_reason``) per selector; the uncached ones in one pass of Ray tasks
        (``num_proc`` is the local engine's and is not used here)."""
        if len(candidates) == 0:
            yield from ((s, sel.apply(candidates, batch_size=batch_size)) for s, sel in selectors.items())
            return
        todo = {s: sel for s, sel in selectors.items() if not is_cached(sel, candidates)}
        collected: dict[int, bytes] = {}
        if todo:
            for rows, payloads in self._outputs(
                candidates,
                [(0, len(candidates))],
                AllSelectors(todo),
                "PairSelector",
                actors=False,
                batch_size=batch_size,
            ):
                collected.update(zip(rows, payloads, strict=True))
        for strategy, selector in selectors.items():
            function = Replay(collected, 0, key=strategy) if strategy in todo else cached_only(selector, 0)
            yield (
                strategy,
                selector.apply(
                    candidates, batch_size=batch_size, function=function, desc=f"pairs: {strategy} (ray)"
                ),
            )


def _int64(values: range) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.int64())


__all__ = ["RayBatches", "RayEngine", "Replay"]
