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
# bump when the pairs a level holds change: cached levels (and their judged tags) are rebuilt
LEVEL_VERSION = "1"
# hfpref.steps.judges.quality.DELTA, spelled here so this module imports no judge
SAMPLE_DELTA = "sample_delta"
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
    # reason -> rows, counted in this order: missing_prompt, missing_chosen, missing_rejected
    excluded: dict[str, int]
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
    names = _level_names(name, chosen, rejected, level_names)
    _check_generators_wrote(candidates, name, [chosen, *rejected])
    common, excluded = _common_prompts(candidates, chosen, rejected)
    if not common:
        raise SweepError(
            f"sweep {name!r}: no prompt has responses from {chosen!r} and every one of {list(rejected)} "
            f"(rows without them: {excluded})"
        )
    return SweepPlan(
        name=name,
        chosen=chosen,
        levels=[SweepLevel(n, r) for n, r in zip(names, rejected, strict=True)],
        rows=_draw_rows(common, size, seed, name),
        common=len(common),
        excluded=excluded,
        size=size,
        seed=seed,
    )


def _level_names(
    name: str, chosen: str, rejected: Sequence[str], level_names: Sequence[str] | None
) -> list[str]:
    """The config names of the levels (given, else ``level_config_name``), after checking that ``rejected``
    lists distinct generators other than ``chosen``, one per name."""
    if not rejected:
        raise SweepError(f"sweep {name!r}: 'rejected' must list at least one generator")
    if len(set(rejected)) != len(rejected):
        raise SweepError(f"sweep {name!r}: 'rejected' names a generator twice: {list(rejected)}")
    if chosen in rejected:
        raise SweepError(f"sweep {name!r}: the chosen generator {chosen!r} is also listed as rejected")
    names = list(level_names or [level_config_name(name, r) for r in rejected])
    if len(names) != len(rejected):
        raise SweepError(f"sweep {name!r}: {len(names)} level names for {len(rejected)} rejected generators")
    return names


def _check_generators_wrote(candidates: Any, name: str, generators: Sequence[str]) -> None:
    """A sweep naming a generator with no response anywhere in the candidates is an error listing those
    present (most likely a misspelt name, which would otherwise read as "no common prompt")."""
    seen = set()
    for row in candidates.select_columns([C.GENERATORS]).iter(batch_size=1000):
        for row_generators in row[C.GENERATORS]:
            seen.update(g for g in row_generators or [] if g is not None)
    unknown = [g for g in generators if g not in seen]
    if unknown:
        raise SweepError(
            f"sweep {name!r}: generator(s) {unknown} wrote no response in the candidates; generators present: "
            f"{sorted(seen)}"
        )


def _common_prompts(
    candidates: Any, chosen: str, rejected: Sequence[str]
) -> tuple[list[int], dict[str, int]]:
    """(row positions of the prompts with a response of ``chosen`` and of every ``rejected`` generator,
    rows excluded per reason); a row counts under the first reason that applies, in ``excluded``'s order."""
    from hfpref.steps.selection import prompt_is_missing

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
    return common, excluded


def _draw_rows(common: list[int], size: int | None, seed: int, name: str) -> list[int]:
    """``size`` of the ``common`` row positions drawn with ``seed``, ascending (all of them for None)."""
    if size is not None and size > len(common):
        raise SweepError(
            f"sweep {name!r}: size {size} is more than the {len(common)} prompts every level shares; "
            f"use size: null (all {len(common)}) or a smaller size"
        )
    if size is None or size == len(common):
        return list(common)
    drawn = np.random.default_rng(seed).choice(len(common), size=size, replace=False)
    return [common[k] for k in sorted(drawn.tolist())]


def level_pairs(
    candidates: Any, plan: SweepPlan, level: SweepLevel, capabilities: Mapping[str, float] | None
) -> Any:
    """The pairs of one level (a ``datasets.Dataset``): chosen = the plan's chosen generator's response,
    rejected = the level's generator's, for every drawn prompt, in candidates order.

    Made by ``Dataset.map`` over the drawn rows with a fingerprint of the candidates' fingerprint and the
    level (rows, generators, capabilities), so the pair-level steps after it (a judge) are cache hits on a
    rerun."""
    from hfpref.steps.pair_rows import NOT_PASSED_THROUGH

    subset = candidates.select(plan.rows)
    passthrough = [
        c
        for c in subset.column_names
        if c not in NOT_PASSED_THROUGH and c not in (C.PROMPT, C.DROP_REASON) and c not in _MATRICES.values()
    ]
    a = None if capabilities is None else capabilities.get(plan.chosen)
    b = None if capabilities is None else capabilities.get(level.rejected)
    level_rows = _LevelRows(plan, level, a, b, passthrough, _level_features(candidates.features, passthrough))
    return subset.map(
        level_rows,
        batched=True,
        remove_columns=subset.column_names,
        features=level_rows.features,
        new_fingerprint=level_rows.fingerprint(getattr(candidates, "_fingerprint", None)),
        desc=f"sweep level {level.name}",
    )


def _level_features(candidates_features: Any, passthrough: Sequence[str]) -> Any:
    """A level's Arrow features: DESIGN.md's pair columns, the sweep's columns and the passthrough columns."""
    import datasets

    from hfpref.steps.pair_rows import pair_column_features

    string, real = datasets.Value("string"), datasets.Value("float64")
    return datasets.Features(
        {
            **pair_column_features(candidates_features[C.PROMPT], step="delta sweep"),
            C.PAIR_STRATEGY: string,
            SWEEP: string,
            SWEEP_LEVEL: string,
            SAME_SOURCE: datasets.Value("bool"),
            **{c: real for c in (CHOSEN_CAPABILITY, REJECTED_CAPABILITY, GENERATOR_DELTA)},
            **{c: candidates_features[c] for c in passthrough},
        }
    )


@dataclasses.dataclass
class _LevelRows:
    """The ``Dataset.map`` function of one level: a batch of drawn candidates rows -> their pairs rows."""

    plan: SweepPlan
    level: SweepLevel
    chosen_capability: float | None
    rejected_capability: float | None
    passthrough: list[str]  # candidates columns copied to the pairs unchanged
    features: Any  # the pairs' datasets.Features (_level_features)

    def fingerprint(self, candidates_fingerprint: str | None) -> str:
        """The level's cache fingerprint: what its pairs are made from, with ``LEVEL_VERSION``."""
        import hashlib
        import json

        record = {
            "version": LEVEL_VERSION,
            "candidates": candidates_fingerprint,
            "rows": self.plan.rows,
            "sweep": self.plan.name,
            "chosen": self.plan.chosen,
            "level": [self.level.name, self.level.rejected],
            "capabilities": [self.chosen_capability, self.rejected_capability],
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [self.pair(batch, r) for r in range(len(batch[C.PROMPT]))]
        return {name: [row[name] for row in rows] for name in self.features}

    def pair(self, batch: dict[str, list], r: int) -> dict[str, Any]:
        """The pairs row of candidates row ``r``: the chosen generator's response against the level's."""
        from hfpref.steps.pair_rows import finite_or_none, pair_sides

        responses, generators, prompt = batch[C.RESPONSES][r], batch[C.GENERATORS][r], batch[C.PROMPT][r]
        i = _response_index(responses, generators, self.plan.chosen)
        j = _response_index(responses, generators, self.level.rejected)
        rewards = batch[C.REWARDS][r] if C.REWARDS in batch else None
        reward_i = finite_or_none(rewards[i]) if rewards is not None else None
        reward_j = finite_or_none(rewards[j]) if rewards is not None else None
        a, b = self.chosen_capability, self.rejected_capability
        return {
            C.PROMPT: prompt,
            **pair_sides(responses, i, j, generators, isinstance(prompt, list)),
            C.REWARD_CHOSEN: reward_i,
            C.REWARD_REJECTED: reward_j,
            C.REWARD_MARGIN: None if reward_i is None or reward_j is None else reward_i - reward_j,
            **{column: _matrix_value(batch, matrix, r, i, j) for column, matrix in _MATRICES.items()},
            C.PAIR_STRATEGY: PAIR_STRATEGY,
            SWEEP: self.plan.name,
            SWEEP_LEVEL: self.level.name,
            SAME_SOURCE: self.plan.chosen == self.level.rejected,
            CHOSEN_CAPABILITY: a,
            REJECTED_CAPABILITY: b,
            GENERATOR_DELTA: None if a is None or b is None else a - b,
            **{column: batch[column][r] for column in self.passthrough},
        }


def _matrix_value(batch: dict[str, list], column: str, r: int, i: int, j: int) -> float | None:
    """Entry (i, j) of row ``r``'s N×N matrix in ``column``, None without the column or a finite value."""
    from hfpref.steps.pair_rows import finite_or_none

    matrix = batch[column][r] if column in batch else None
    return None if matrix is None else finite_or_none(matrix[i][j])


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
