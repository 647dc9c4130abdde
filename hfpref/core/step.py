"""The transform protocol every curation step follows: the ``Step`` base class and its ``apply``.

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

Configs and their type checks live in ``hfpref.core.config``, row errors and the ``on_row_error``
fallback in ``hfpref.core.rows``; their names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hfpref.core.config import (
    ON_ROW_ERROR,
    RUNTIME,
    ConfigError,
    StepConfig,
    canonical,
    check_config_values,
    config_type_hints,
    config_values_problem,
    runtime_field,
    set_fields,
    type_name,
    type_problem,
)
from hfpref.core.errors import UserError
from hfpref.core.rows import (
    DROP_REASON,
    ROW_ERROR,
    ROW_ERROR_REASON,
    Batch,
    MissingColumnError,
    RowError,
    check_columns,
    process_rows,
    row_label,
    to_numpy_column,
    to_python,
    with_row_error_columns,
)


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
    # a step that runs a model: the engines give it one accelerator per worker (``gpus=``, Ray actors)
    uses_model: ClassVar[bool] = False

    def __init__(self, config: StepConfig | None = None, **overrides: Any) -> None:
        # every value a caller gives is checked against its field's annotation before the config is
        # built (its __post_init__ may trip over a wrong type with a less helpful message), so the Python
        # API refuses ``batch_size="64"`` as a recipe does, before any model loads
        where = f"{type(self).__name__} config"
        try:
            if config is None:
                check_config_values(self.config_class, overrides, where)
                config = self.config_class(**overrides)
            elif isinstance(config, Mapping):
                values = {**config, **overrides}
                check_config_values(self.config_class, values, where)
                config = self.config_class(**values)
            else:
                if isinstance(config, self.config_class):
                    check_config_values(self.config_class, {**set_fields(config), **overrides}, where)
                if overrides:
                    config = dataclasses.replace(config, **overrides)
        except ValueError as err:
            if isinstance(err, UserError):
                raise
            raise ConfigError(f"{where}: {err}") from err  # a __post_init__ range check: name the step
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

    def unload(self) -> None:
        """Forget loaded resources (models), so the next step has the memory; a later use loads again."""
        self._loaded.clear()

    def resolved_revision(self) -> str | None:
        """The exact revision (commit hash or content hash) of any model the step uses."""
        return None

    def output_features(self, features: Any) -> Any:
        """The ``datasets.Features`` of this step's output over input ``features``, or None to let
        ``Dataset.map`` infer them from the first batch. Steps whose outputs can be all None in a batch
        (rows without a value) declare them, so the types do not depend on which rows come first."""
        return None

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        raise NotImplementedError

    def preflight(self) -> None:
        """Checks that need more than the config (a model's context length ...) but no weights, run by a
        recipe before its first step; raise a ``UserError`` subclass. Nothing by default."""

    def __call__(self, batch: Mapping[str, Any], rank: int | None = None, indices: list[int] | None = None):
        from_numpy = any(isinstance(v, np.ndarray) for v in batch.values())
        columns: Batch = {k: to_python(v) for k, v in batch.items()} if from_numpy else dict(batch)
        check_columns(columns.keys(), self.input_columns(), self.name)
        if getattr(self.config, "on_row_error", "raise") == "drop" or ROW_ERROR in columns:
            out = process_rows(self, columns, rank, indices)
        else:
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
        config = canonical(self.config)
        if config.get("on_row_error") == "raise":
            # the default changes nothing in the output: fingerprints stay those of steps before the field
            config.pop("on_row_error")
        return {
            "step": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": self.version,
            "config": config,
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
        # of the input as given (resume looks it up)
        fingerprint = self.output_fingerprint(dataset._fingerprint)
        features = self.output_features(dataset.features)
        if features is not None:
            map_kwargs.setdefault("features", features)
        if getattr(self.config, "on_row_error", "raise") == "drop":
            dataset = with_row_error_columns(dataset)
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
            new_fingerprint=fingerprint,
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


# names defined in config.py and rows.py, importable from here as before the split
__all__ = [
    "DROP_REASON",
    "ON_ROW_ERROR",
    "ROW_ERROR",
    "ROW_ERROR_REASON",
    "RUNTIME",
    "Batch",
    "ConfigError",
    "MissingColumnError",
    "RowError",
    "Step",
    "StepConfig",
    "canonical",
    "check_columns",
    "check_config_values",
    "config_type_hints",
    "config_values_problem",
    "make_fork_safe",
    "row_label",
    "runtime_field",
    "set_fields",
    "to_numpy_column",
    "to_python",
    "type_name",
    "type_problem",
    "with_row_error_columns",
]
