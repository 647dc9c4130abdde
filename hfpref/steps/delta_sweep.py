"""Generator-delta sweeps ("Decomposing the Delta", arXiv 2604.08723): datasets at controlled generator delta.

The paper varies the *generator-level delta* — the capability gap between the model that wrote the chosen
response and the model that wrote the rejected one — by scale within a family (Qwen2.5 32B chosen against
14B, 7B, 1.5B, 0.5B rejected) and across families at matched capability, and compares the datasets by
training on each. A sweep builds those datasets from one candidates set:

* one **level** per rejected generator: every pair's chosen response is the ``chosen`` generator's response
  to the prompt and its rejected response is that level's generator's response to the same prompt;
* the levels share **the same prompts and the same size**: the prompts where the chosen generator and every
  level's generator have a response (not None, not screened out) are intersected, and a seeded subset of
  ``size`` of them is drawn once (``size: null`` keeps them all), so only the generator delta varies;
* **ties and inversions are kept**: as in the paper's generator-level design the pair's direction is set by
  the generators (chosen = the stronger generator's response) regardless of the per-prompt reward, so a
  prompt where both responses have the same reward (a tie) or the weaker one scored higher (an inversion)
  still gives a pair. ``reward_margin`` is recorded either way (and counted per level), so users can filter
  (e.g. ``reward_margin > 0``) without changing the design;
* every pair is tagged with ``chosen_capability``, ``rejected_capability``, ``generator_delta`` (their
  difference) and ``same_source`` (``hfpref.steps.generator_delta``'s columns) and ``sweep``/``sweep_level``.

Capabilities are *measured* on the candidates by default (``hfpref.steps.generator_delta.measure_capabilities``:
IFEval strict prompt-level accuracy when the candidates carry verdicts, else the mean reward), with their
confidence intervals, or *given* as a table.

Columns of a level's pairs (DESIGN.md's pair columns plus): ``pair_strategy`` (``delta_sweep``), ``sweep``,
``sweep_level``, ``same_source``, ``chosen_capability``, ``rejected_capability``, ``generator_delta``, and
the candidates' non-per-response columns (``key``, ``instruction_id_list``, ...).

``sweep_analysis(pairs_by_level, levels)`` is the table a reader of the paper wants: per level, generator
delta, mean sample delta (when a judge scored the pairs) and the reward margin's mean, ties and inversions.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hfpref.core import columns as C
from hfpref.core.columns import CHOSEN_CAPABILITY, GENERATOR_DELTA, REJECTED_CAPABILITY, SAME_SOURCE
from hfpref.core.errors import UserError

SWEEP = "sweep"
SWEEP_LEVEL = "sweep_level"
PAIR_STRATEGY = "delta_sweep"
LEVEL_VERSION = (
    "1"  # bump when the pairs a level holds change: cached levels (and their judged tags) are rebuilt
)
SAMPLE_DELTA = (
    "sample_delta"  # hfpref.steps.judges.quality.DELTA, spelled here so this module imports no judge
)
_MATRICES = {
    C.EDIT_DISTANCE: C.EDIT_DISTANCE_MATRIX,
    C.LOGP_DIFF: C.LOGP_DIFF_MATRIX,
    C.DCRM: C.DCRM_MATRIX,
}


class SweepError(UserError):
    """A sweep that cannot be built on the candidates (unknown generator, no common prompt, bad size)."""


def level_config_name(sweep: str, rejected: str) -> str:
    """The release config of one level: ``<sweep>-vs-<rejected generator>``, with characters a config name
    cannot hold replaced by ``-``."""
    return f"{sweep}-vs-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", rejected).strip("-.")


@dataclasses.dataclass
class SweepLevel:
    """One level of a sweep: its config name and rejected generator."""

    name: str
    rejected: str


@dataclasses.dataclass
class SweepPlan:
    """What a sweep drew: the levels, the common prompts (row positions in the candidates) and how many rows
    each reason excluded before the draw."""

    name: str
    chosen: str
    levels: list[SweepLevel]
    rows: list[int]  # candidates row positions of the drawn prompts, ascending
    common: int  # prompts with every response the sweep needs
    excluded: dict[
        str, int
    ]  # reason -> rows, counted in this order: missing_prompt, missing_chosen, missing_rejected
    size: int | None
    seed: int


def _response_index(
    responses: Sequence[Any] | None, generators: Sequence[Any] | None, name: str
) -> int | None:
    """Position of ``name``'s response in a row, or None when it has none (absent, screened out or None)."""
    if responses is None or generators is None:
        return None
    for k, generator in enumerate(generators):
        if generator == name and k < len(responses) and responses[k] is not None:
            return k
    return None


def plan_sweep(
    candidates: Any,
    *,
    name: str,
    chosen: str,
    rejected: Sequence[str],
    size: int | None = None,
    seed: int = 0,
    level_names: Sequence[str] | None = None,
) -> SweepPlan:
    """Intersect the prompts where ``chosen`` and every generator of ``rejected`` answered, then draw
    ``size`` of them with ``seed`` (``numpy.random.default_rng(seed).choice`` without replacement; kept in
    candidates order). ``size`` None keeps every common prompt; a size above the common count is an error
    naming the count."""
    from hfpref.steps.selection import prompt_is_missing

    if not rejected:
        raise SweepError(f"sweep {name!r}: 'rejected' must list at least one generator")
    if len(set(rejected)) != len(rejected):
        raise SweepError(f"sweep {name!r}: 'rejected' names a generator twice: {list(rejected)}")
    if chosen in rejected:
        raise SweepError(f"sweep {name!r}: the chosen generator {chosen!r} is also listed as rejected")
    names = level_names or [level_config_name(name, r) for r in rejected]
    if len(names) != len(rejected):
        raise SweepError(f"sweep {name!r}: {len(names)} level names for {len(rejected)} rejected generators")
    seen = set()
    for row in candidates.select_columns([C.GENERATORS]).iter(batch_size=1000):
        for generators in row[C.GENERATORS]:
            seen.update(g for g in generators or [] if g is not None)
    unknown = [g for g in [chosen, *rejected] if g not in seen]
    if unknown:
        raise SweepError(
            f"sweep {name!r}: generator(s) {unknown} wrote no response in the candidates; generators present: "
            f"{sorted(seen)}"
        )
    excluded = {"missing_prompt": 0, "missing_chosen": 0, "missing_rejected": 0}
    common: list[int] = []
    position = 0
    for batch in candidates.select_columns([C.PROMPT, C.RESPONSES, C.GENERATORS]).iter(batch_size=1000):
        for prompt, responses, generators in zip(
            batch[C.PROMPT], batch[C.RESPONSES], batch[C.GENERATORS], strict=True
        ):
            if prompt_is_missing(prompt):
                excluded["missing_prompt"] += 1
            elif _response_index(responses, generators, chosen) is None:
                excluded["missing_chosen"] += 1
            elif any(_response_index(responses, generators, r) is None for r in rejected):
                excluded["missing_rejected"] += 1
            else:
                common.append(position)
            position += 1
    if not common:
        raise SweepError(
            f"sweep {name!r}: no prompt has responses from {chosen!r} and every one of {list(rejected)} "
            f"(rows without them: {excluded})"
        )
    if size is not None and size > len(common):
        raise SweepError(
            f"sweep {name!r}: size {size} is more than the {len(common)} prompts every level shares; "
            f"use size: null (all {len(common)}) or a smaller size"
        )
    if size is None or size == len(common):
        rows = list(common)
    else:
        drawn = np.random.default_rng(seed).choice(len(common), size=size, replace=False)
        rows = [common[k] for k in sorted(drawn.tolist())]
    return SweepPlan(
        name=name,
        chosen=chosen,
        levels=[SweepLevel(n, r) for n, r in zip(names, rejected, strict=True)],
        rows=rows,
        common=len(common),
        excluded=excluded,
        size=size,
        seed=seed,
    )


def level_pairs(
    candidates: Any, plan: SweepPlan, level: SweepLevel, capabilities: Mapping[str, float] | None
) -> Any:
    """The pairs of one level (a ``datasets.Dataset``): chosen = the plan's chosen generator's response,
    rejected = the level's generator's, for every drawn prompt, in candidates order.

    Made by ``Dataset.map`` over the drawn rows with a fingerprint of the candidates' fingerprint and the
    level (rows, generators, capabilities), so the pair-level steps after it (a judge) are cache hits on a
    rerun."""
    import hashlib
    import json

    import datasets

    from hfpref.steps.pair_rows import NOT_PASSED_THROUGH, pair_column_features

    subset = candidates.select(plan.rows)
    passthrough = [
        c
        for c in subset.column_names
        if c not in NOT_PASSED_THROUGH and c not in (C.PROMPT, C.DROP_REASON) and c not in _MATRICES.values()
    ]
    a = None if capabilities is None else capabilities.get(plan.chosen)
    b = None if capabilities is None else capabilities.get(level.rejected)
    string, real = datasets.Value("string"), datasets.Value("float64")
    features = datasets.Features(
        {
            **pair_column_features(candidates.features[C.PROMPT], step="delta sweep"),
            C.PAIR_STRATEGY: string,
            SWEEP: string,
            SWEEP_LEVEL: string,
            SAME_SOURCE: datasets.Value("bool"),
            **{c: real for c in (CHOSEN_CAPABILITY, REJECTED_CAPABILITY, GENERATOR_DELTA)},
            **{c: candidates.features[c] for c in passthrough},
        }
    )

    def build(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in features}
        for r in range(len(batch[C.PROMPT])):
            responses, generators = batch[C.RESPONSES][r], batch[C.GENERATORS][r]
            i = _response_index(responses, generators, plan.chosen)
            j = _response_index(responses, generators, level.rejected)
            prompt = batch[C.PROMPT][r]
            rewards = batch[C.REWARDS][r] if C.REWARDS in batch else None
            reward_i = _finite(rewards[i]) if rewards is not None else None
            reward_j = _finite(rewards[j]) if rewards is not None else None
            out[C.PROMPT].append(prompt)
            for column, k in ((C.CHOSEN, i), (C.REJECTED, j)):
                text = responses[k]
                out[column].append(
                    [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
                )
            out[C.CHOSEN_INDEX].append(i)
            out[C.REJECTED_INDEX].append(j)
            out[C.CHOSEN_GENERATOR].append(plan.chosen)
            out[C.REJECTED_GENERATOR].append(level.rejected)
            out[C.REWARD_CHOSEN].append(reward_i)
            out[C.REWARD_REJECTED].append(reward_j)
            out[C.REWARD_MARGIN].append(None if reward_i is None or reward_j is None else reward_i - reward_j)
            for column, matrix_column in _MATRICES.items():
                matrix = batch[matrix_column][r] if matrix_column in batch else None
                out[column].append(None if matrix is None else _finite(matrix[i][j]))
            out[C.PAIR_STRATEGY].append(PAIR_STRATEGY)
            out[SWEEP].append(plan.name)
            out[SWEEP_LEVEL].append(level.name)
            out[SAME_SOURCE].append(plan.chosen == level.rejected)
            out[CHOSEN_CAPABILITY].append(a)
            out[REJECTED_CAPABILITY].append(b)
            out[GENERATOR_DELTA].append(None if a is None or b is None else a - b)
            for column in passthrough:
                out[column].append(batch[column][r])
        return out

    record = {
        "version": LEVEL_VERSION,
        "candidates": getattr(candidates, "_fingerprint", None),
        "rows": plan.rows,
        "sweep": plan.name,
        "chosen": plan.chosen,
        "level": [level.name, level.rejected],
        "capabilities": [a, b],
    }
    fingerprint = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]
    return subset.map(
        build,
        batched=True,
        remove_columns=subset.column_names,
        features=features,
        new_fingerprint=fingerprint,
        desc=f"sweep level {level.name}",
    )


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---- analysis ------------------------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(known)) if known else None


def level_row(pairs: Any, level: str) -> dict[str, Any]:
    """One level's line of the sweep analysis (see ``sweep_analysis``)."""
    names = pairs.column_names
    margins = list(pairs[C.REWARD_MARGIN]) if C.REWARD_MARGIN in names else []
    known = [m for m in margins if m is not None]
    deltas = list(pairs[GENERATOR_DELTA]) if GENERATOR_DELTA in names else []
    sample = list(pairs[SAMPLE_DELTA]) if SAMPLE_DELTA in names else []
    generators = list(pairs[C.REJECTED_GENERATOR]) if C.REJECTED_GENERATOR in names else []
    return {
        "config": level,
        "rejected_generator": generators[0] if generators and len(set(generators)) == 1 else None,
        "rows": len(pairs),
        "generator_delta": _mean(deltas),
        "sample_delta_mean": _mean(sample) if SAMPLE_DELTA in names else None,
        "sample_delta_known": sum(1 for v in sample if v is not None),
        "reward_margin_mean": _mean(known),
        "reward_ties": sum(1 for m in known if m == 0),
        "reward_inversions": sum(1 for m in known if m < 0),
        "reward_margin_missing": len(margins) - len(known),
    }


def sweep_analysis(pairs_by_level: Mapping[str, Any]) -> dict[str, Any]:
    """Per level (in the given order): rows, generator delta, mean sample delta (None without a judge),
    mean reward margin, ties (margin 0), inversions (margin < 0); and the Spearman correlation across
    levels of generator delta with mean sample delta and with mean reward margin (None with fewer than
    three levels or without the values): "do larger generator gaps give larger judged gaps?"."""
    rows = [level_row(pairs, name) for name, pairs in pairs_by_level.items()]
    return {
        "levels": rows,
        **{f"spearman_{k}": _spearman(rows, k) for k in ("sample_delta_mean", "reward_margin_mean")},
    }


def _spearman(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    pairs = [
        (r["generator_delta"], r[key])
        for r in rows
        if r["generator_delta"] is not None and r[key] is not None
    ]
    if len(pairs) < 3:
        return None
    import pandas as pd  # a dependency of datasets; its average ranks handle ties as Spearman's rho does

    x, y = zip(*pairs, strict=True)
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(np.corrcoef(pd.Series(x).rank(), pd.Series(y).rank())[0, 1])


__all__ = [
    "SWEEP",
    "SWEEP_LEVEL",
    "SweepError",
    "SweepLevel",
    "SweepPlan",
    "level_config_name",
    "level_pairs",
    "plan_sweep",
    "sweep_analysis",
]
