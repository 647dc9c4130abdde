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
import numbers
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from hfpref.core import columns
from hfpref.core.errors import UserError

Batch = dict[str, list]


class MissingColumnError(UserError):
    """A step's input column is absent from the batch or dataset."""


class RowError(UserError):
    """A row holds a value a step cannot work with; the message names the row, column and value."""


class ConfigError(UserError):
    """A step config field with a value of the wrong type (or out of range); names step, field, value, type."""


ROW_ERROR = columns.ROW_ERROR  # the RowError message of a row a step dropped (on_row_error="drop"), else None
DROP_REASON = columns.DROP_REASON
ROW_ERROR_REASON = "row_error"  # the drop_reason such a row carries
ON_ROW_ERROR = ("raise", "drop")


@dataclasses.dataclass
class StepConfig:
    """Base class for step configs; subclasses add their own fields (all JSON-serialisable).

    ``on_row_error`` (keyword-only, every step): "raise" (default) stops the run at a row the step cannot
    work with (a ``RowError``); "drop" keeps that row with the step's outputs None, ``drop_reason``
    "row_error" and the message in a ``row_error`` column, so one bad row does not kill a long run and
    nothing disappears silently (see ``Step.__call__``).
    """

    on_row_error: Literal["raise", "drop"] = dataclasses.field(default="raise", kw_only=True)


# ---- config field types ------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """An annotation as a reader writes it: ``int``, ``str | None``, ``list[str]``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _number_hint(value: Any, annotation: Any) -> str:
    """Why a quoted number is refused, and the fix (YAML reads ``5e-7``, without a dot, as a string)."""
    if not isinstance(value, str) or annotation not in (int, float):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if annotation is float and "e" in value.lower() and "." not in value:
        return f"; YAML reads {value} as a string: write it with a dot, e.g. {value.lower().replace('e', '.0e', 1)}"
    return f"; write the number without quotes: {value}"


def type_problem(value: Any, annotation: Any, where: str) -> str | None:
    """Why ``value`` does not fit ``annotation`` (a message starting with ``where``), or None when it fits.

    Supports ``int``, ``float`` (accepts an int), ``bool``, ``str``, ``X | None`` and other unions,
    ``list[X]`` (a tuple too), ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]`` and nested
    dataclasses (an instance, or a mapping of its fields); other annotations accept anything.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    got = f"got {type(value).__name__} {value!r}"
    if annotation is Any or annotation is object:
        return None
    if annotation is type(None) or annotation is None:
        return None if value is None else f"{where}: expected None, {got}"
    if origin in (typing.Union, types.UnionType):
        if any(type_problem(value, a, where) is None for a in args):
            return None
        # one non-None member (``X | None``): its own message says more, e.g. which list item is wrong
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and value is not None:
            problem = type_problem(value, members[0], where)
            return problem.replace(
                f"expected {type_name(members[0])}", f"expected {type_name(annotation)}", 1
            )
        return f"{where}: expected {type_name(annotation)}, {got}{_number_hint(value, members[0])}"
    if origin is Literal:
        # ``True == 1``: compare the type too, so ``1`` is not accepted for ``Literal[True]``
        if any(value == a and type(value) is type(a) for a in args):
            return None
        return f"{where}: expected {type_name(annotation)}, {got}"
    if origin in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return f"{where}: expected {type_name(annotation)}, {got}"
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(value) != len(args):
                return f"{where}: expected {type_name(annotation)} ({len(args)} items), {got}"
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        for i, (item, item_type) in enumerate(zip(value, item_types, strict=True)):
            problem = type_problem(item, item_type, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            return f"{where}: expected {type_name(annotation)}, {got}"
        key_type, item_type = args if len(args) == 2 else (Any, Any)
        for key, item in value.items():
            problem = type_problem(key, key_type, f"{where} key {key!r}") or type_problem(
                item, item_type, f"{where}[{key!r}]"
            )
            if problem:
                return problem
        return None
    if origin is not None:  # another generic (Callable[...], type[...]): not checked
        return None
    if annotation is bool:
        return (
            None if isinstance(value, (bool, np.bool_)) else f"{where}: expected bool (true or false), {got}"
        )
    if annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return None
        return f"{where}: expected int, {got}{_number_hint(value, int)}"
    if annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return None
        return f"{where}: expected float, {got}{_number_hint(value, float)}"
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return None
        if isinstance(value, Mapping):
            return config_values_problem(annotation, value, where)
        return f"{where}: expected {annotation.__name__} (or a mapping of its fields), {got}"
    if isinstance(annotation, type):
        return None if isinstance(value, annotation) else f"{where}: expected {type_name(annotation)}, {got}"
    return None  # a string annotation that did not resolve, a TypeVar ...: not checked


def config_type_hints(config_class: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass (fields whose annotation does not resolve,
    e.g. a name imported only for type checkers, are left out rather than failing)."""
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # resolve field by field, in the module each class was defined in
        hints = {}
        for klass in reversed(config_class.__mro__):
            namespace = vars(sys.modules.get(klass.__module__, typing))
            for name, annotation in getattr(klass, "__annotations__", {}).items():
                try:
                    hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
                except Exception:
                    hints.pop(name, None)
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in hints.items() if k in names}


def config_values_problem(config_class: type, values: Mapping[str, Any], where: str) -> str | None:
    """The first unknown field or wrongly typed value among ``values`` for ``config_class``, or None."""
    known = [f.name for f in dataclasses.fields(config_class) if f.init]
    known.sort(key=lambda name: name == "on_row_error")  # the step's own fields first
    for name in values:
        if name not in known:
            return (
                f"{where}: unknown config field {name!r} for {config_class.__name__}; known fields: {known}"
            )
    hints = config_type_hints(config_class)
    for name, value in values.items():
        if name in hints:
            problem = type_problem(value, hints[name], f"{where}.{name}")
            if problem:
                return problem
    return None


def check_config_values(config_class: type, values: Mapping[str, Any], where: str) -> None:
    """Raise ``ConfigError`` naming step, field, value and expected type for an unknown field or a value
    whose type does not match the field's annotation; run before the config is built, so a recipe with
    ``batch_size: "64"`` fails at once instead of after hours of earlier steps."""
    problem = config_values_problem(config_class, values, where)
    if problem:
        raise ConfigError(problem)


def set_fields(config: Any) -> dict[str, Any]:
    """The fields of a config instance that differ from their defaults (what a user set)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            out[field.name] = value
            continue
        try:
            same = bool(value == default)
        except Exception:  # e.g. numpy arrays
            same = False
        if not same:
            out[field.name] = value
    return out


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


RUNTIME = "runtime"  # dataclass field metadata key: the field changes speed or transport, never results


def runtime_field(default: Any = None, **kwargs: Any) -> Any:
    """A config field that changes how fast (or where) a step runs but not what it writes: devices, batch
    budgets, timeouts, endpoints. ``Step.describe`` leaves such fields out, at any depth, so changing one
    keeps the step's fingerprint and its cached output."""
    return dataclasses.field(default=default, metadata={RUNTIME: True}, **kwargs)


def _canonical(value: Any) -> Any:
    """A JSON-serialisable, order-stable form of a config value, for hashing."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get(RUNTIME)
        }
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
            out = self._process_rows(columns, rank, indices)
        else:
            out = self.process(columns, rank, indices)
        if from_numpy:
            # Ray Data's map_batches replaces the batch with what the function returns (Dataset.map merges),
            # so a step that keeps its rows hands the input columns back along with its own
            converted = {k: to_numpy_column(list(v)) for k, v in out.items()}
            return converted if self.changes_row_count else {**batch, **converted}
        return out

    # ---- rows that fail (on_row_error) -----------------------------------------------------
    def _process_rows(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        """``process`` that keeps going past bad rows.

        Rows an earlier step dropped (``row_error`` set) are not processed again. With
        ``on_row_error="drop"`` a batch that raises ``RowError`` is retried row by row, so the good rows
        get exactly the outputs they would get in a clean batch, and each bad row gets its step outputs
        None (input columns it would replace keep their input values), ``drop_reason`` "row_error" and
        the message in ``row_error``. A step that changes the row count writes one such row per bad row.
        """
        n = len(next(iter(batch.values()))) if batch else 0
        prior = batch.get(ROW_ERROR) or [None] * n
        dropping = getattr(self.config, "on_row_error", "raise") == "drop"
        todo = [i for i in range(n) if prior[i] is None]
        # per output row: (input row, output batch, position in it), or (input row, None, message)
        pieces: list[tuple[int, Batch | None, Any]] = []

        def run(rows: list[int]) -> Batch:
            if len(rows) == n:  # the whole batch: no copy
                return self.process(batch, rank, indices)
            sub = {k: [v[i] for i in rows] for k, v in batch.items()}
            return self.process(sub, rank, None if indices is None else [indices[i] for i in rows])

        good: Batch | None = None
        if todo:
            try:
                good = run(todo)
            except RowError:
                if not dropping:
                    raise
        outputs: list[Batch] = []
        if good is not None:
            outputs.append(good)
            if self.changes_row_count:
                # the step made its own rows; all that is left is one row per earlier-dropped input row
                pieces = [(-1, good, j) for j in range(_n_rows(good))]
            else:
                pieces = [(i, good, j) for j, i in enumerate(todo)]
        elif todo:
            for i in todo:
                try:
                    out_i = run([i])
                except RowError as err:
                    pieces.append((i, None, f"{self.name}: {err}"))
                    continue
                outputs.append(out_i)
                pieces += [(i, out_i, j) for j in range(_n_rows(out_i))]
        for i in range(n):
            if prior[i] is not None:
                pieces.append((i, None, prior[i]))
        if not self.changes_row_count:
            pieces.sort(key=lambda piece: piece[0])  # one output row per input row, in input order
        names = self._output_names(outputs, batch, rank)
        if dropping or ROW_ERROR in batch:
            names += [c for c in (DROP_REASON, ROW_ERROR) if c not in names]
        out: Batch = {name: [] for name in names}
        for i, source, where in pieces:
            for name in names:
                if source is not None:
                    if name in source:
                        value = source[name][where]
                    elif name == DROP_REASON:
                        value = batch[DROP_REASON][i] if DROP_REASON in batch and i >= 0 else None
                    elif name == ROW_ERROR:
                        value = None
                    else:
                        value = batch[name][i] if name in batch and i >= 0 else None
                elif name == DROP_REASON:
                    value = ROW_ERROR_REASON
                elif name == ROW_ERROR:
                    value = where
                else:  # the bad row's own values where the step keeps or replaces an input column
                    value = batch[name][i] if name in batch else None
                out[name].append(value)
        return out

    def _output_names(self, outputs: list[Batch], batch: Batch, rank: int | None) -> list[str]:
        """The columns this step returns: those of a processed batch, else of an empty batch."""
        for output in outputs:
            return list(output)
        try:
            return list(self.process({k: [] for k in batch}, rank, []))
        except Exception:  # a step that cannot take an empty batch: its declared outputs
            return list(self.output_columns())

    # ---- pickling and fingerprints ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = {}  # never ship weights to workers or into fingerprints
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def describe(self) -> dict[str, Any]:
        """What identifies this step in a recipe manifest: class, version, config, model revision."""
        config = _canonical(self.config)
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


def with_row_error_columns(dataset):
    """``dataset`` with string columns ``row_error`` and ``drop_reason`` (all None) where it lacks them.

    ``Dataset.map`` fixes a new column's type from the first batch it writes; a first batch without a
    failed row would make these columns null-typed, unable to hold a message later. An input column of
    the same name gives its type to the output instead."""
    import datasets

    for name in (ROW_ERROR, DROP_REASON):
        if name not in dataset.column_names:
            dataset = dataset.add_column(name, [None] * len(dataset), feature=datasets.Value("string"))
    return dataset


def _n_rows(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


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
