"""The transform protocol every curation step follows.

A step is one small class with a config dataclass. Its ``__call__(batch, rank=None)`` takes a
batch (a dict of columns) and returns the columns it adds or replaces, so the same object runs as

* ``Dataset.map(step, batched=True)`` in one process,
* ``Dataset.map(step, batched=True, with_rank=True, num_proc=k)`` on k GPUs,
* ``ray.data.Dataset.map_batches(StepClass, fn_constructor_kwargs={"config": cfg}, batch_format="numpy")``
  on a cluster, where columns arrive as numpy arrays and leave as numpy arrays, input columns included
  (Ray keeps only what the function returns).

Models load lazily on first use (``load``) and are dropped when the step is pickled, so workers
never copy weights and ``datasets`` fingerprints stay stable. ``Step.fingerprint`` hashes the
config, the step version and the resolved model revision; ``Step.apply`` uses it so a rerun of a
finished step over the same data is a cache hit and a changed step is not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hfpref.errors import UserError

Batch = dict[str, list]


class MissingColumnError(UserError):
    """A step's input column is absent from the batch or dataset."""


class RowError(UserError):
    """A row holds a value a step cannot work with; the message names the row, column and value."""


@dataclasses.dataclass
class StepConfig:
    """Base class for step configs; subclasses add their own fields (all JSON-serialisable)."""


def check_columns(present: Iterable[str], required: Iterable[str], step: str) -> None:
    """Fail with the missing column's name and the columns present."""
    present = list(present)
    missing = [c for c in required if c not in present]
    if missing:
        raise MissingColumnError(
            f"{step} needs column(s) {missing}, which are missing; columns present: {sorted(present)}"
        )


def row_label(batch: Mapping[str, Sequence], i: int, indices: Sequence[int] | None = None) -> str:
    """A human-readable name for row ``i`` of a batch: its dataset index and key where known."""
    parts = []
    if indices is not None:
        parts.append(f"row {indices[i]}")
    else:
        parts.append(f"batch row {i}")
    for key_col in ("key", "id", "prompt_id"):
        if key_col in batch:
            parts.append(f"{key_col}={batch[key_col][i]!r}")
            break
    return " ".join(parts)


def to_python(value: Any) -> Any:
    """Turn numpy arrays and scalars (Ray Data's batch format) into plain Python lists and values."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [to_python(v) for v in value]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value


def to_numpy_column(values: list) -> np.ndarray:
    """One output column as a numpy array: plain dtype for scalars, object dtype for nested values."""
    if all(isinstance(v, (bool, int, float, str)) for v in values) and values:
        return np.asarray(values)
    column = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # element-wise, so equal-length lists are not broadcast into 2-D
        column[i] = v
    return column


def _canonical(value: Any) -> Any:
    """A JSON-serialisable, order-stable form of a config value, for hashing."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class Step:
    """Base class of all curation steps.

    Subclasses set ``config_class``, ``version`` and implement ``process``. They declare
    ``input_columns`` / ``output_columns`` (override the methods when they depend on the config).
    A step that changes the number of rows (pair selection) sets ``changes_row_count = True`` and
    returns every column it keeps.
    """

    config_class: ClassVar[type[StepConfig]] = StepConfig
    version: ClassVar[str] = "1"
    changes_row_count: ClassVar[bool] = False
    # a step whose ``apply`` looks at the whole dataset (corpus-level ranking, type discovery) is run
    # in one piece by the engines instead of in resumable shards
    needs_whole_dataset: ClassVar[bool] = False

    def __init__(self, config: StepConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = self.config_class(**overrides)
        elif isinstance(config, Mapping):
            config = self.config_class(**{**config, **overrides})
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self._loaded: dict[int | None, Any] = {}

    # ---- declared columns ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def input_columns(self) -> list[str]:
        return []

    def output_columns(self) -> list[str]:
        return []

    # ---- lazy resources (models) -----------------------------------------------------------
    def load(self, rank: int | None) -> Any:
        """Load what the step needs (models, tokenizers) for this worker; override in model steps."""
        return None

    def resources(self, rank: int | None = None) -> Any:
        """The loaded resources for ``rank``, loading them on first use only."""
        if rank not in self._loaded:
            self._loaded[rank] = self.load(rank)
        return self._loaded[rank]

    def resolved_revision(self) -> str | None:
        """The exact revision (commit hash or content hash) of any model the step uses."""
        return None

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        raise NotImplementedError

    def __call__(self, batch: Mapping[str, Any], rank: int | None = None, indices: list[int] | None = None):
        from_numpy = any(isinstance(v, np.ndarray) for v in batch.values())
        columns: Batch = {k: to_python(v) for k, v in batch.items()} if from_numpy else dict(batch)
        check_columns(columns.keys(), self.input_columns(), self.name)
        out = self.process(columns, rank, indices)
        if from_numpy:
            # Ray Data's map_batches replaces the batch with what the function returns (Dataset.map merges),
            # so a step that keeps its rows hands the input columns back along with its own
            converted = {k: to_numpy_column(list(v)) for k, v in out.items()}
            return converted if self.changes_row_count else {**batch, **converted}
        return out

    # ---- pickling and fingerprints ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = {}  # never ship weights to workers or into fingerprints
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def describe(self) -> dict[str, Any]:
        """What identifies this step in a recipe manifest: class, version, config, model revision."""
        return {
            "step": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": self.version,
            "config": _canonical(self.config),
            "revision": self.resolved_revision(),
        }

    def fingerprint(self) -> str:
        payload = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def output_fingerprint(self, dataset_fingerprint: str) -> str:
        """The fingerprint of this step's output over a dataset with ``dataset_fingerprint``."""
        return hashlib.sha256(f"{dataset_fingerprint}:{self.fingerprint()}".encode()).hexdigest()[:32]

    def apply(
        self,
        dataset,
        *,
        batch_size: int = 64,
        num_proc: int | None = None,
        rank: int | None = None,
        function: Any = None,
        **map_kwargs: Any,
    ):
        """Run the step over a ``datasets.Dataset`` with a fingerprint derived from the step.

        ``num_proc=k`` runs k workers, each given its rank (one GPU each for model steps); ``rank``
        gives a single-process run the rank of the worker it runs in. ``function(batch, indices)``,
        when given, is mapped instead of the step: an engine that computed the step's outputs
        elsewhere (Ray) replays them through it, so they are encoded and cached as the step's own.
        """
        check_columns(dataset.column_names, self.input_columns(), self.name)
        if self.changes_row_count:
            map_kwargs.setdefault("remove_columns", dataset.column_names)
        parallel = num_proc is not None and num_proc > 1
        return dataset.map(
            _IndexedStep(self, rank) if function is None else function,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            with_rank=parallel and function is None,
            num_proc=num_proc,
            new_fingerprint=self.output_fingerprint(dataset._fingerprint),
            desc=map_kwargs.pop("desc", self.name),
            **map_kwargs,
        )


def make_fork_safe() -> None:
    """Call first thing in a forked worker: run torch on one CPU thread there.

    GNU OpenMP's thread pool (torch's CPU parallelism) does not survive ``fork``: a worker forked
    after the parent ran any torch operation hangs on its first parallel op unless it stays on one
    thread. Workers are one per GPU or one per core, so one CPU thread each is what they want anyway.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class _IndexedStep:
    """Adapter that hands ``Dataset.map``'s row indices (and the worker's rank) to a step, so errors name
    dataset rows; ``rank`` is the rank of a single-process run, which ``Dataset.map`` does not pass."""

    def __init__(self, step: Step, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank
        self.parent_pid = os.getpid()

    def __call__(self, batch: Batch, indices: list[int], rank: int | None = None) -> Batch:
        if os.getpid() != self.parent_pid:  # a Dataset.map(num_proc=k) worker
            make_fork_safe()
        return self.step(batch, rank=self.rank if rank is None else rank, indices=indices)
