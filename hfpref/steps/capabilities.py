"""Generator capability measured from the data: each generator's IFEval accuracy on the candidates.

``generator_accuracy(dataset)`` reads the candidates' ``generators`` and ``ifeval_strict`` columns (or
``correctness`` when there are no per-instruction verdicts) as Arrow columns and returns, per generator,
IFEval's two strict accuracies (Zhou et al. 2023, §3):

* prompt-level: the share of its graded responses that meet every instruction of their prompt, with a
  Wilson score interval (responses to different prompts are independent trials);
* instruction-level: the share of all instructions over its graded responses that are met, with a
  percentile bootstrap interval that resamples *prompts* (the instructions of one response are not
  independent, so a per-instruction Wilson interval would be too narrow); seeded, so it is reproducible.

``ranking(accuracies)`` orders generators strongest first: prompt-level accuracy, then instruction-level,
then name. A response whose verdicts are None (a missing response) is not graded and not counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hfpref.core import columns as C
from hfpref.core.errors import UserError

DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 2000
# indices drawn at once by the bootstrap (bounds its memory to ~16 MB per array, whatever the size)
BOOTSTRAP_BLOCK_VALUES = 1 << 21


class CapabilityError(UserError):
    """Candidates from which no generator accuracy can be measured."""


def wilson_interval(
    successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) without trials."""
    if trials == 0:
        return math.nan, math.nan
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ratio_interval(
    numerators: np.ndarray,
    denominators: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators), resampling the units."""
    n = len(numerators)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    # resamples drawn in blocks of rows: one (resamples, n) index matrix is resamples * n * 8 bytes (2.2 GB
    # for 2,000 resamples of 138k responses, twice more for the gathered values); drawing it row block by
    # row block yields the very same indices from the generator, so the interval is unchanged
    block = max(1, BOOTSTRAP_BLOCK_VALUES // n)
    ratios = np.empty(resamples, dtype=np.float64)
    for first in range(0, resamples, block):
        picks = rng.integers(0, n, size=(min(block, resamples - first), n))
        ratios[first : first + len(picks)] = numerators[picks].sum(axis=1) / np.maximum(
            denominators[picks].sum(axis=1), 1
        )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1 - alpha])
    return float(low), float(high)


def _per_response_columns(dataset) -> tuple[list[str | None], np.ndarray, np.ndarray, str]:
    """Flattened (generator, instructions met, instructions) per graded response, and the column used."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset, "data") else pa.table(dict(dataset))
    names = table.column_names
    if C.GENERATORS not in names:
        raise CapabilityError(
            f"measuring generator accuracy needs a {C.GENERATORS!r} column; the candidates have {names}"
        )
    generators = pc.list_flatten(table.column(C.GENERATORS).combine_chunks())
    if C.IFEVAL_STRICT in names:
        verdicts = pc.list_flatten(table.column(C.IFEVAL_STRICT).combine_chunks())  # one list per response
        lengths = pc.list_value_length(verdicts)
        flat = pc.list_flatten(verdicts)
        parents = pc.list_parent_indices(verdicts).to_numpy()
        met = np.bincount(
            parents, weights=flat.cast(pa.int64()).fill_null(0).to_numpy(), minlength=len(verdicts)
        )
        valid = lengths.is_valid().to_numpy(zero_copy_only=False) & (lengths.fill_null(0).to_numpy() > 0)
        total = lengths.fill_null(0).to_numpy().astype(np.float64)
        source = C.IFEVAL_STRICT
    elif C.CORRECTNESS in names:
        correctness = pc.list_flatten(table.column(C.CORRECTNESS).combine_chunks())
        values = correctness.fill_null(math.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        valid = np.isfinite(values)
        # without verdicts, a response counts as one unit of "instructions", its fraction met
        met, total = np.where(valid, values, 0.0), np.ones(len(values))
        source = C.CORRECTNESS
    else:
        raise CapabilityError(
            f"measuring generator accuracy needs {C.IFEVAL_STRICT!r} or {C.CORRECTNESS!r} (add an "
            f"IFEvalVerifier step before pair selection); the candidates have {names}"
        )
    if len(generators) != len(valid):
        raise CapabilityError(
            f"{C.GENERATORS!r} and {source!r} are not aligned: {len(generators)} generators for "
            f"{len(valid)} graded responses"
        )
    keep = np.flatnonzero(valid)
    gens = generators.to_pylist()
    return [gens[k] for k in keep], np.asarray(met, dtype=np.float64)[keep], total[keep], source


def generator_accuracy(
    dataset,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per generator (strongest first, see ``ranking``), its measured strict IFEval accuracy.

    ``dataset``: candidates (``datasets.Dataset`` or a dict of columns) with ``generators`` and
    ``ifeval_strict`` (per response, per instruction) or ``correctness``. Each entry: ``generator``,
    ``responses`` (graded), ``prompt_level`` and ``prompt_level_ci`` ([low, high], Wilson),
    ``instructions``, ``instruction_level`` and ``instruction_level_ci`` (prompt bootstrap), ``source``
    (the column measured), ``confidence``. With ``correctness`` only, prompt-level counts responses with
    correctness 1 and instruction-level is the mean correctness.
    """
    generators, met, total, source = _per_response_columns(dataset)
    if not generators:
        raise CapabilityError(f"no graded response in {source!r}: nothing to measure generator accuracy on")
    by_generator: dict[str, list[int]] = {}
    for k, name in enumerate(generators):
        by_generator.setdefault(str(name), []).append(k)
    out = []
    for name, rows in by_generator.items():
        index = np.asarray(rows)
        m, t = met[index], total[index]
        passed = int(np.sum(m >= t - 1e-9))
        responses = len(index)
        out.append(
            {
                "generator": name,
                "responses": responses,
                "prompt_level": passed / responses,
                "prompt_level_ci": list(wilson_interval(passed, responses, confidence)),
                "instructions": int(t.sum()) if source == C.IFEVAL_STRICT else None,
                "instruction_level": float(m.sum() / t.sum()),
                "instruction_level_ci": list(bootstrap_ratio_interval(m, t, confidence, resamples, seed)),
                "source": source,
                "confidence": confidence,
            }
        )
    order = ranking(out)
    return sorted(out, key=lambda entry: order.index(entry["generator"]))


def ranking(accuracies: Sequence[Mapping[str, Any]]) -> list[str]:
    """Generator names, strongest first: prompt-level accuracy, then instruction-level, then name."""
    ordered = sorted(accuracies, key=lambda a: (-a["prompt_level"], -a["instruction_level"], a["generator"]))
    return [a["generator"] for a in ordered]
