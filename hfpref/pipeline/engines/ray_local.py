"""The Ray engine on a cluster that is all this host: Ray tasks write the steps' cache files themselves.

On such a cluster every task runs where the driver's ``datasets`` cache folder is, so a task can map its
shard with ``Step.apply`` exactly as a worker of the local engine does (``hfpref.pipeline.engines.local``:
the same map function ``ShardRows``, the same cache file under the same fingerprint, so either engine
resumes the other's finished shards) and return only whether it raised. The driver then reads the shards
back from the cache. No row crosses Ray and the driver encodes nothing, where the general path
(``hfpref.pipeline.engines.ray_rows``) pickles every output row, sends it back and writes it with
``Dataset.map`` in the driver, one process for the whole cluster.

A cluster is local when the driver is not a Ray client (``ray://``) and every alive node has the driver's
node IP address (``ray.nodes()``' ``NodeManagerAddress`` against ``ray.util.get_node_ip_address()``): a
cluster ``ray.init()`` started, or ``ray start`` nodes all on this machine. A cluster with a node on another
host takes the general path, since a task there could not see (or would write) a cache folder of its own.
"""

from __future__ import annotations

import logging
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hfpref.core.step import Step
from hfpref.pipeline.engines.ray_rows import pickled_error
from hfpref.pipeline.resume import ShardRows, cached_only, is_cached, join_shards, plan_shards, shard_of

Job = tuple[Step, int, Any]  # a step, the first row of its shard, the shard (a ``datasets.Dataset``)


class BackgroundStart:
    """``start`` (which calls ``ray.init``) run in a daemon thread, so the cluster starts while the driver goes on;
    ``wait()`` until it has run, ``release()`` once the cluster is shut down.

    The thread lives until ``release``: the processes of a local cluster (GCS, raylet) are started with
    ``PR_SET_PDEATHSIG``, which kills them when the *thread* that started them ends, not the process.
    ``ray.init`` in the main thread makes SIGTERM exit the driver through ``sys.exit`` (so its atexit hook
    shuts the cluster down), and in another thread logs that it could not: the handler is set here, in the
    calling thread, as ``ray.init`` would, and that warning is dropped (unless Ray was already started).
    """

    def __init__(self, start: Callable[[], None]) -> None:
        ray = sys.modules.get("ray")
        if threading.current_thread() is threading.main_thread() and not (ray and ray.is_initialized()):
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            logging.getLogger("ray._private.worker").addFilter(_not_the_sigterm_warning)
        self._done, self._released = threading.Event(), threading.Event()
        threading.Thread(target=self._run, args=(start,), name="hfpref-ray-start", daemon=True).start()

    def _run(self, start: Callable[[], None]) -> None:
        try:
            start()
        finally:
            self._done.set()
        self._released.wait()

    def wait(self) -> None:
        self._done.wait()

    def release(self) -> None:
        self._released.set()


def warm_workers(ray: Any) -> None:
    """Start (and do not wait for) one task per CPU of the cluster that imports what every task of this
    module needs: the workers import ``datasets`` and hfpref while the driver reads its input, instead of
    when the first step's first tasks arrive (the local engine's forked workers inherit the driver's)."""
    warm = ray.remote(num_cpus=1)(_import_task_modules)
    for _ in range(int(ray.cluster_resources().get("CPU", 1))):
        warm.remote()


def _import_task_modules() -> None:
    import datasets  # noqa: F401

    import hfpref.pipeline.engines.ray_local  # noqa: F401


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(signum)


def _not_the_sigterm_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("SIGTERM handler is not set")


def is_local_cluster(ray: Any) -> bool:
    """Whether every alive node of the connected Ray cluster is this host (see the module docstring)."""
    from ray.util import client

    if client.ray.is_connected():  # a Ray client's driver runs away from the cluster's nodes
        return False
    here = ray.util.get_node_ip_address()
    return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node.get("Alive"))


def map_shard(step: Step, start: int, shard: Any, batch_size: int, progress: bool) -> bytes | None:
    """One Ray task: ``step`` over ``shard`` (rows from ``start``) into the ``datasets`` cache, as a local engine
    worker maps it. Returns None, or the step's exception pickled (raised as it is by the driver)."""
    import datasets

    if not progress:
        datasets.disable_progress_bars()
    desc = step.name if start == 0 and len(shard) else f"{step.name} [rows {start}-{start + len(shard) - 1}]"
    try:
        step.apply(shard, batch_size=batch_size, function=ShardRows(step, start), desc=f"{desc} (ray)")
    except Exception as error:  # sent back as it is: Ray would wrap it, and both engines raise the same
        return pickled_error(error)
    return None


def plan_jobs(
    steps: dict[Any, Step], dataset: Any, batch_size: int, shard_rows: int | None, min_shards: int
) -> tuple[list[tuple[int, Any]], list[Job]]:
    """The shards of ``dataset`` (``plan_shards``: (first row, shard)), and a job for each step and shard whose
    output is not cached yet, shard by shard."""
    bounds = plan_shards(len(dataset), batch_size, shard_rows, min_shards=min_shards)
    shards = [(start, shard_of(dataset, start, stop)) for start, stop in bounds]
    jobs = [
        (step, start, shard)
        for start, shard in shards
        for step in steps.values()
        if not is_cached(step, shard)
    ]
    return shards, jobs


def read_back(steps: dict[Any, Step], dataset: Any, shards: list[tuple[int, Any]], batch_size: int) -> dict:
    """Each of ``steps`` over ``dataset``, joined from its shards' cache files (each must be there)."""
    return {
        key: join_shards(
            step,
            dataset,
            [
                step.apply(shard, batch_size=batch_size, function=cached_only(step, start), desc=step.name)
                for start, shard in shards
            ],
        )
        for key, step in steps.items()
    }


def map_in_tasks(
    ray: Any, jobs: Sequence[Job], *, batch_size: int, concurrency: int | None, progress: bool
) -> None:
    """Run ``jobs`` as Ray tasks of one CPU each (at most ``concurrency`` at once, None: as the cluster
    fits), every shard written to the cache by its task; raise the first error a task returns."""
    task = ray.remote(num_cpus=1, max_retries=0)(map_shard)
    queue = list(jobs)
    running: list[Any] = []
    try:
        while queue or running:
            while queue and (concurrency is None or len(running) < concurrency):
                step, start, shard = queue.pop(0)
                running.append(task.remote(step, start, shard, batch_size, progress))
            [finished], running = ray.wait(running, num_returns=1)
            payload = ray.get(finished)
            if payload is not None:
                raise pickle.loads(payload)
    finally:
        for ref in running:  # after an error (or an interrupt) the other shards are not waited for
            ray.cancel(ref)


__all__ = [
    "BackgroundStart",
    "is_local_cluster",
    "map_in_tasks",
    "map_shard",
    "plan_jobs",
    "read_back",
    "warm_workers",
]
