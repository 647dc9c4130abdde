"""The Ray engine: the same steps and recipe on a Ray cluster, through Ray Data.

Per step, the rows not yet in the ``datasets`` cache go to Ray as Arrow blocks (``ray.data.from_arrow``);
a model step (``hfpref.models.step.ModelStep``) runs in an actor pool, ``map_batches`` with a callable
class, ``num_gpus`` per actor and a fixed ``concurrency``, so each actor loads its model once; a pure-CPU
step runs as Ray tasks. Pair selection runs every uncached strategy's ``PairSelector`` in one pass of tasks;
the driver decodes each row's outputs once and replays every strategy from them.

On a cluster that is all this host (``hfpref.pipeline.engines.ray_local``), a pure-CPU step and the pair
selectors instead run as Ray tasks that write their shards' cache files themselves, as the local engine's
workers do, and the driver only reads them back: no row travels through Ray and the driver encodes nothing.
A local cluster this engine starts is started when the engine is made, in a background thread, so that
its start overlaps the driver's reading and checking of the input; the first use waits for it.

Resumability. Steps and pair selectors run in the resumable shards of ``hfpref.pipeline.resume``: a shard
is written to the cache as soon as Ray has returned all its rows (in order: ``preserve_order``) and its
rows are then dropped from the driver, so a rerun after a crash or a kill sends only the unfinished shards
to Ray, and the driver holds at most the rows of the shards still in flight. The caches are the local
engine's, so a run may also be finished by the other engine.

The input is read on the driver (from the Hub, a Parquet or JSON file, or the embedded data) as a
``datasets.Dataset``, as the local engine reads it, and the release folder is written on the driver.
Every node of the cluster needs hfpref (and any step module a recipe registers) importable.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from hfpref.core.step import Batch, Step
from hfpref.pipeline.engines import EngineError, is_model_step
from hfpref.pipeline.engines.base import Engine
from hfpref.pipeline.engines.ray_local import (
    BackgroundStart,
    is_local_cluster,
    map_in_tasks,
    plan_jobs,
    read_back,
    warm_workers,
)
from hfpref.pipeline.engines.ray_rows import (
    ERROR_COLUMN,
    OUTPUT_COLUMN,
    ROW_COLUMN,
    AllSelectors,
    RayBatches,
    Replay,
    int64_array,
)
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

BLOCKS_PER_WORKER = 4  # enough blocks for every actor or task slot to stay busy


class RayEngine(Engine):
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
        self._local: bool | None = None  # whether the cluster is all this host (known after the start)
        self.executions = 0  # Ray executions (Ray Data or task passes) run (tests and benchmarks read it)
        # the cluster starts now, alongside the driver's own work before the first step (reading the input)
        self._start_error: BaseException | None = None
        self._starting = BackgroundStart(self._start)

    # ---- the cluster -----------------------------------------------------------------------------
    def _start(self) -> None:
        """Connect to (or start) the cluster; in the background thread ``__init__`` begins."""
        try:
            import ray

            if not ray.is_initialized():
                ray.init(address=self.address, **self.init_kwargs)
                self._started = True
                if self.address is None:  # a new local cluster: its workers import while the driver works
                    warm_workers(ray)
        except BaseException as error:  # raised by the first use, in the caller's thread
            self._start_error = error

    def _ray(self) -> Any:
        self._starting.wait()
        if isinstance(self._start_error, ImportError):
            raise EngineError(
                "the Ray engine needs Ray Data: pip install 'hfpref[ray]' (ray[data]>=2.40)"
            ) from self._start_error
        if self._start_error is not None:
            raise self._start_error
        import ray

        if not ray.is_initialized():  # shut down since (by close, or by its owner): start it again
            self._start()
            return self._ray()
        return ray

    def writes_caches(self, dataset: Any) -> bool:
        """Whether Ray tasks write ``dataset``'s steps' cache files themselves: a cached dataset (``can_resume``)
        on a cluster that is all this host (``ray_local``)."""
        if not can_resume(dataset):
            return False
        if self._local is None:
            self._local = is_local_cluster(self._ray())
        return self._local

    def close(self) -> None:
        """Shut down the Ray cluster if this engine started it."""
        self._starting.wait()  # closed before its first use: the start must end first
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._starting.release()  # the thread that started the cluster may end now that it is down

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
                blocks.append(table.append_column(ROW_COLUMN, int64_array(range(first, last))))
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
        if not is_model_step(step) and self.writes_caches(dataset):
            # shards as the local engine plans them for as many workers, so either engine resumes the other
            slots = self.task_concurrency or self._workers({})
            return self._in_tasks({None: step}, dataset, batch_size, self.shard_rows, slots)[None]
        outputs = self._sharded(
            {None: step},
            dataset,
            ShardRows(step, 0),
            step.name,
            actors=is_model_step(step),
            batch_size=batch_size,
        )
        return outputs[None]

    def run_selectors(
        self, selectors: dict[str, Step], candidates: Any, *, batch_size: int, num_proc: int | None
    ) -> dict[str, Any]:
        """The selectors not yet cached run in one pass of Ray tasks, in resumable shards as ``map_step``
        runs a step; each is then read back from its cached shards (``num_proc`` is not used here). On a
        local cluster each selector is one task over all rows, which writes the file the local engine would."""
        todo = {s: sel for s, sel in selectors.items() if not is_cached(sel, candidates)}
        if len(candidates) == 0 or not todo:
            return {}
        if self.writes_caches(candidates):  # a task per selector over all rows, as the local engine runs them
            return self._in_tasks(todo, candidates, batch_size, None, 1)
        return self._sharded(
            todo, candidates, AllSelectors(todo), "PairSelector", actors=False, batch_size=batch_size
        )

    # ---- resumable shards ----------------------------------------------------------------------------
    def _in_tasks(
        self, steps: dict[Any, Step], dataset: Any, batch_size: int, shard_rows: int | None, min_shards: int
    ) -> dict[Any, Any]:
        """Each of ``steps`` over ``dataset`` on a local cluster: each shard of a step not yet cached is a Ray
        task that writes it to the cache (``ray_local``); then all are read back from the cache here."""
        shards, jobs = plan_jobs(steps, dataset, batch_size, shard_rows, min_shards)
        if jobs:
            self.executions += 1
            map_in_tasks(
                self._ray(),
                jobs,
                batch_size=batch_size,
                concurrency=self.task_concurrency,
                progress=self.progress,
            )
        return read_back(steps, dataset, shards, batch_size)

    def _sharded(
        self,
        steps: dict[Any, Step],
        dataset: Any,
        fn: Callable[[Batch, list[int]], Batch],
        name: str,
        *,
        actors: bool,
        batch_size: int,
    ) -> dict[Any, Any]:
        """Each of ``steps`` over ``dataset``, by resumable shards: the shards not cached for all of them
        run on Ray through ``fn`` (for one step, under key None, its columns; for several, one column
        per key: ``AllSelectors``), each written to the cache as soon as its rows are back."""
        bounds = plan_shards(len(dataset), batch_size, self.shard_rows)
        shards = {start: (stop, shard_of(dataset, start, stop)) for start, stop in bounds}
        pending = [
            start
            for start, (_, shard) in shards.items()
            if not all(is_cached(step, shard) for step in steps.values())
        ]
        done = self._replayed(steps, dataset, shards, pending, fn, name, actors=actors, batch_size=batch_size)
        return {
            key: join_shards(
                step,
                dataset,
                [
                    done[key, start]
                    if (key, start) in done
                    else step.apply(
                        shard, batch_size=batch_size, function=cached_only(step, start), desc=step.name
                    )
                    for start, (_, shard) in shards.items()
                ],
            )
            for key, step in steps.items()
        }

    def _replayed(
        self,
        steps: dict[Any, Step],
        dataset: Any,
        shards: dict[int, tuple[int, Any]],
        pending: list[int],
        fn: Callable[[Batch, list[int]], Batch],
        name: str,
        *,
        actors: bool,
        batch_size: int,
    ) -> dict[tuple[Any, int], Any]:
        """Run the ``pending`` shards on Ray; as each shard's rows are all back, decode them (once, whatever
        the number of steps), replay every step's output over the shard through ``Step.apply`` (cached), and
        drop them. Returns ``{(key, shard start): output}``."""
        done: dict[tuple[Any, int], Any] = {}
        if not pending:
            return done
        collected: dict[int, bytes] = {}
        queue = list(pending)
        ranges = [(start, shards[start][0]) for start in pending]
        for rows, payloads in self._outputs(dataset, ranges, fn, name, actors=actors, batch_size=batch_size):
            collected.update(zip(rows, payloads, strict=True))
            while queue and all(row in collected for row in range(queue[0], shards[queue[0]][0])):
                start = queue.pop(0)  # every row of the next shard is back: cache it now
                stop, shard = shards[start]
                decoded = {row: pickle.loads(collected.pop(row)) for row in range(start, stop)}
                for key, step in steps.items():
                    done[key, start] = step.apply(
                        shard,
                        batch_size=batch_size,
                        function=Replay(decoded, start, key),
                        desc=f"{step.name} (ray)" if key is None else f"pairs: {key} (ray)",
                    )
        if queue:
            raise RuntimeError(f"{name}: Ray returned no output for rows from {queue[0]}")
        return done


__all__ = ["RayBatches", "RayEngine", "Replay"]
