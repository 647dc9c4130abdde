"""Rows and batches: the row errors steps raise, naming a row, numpy/Python conversion, and the row-by-row
fallback behind ``on_row_error="drop"``.

A batch is a dict of equal-length column lists. ``Dataset.map`` hands steps Python lists; Ray Data hands
them numpy arrays (``to_python`` / ``to_numpy_column`` convert). ``process_rows`` is what ``Step.__call__``
runs instead of ``process`` when rows may fail: the good rows get exactly the outputs a clean batch gives
them, and each bad row is kept with its message rather than stopping the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hfpref.core import columns
from hfpref.core.errors import UserError

if TYPE_CHECKING:
    from hfpref.core.step import Step

Batch = dict[str, list]

ROW_ERROR = columns.ROW_ERROR  # the RowError message of a row a step dropped (on_row_error="drop")
DROP_REASON = columns.DROP_REASON
ROW_ERROR_REASON = "row_error"  # the drop_reason such a row carries

# one output row of ``process_rows``: (input row or -1, the output batch it comes from, its position in
# that batch), or (input row, None, the row's error message) for a row that failed now or earlier
Piece = tuple[int, Batch | None, Any]


class MissingColumnError(UserError):
    """A step's input column is absent from the batch or dataset."""


class RowError(UserError):
    """A row holds a value a step cannot work with; the message names the row, column and value."""


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


def n_rows(batch: Mapping[str, Sequence]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


# ---- numpy (Ray Data) <-> Python ---------------------------------------------------------------


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


# ---- rows that fail (on_row_error) -------------------------------------------------------------


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


def process_rows(step: Step, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
    """``step.process`` that keeps going past bad rows.

    Rows an earlier step dropped (``row_error`` set) are not processed again. With
    ``on_row_error="drop"`` a batch that raises ``RowError`` is retried row by row, so the good rows
    get exactly the outputs they would get in a clean batch, and each bad row gets its step outputs
    None (input columns it would replace keep their input values), ``drop_reason`` "row_error" and
    the message in ``row_error``. A step that changes the row count writes one such row per bad row.
    """
    n = n_rows(batch)
    prior = batch.get(ROW_ERROR) or [None] * n
    dropping = getattr(step.config, "on_row_error", "raise") == "drop"
    todo = [i for i in range(n) if prior[i] is None]
    outputs, pieces = _process_good_rows(step, batch, rank, indices, todo, dropping)
    pieces += [(i, None, prior[i]) for i in range(n) if prior[i] is not None]
    if not step.changes_row_count:
        pieces.sort(key=lambda piece: piece[0])  # one output row per input row, in input order
    names = _output_names(step, outputs, batch, rank)
    if dropping or ROW_ERROR in batch:
        names += [c for c in (DROP_REASON, ROW_ERROR) if c not in names]
    out: Batch = {name: [] for name in names}
    for i, source, where in pieces:
        for name in names:
            out[name].append(_cell(batch, name, i, source, where))
    return out


def _process_subset(
    step: Step, batch: Batch, rows: list[int], rank: int | None, indices: list[int] | None
) -> Batch:
    if len(rows) == n_rows(batch):  # the whole batch: no copy
        return step.process(batch, rank, indices)
    sub = {k: [v[i] for i in rows] for k, v in batch.items()}
    return step.process(sub, rank, None if indices is None else [indices[i] for i in rows])


def _process_good_rows(
    step: Step, batch: Batch, rank: int | None, indices: list[int] | None, todo: list[int], dropping: bool
) -> tuple[list[Batch], list[Piece]]:
    """The rows ``todo`` processed together, or (when that raises ``RowError`` and ``dropping``) one by
    one: the output batches, and one piece per output row (bad rows as error pieces)."""
    if not todo:
        return [], []
    try:
        good = _process_subset(step, batch, todo, rank, indices)
    except RowError:
        if not dropping:
            raise
    else:
        if step.changes_row_count:
            # the step made its own rows; all that is left is one row per earlier-dropped input row
            return [good], [(-1, good, j) for j in range(n_rows(good))]
        return [good], [(i, good, j) for j, i in enumerate(todo)]
    outputs: list[Batch] = []
    pieces: list[Piece] = []
    for i in todo:
        try:
            out_i = _process_subset(step, batch, [i], rank, indices)
        except RowError as err:
            pieces.append((i, None, f"{step.name}: {err}"))
            continue
        outputs.append(out_i)
        pieces += [(i, out_i, j) for j in range(n_rows(out_i))]
    return outputs, pieces


def _output_names(step: Step, outputs: list[Batch], batch: Batch, rank: int | None) -> list[str]:
    """The columns the step returns: those of a processed batch, else of an empty batch."""
    for output in outputs:
        return list(output)
    try:
        return list(step.process({k: [] for k in batch}, rank, []))
    except Exception:  # a step that cannot take an empty batch: its declared outputs
        return list(step.output_columns())


def _cell(batch: Batch, name: str, i: int, source: Batch | None, where: Any) -> Any:
    """Column ``name`` of one output row (a piece ``(i, source, where)`` of ``process_rows``)."""
    if source is not None:
        if name in source:
            return source[name][where]
        if name == ROW_ERROR:
            return None
        # an input column the step passes through (a made row, i < 0, has no input row)
        return batch[name][i] if name in batch and i >= 0 else None
    if name == DROP_REASON:
        return ROW_ERROR_REASON
    if name == ROW_ERROR:
        return where
    # the bad row's own values where the step keeps or replaces an input column
    return batch[name][i] if name in batch else None
