"""Each generator's capability measured on the candidates it wrote, as ``GeneratorDeltaTagger`` takes it.

``measure_capabilities`` (what ``capabilities: measured`` runs): IFEval strict accuracy with a Wilson
interval when the candidates carry verdicts, else the mean reward with a bootstrap interval, labelled
"measured" with the measure's name. ``measure_generator_capabilities``: the plain mean reward per generator.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.step import MissingColumnError, RowError

MEASURED = "measured"
MEASURES = ("auto", "ifeval_prompt_level", "ifeval_instruction_level", "mean_reward")


def measure_generator_capabilities(
    candidates: datasets.Dataset | Mapping[str, Sequence],
    *,
    rewards_column: str = C.REWARDS,
    generators_column: str = C.GENERATORS,
) -> dict[str, float]:
    """Each generator's capability measured on the data: the mean reward of its responses.

    ``candidates``: candidates rows (per-response ``rewards`` and ``generators`` lists). Non-finite or
    None rewards (failed scoring) are left out of the means, with a warning saying how many; a generator
    none of whose rewards is finite gets no capability. A None generator is skipped.
    """
    names = candidates.column_names if hasattr(candidates, "column_names") else list(candidates)
    missing = [c for c in (rewards_column, generators_column) if c not in names]
    if missing:
        raise MissingColumnError(
            f"measure_generator_capabilities needs {missing}; columns present: {sorted(names)}"
        )
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    skipped = 0
    for row, (rewards, generators) in enumerate(column_rows(candidates, rewards_column, generators_column)):
        if rewards is None or generators is None or len(rewards) != len(generators):
            raise RowError(
                f"measure_generator_capabilities: row {row} has {rewards_column}={rewards!r} and "
                f"{generators_column}={generators!r}, which are not aligned lists"
            )
        for reward, generator in zip(rewards, generators, strict=True):
            if generator is None:
                continue
            if reward is None or not math.isfinite(reward):
                skipped += 1
                continue
            sums[generator] += float(reward)
            counts[generator] += 1
    if skipped:
        warnings.warn(
            f"{skipped} non-finite or missing rewards were left out of the generator means", stacklevel=2
        )
    return {name: sums[name] / counts[name] for name in sorted(counts)}


def measure_capabilities(
    candidates: Any, *, measure: str = "auto", confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Each generator's capability measured on the candidates, with a confidence interval.

    ``measure``: ``ifeval_prompt_level`` / ``ifeval_instruction_level`` (``hfpref.steps.capabilities.generator_accuracy``:
    strict IFEval accuracy, Wilson / prompt-bootstrap interval — the very numbers the card's measured
    generator ranking shows), ``mean_reward`` (the mean of each generator's finite ``rewards``, with a
    percentile bootstrap interval over its responses, seeded), or ``auto``: prompt-level IFEval accuracy when
    the candidates have ``ifeval_strict`` verdicts, else the mean reward.

    Returns ``{"source": "measured", "measure", "capability_name", "confidence", "capabilities": {generator:
    value}, "intervals": {generator: [low, high]}, "responses": {generator: count}}``.
    """
    from hfpref.steps.capabilities import bootstrap_ratio_interval, generator_accuracy

    if measure not in MEASURES:
        raise UserError(f"capability measure {measure!r} is not one of {MEASURES}")
    names = candidates.column_names if hasattr(candidates, "column_names") else list(candidates)
    if measure == "auto":
        measure = "ifeval_prompt_level" if C.IFEVAL_STRICT in names else "mean_reward"
    table: dict[str, Any] = {"source": MEASURED, "measure": measure, "confidence": confidence}
    if measure.startswith("ifeval_"):
        level = measure[len("ifeval_") :]
        accuracy = generator_accuracy(candidates, confidence=confidence, seed=seed)
        table["capability_name"] = f"ifeval_{level}_strict_accuracy"
        table["capabilities"] = {a["generator"]: a[level] for a in accuracy}
        table["intervals"] = {a["generator"]: list(a[f"{level}_ci"]) for a in accuracy}
        table["responses"] = {a["generator"]: a["responses"] for a in accuracy}
        return table
    if C.REWARDS not in names or C.GENERATORS not in names:
        raise MissingColumnError(
            f"measuring capability as the mean reward needs {C.REWARDS!r} and {C.GENERATORS!r}; columns "
            f"present: {sorted(names)}"
        )
    rewards: dict[str, list[float]] = defaultdict(list)
    for row_rewards, generators in column_rows(candidates, C.REWARDS, C.GENERATORS):
        for reward, generator in zip(row_rewards or [], generators or [], strict=False):
            if generator is not None and reward is not None and math.isfinite(reward):
                rewards[generator].append(float(reward))
    table["capability_name"] = "mean_reward"
    table["capabilities"] = {g: float(np.mean(v)) for g, v in sorted(rewards.items())}
    table["intervals"] = {
        g: list(bootstrap_ratio_interval(np.asarray(v), np.ones(len(v)), confidence, seed=seed))
        for g, v in sorted(rewards.items())
    }
    table["responses"] = {g: len(v) for g, v in sorted(rewards.items())}
    return table


def column_rows(data: Any, *column_names: str) -> Iterable[tuple]:
    """The values of ``column_names`` row by row, from a ``Dataset`` (in batches) or a mapping of lists."""
    if isinstance(data, datasets.Dataset):
        for batch in data.select_columns(list(column_names)).iter(batch_size=1000):
            yield from zip(*(batch[c] for c in column_names), strict=True)
    else:
        yield from zip(*(data[c] for c in column_names), strict=True)


__all__ = ["MEASURED", "MEASURES", "column_rows", "measure_capabilities", "measure_generator_capabilities"]
