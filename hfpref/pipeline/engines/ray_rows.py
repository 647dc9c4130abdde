"""The Ray side of the Ray engine's rows: how a batch is decoded and computed in a Ray worker, and how its
outputs come back to the driver and are replayed into ``datasets`` (``hfpref.pipeline.engines.ray_engine``
plans and drives the executions).

Exactness. Each Ray batch is decoded by ``datasets``' own Python formatter with the dataset's features,
so a step sees exactly the values ``Dataset.map`` gives it (Ray's numpy batches would not: ``Json``
columns arrive as undecoded strings, integers in structs with nulls as floats). The step's outputs
travel back pickled, one row at a time, and are written by ``Dataset.map`` replaying them
(``Step.apply(..., function=...)``): encoded, typed and cached exactly as the local engine writes
them, under the same fingerprints (Arrow's type inference on Ray's side would vary from batch to
batch, e.g. an all-None batch). Blocks hold whole batches of the local engine's batch size, so even a
model step batches the same rows together as it does locally.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any

from hfpref.core.step import Batch, Step

ROW_COLUMN = "_hfpref_row"  # dataset row index of each Ray row: the key outputs are matched back by
OUTPUT_COLUMN = "_hfpref_output"  # one pickled {column: value} dict per row
ERROR_COLUMN = "_hfpref_error"  # in a block whose step raised: the exception, pickled


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


def pickled_error(error: Exception) -> bytes:
    """``error`` pickled, with the worker's traceback as a note, for the driver to raise as it is."""
    if hasattr(error, "add_note"):
        error.add_note("(raised in a Ray worker)\n" + "".join(traceback.format_exception(error)))
    try:
        return pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot be pickled travels as Ray's own error
        raise error from None


def error_block(row: int, error: Exception) -> Any:
    """A one-row output block carrying ``error`` (``pickled_error``)."""
    import pyarrow as pa

    payload = pickled_error(error)
    return pa.table(
        {
            ROW_COLUMN: pa.array([row], pa.int64()),
            OUTPUT_COLUMN: pa.array([b""], pa.binary()),
            ERROR_COLUMN: pa.array([payload], pa.binary()),
        }
    )


class AllSelectors:
    """Every pair strategy's selector over one batch: ``{strategy: [its output row dict, ...]}``.

    A row's dicts travel in one pickle, so the texts the strategies share (the prompt, the responses they
    pick) are sent and held once.
    """

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

    ``outputs`` maps row index to its decoded ``{column: value}``, or with ``key``, to an ``AllSelectors``
    row (``{strategy: {column: value}}``) of which ``key`` picks one strategy's; ``start`` is the shard's
    first row.
    """

    def __init__(self, outputs: dict[int, Any], start: int, key: str | None = None) -> None:
        self.outputs = outputs
        self.start = start
        self.key = key

    def __call__(self, batch: Batch, indices: list[int]) -> Batch:
        rows = [self.outputs[self.start + i] for i in indices]
        if self.key is not None:
            rows = [row[self.key] for row in rows]
        return {column: [row[column] for row in rows] for column in rows[0]} if rows else {}


def int64_array(values: range) -> Any:
    """Row indices as an Arrow int64 array (the ``ROW_COLUMN`` of a block sent to Ray)."""
    import pyarrow as pa

    return pa.array(values, pa.int64())


__all__ = [
    "ERROR_COLUMN",
    "OUTPUT_COLUMN",
    "ROW_COLUMN",
    "AllSelectors",
    "RayBatches",
    "Replay",
    "error_block",
    "int64_array",
    "pickled_error",
]
