"""Contrast-mixed datasets: a fixed number of pairs drawn from high- and low-contrast pairs in a given ratio.

arXiv 2412.15282 (§5.2) finds a mix of high and low contrast pairs often best. ``mix_contrast`` draws such a
mix from ``ContrastPairs`` output (``contrast_level``), optionally with the same mix of another column
(e.g. ``difficulty``) in both levels, so that contrast and that column are not confounded.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from hfpref.core import columns as C
from hfpref.core.columns import CONTRAST_LEVEL
from hfpref.core.errors import UserError
from hfpref.core.stats import largest_remainder
from hfpref.steps.contrast.pairs import LEVELS

# (level, stratum) -> row indices of the kept pairs of that level with that value of the stratify column
Pools = dict[tuple[str, Any], list[int]]


class MixError(UserError):
    """The pairs cannot give the mix asked for; the message gives the counts needed and available."""


def mix_counts(size: int, ratio_high: float) -> tuple[int, int]:
    """(high, low) pairs of a mix: high = ⌊ratio_high · size + ½⌋ (half rounds up), low = the rest."""
    high = math.floor(ratio_high * size + 0.5)
    return high, size - high


def _dropped(pairs: Any) -> list[str | None]:
    """Each row's drop reason (all None when the pairs carry no ``drop_reason`` column)."""
    return pairs[C.DROP_REASON] if C.DROP_REASON in pairs.column_names else [None] * len(pairs)


def largest_mix_size(pairs: Any, ratio_high: float) -> int:
    """The largest ``size`` for which ``mix_contrast(pairs, ratio_high, size)`` (unstratified) has enough
    high and low pairs; 0 when there is none."""
    available = collections.Counter(
        level for level, reason in zip(pairs[CONTRAST_LEVEL], _dropped(pairs), strict=True) if reason is None
    )
    for size in range(available["high"] + available["low"], 0, -1):
        high, low = mix_counts(size, ratio_high)
        if high <= available["high"] and low <= available["low"]:
            return size
    return 0


def _stratum_key(value: Any) -> tuple:
    return (value is None, value if value is not None else 0)  # None sorts last


def _check_arguments(pairs: Any, ratio_high: float, size: Any, seed: Any, stratify: str | None) -> None:
    if size is None or not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"mix_contrast: size must be a positive int, got {size!r}")
    if not 0 <= ratio_high <= 1:
        raise ValueError(f"mix_contrast: ratio_high must be in [0, 1], got {ratio_high!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"mix_contrast: seed must be a non-negative int, got {seed!r}")
    columns = pairs.column_names
    needed = [CONTRAST_LEVEL] + ([stratify] if stratify is not None else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"mix_contrast needs column(s) {missing}, which are missing; columns present: {columns}"
        )


def _pools(pairs: Any, stratify: str | None) -> Pools:
    """The kept high and low pairs by (level, stratum); mid pairs and dropped rows are never drawn."""
    strata = pairs[stratify] if stratify is not None else [None] * len(pairs)
    pools: Pools = collections.defaultdict(list)
    for index, (level, reason, stratum) in enumerate(
        zip(pairs[CONTRAST_LEVEL], _dropped(pairs), strata, strict=True)
    ):
        if reason is None and level in ("high", "low"):
            pools[(level, stratum)].append(index)
    return pools


def _quotas(
    wanted: dict[str, int], pools: Pools, values: list[Any], stratified: bool
) -> dict[tuple[str, Any], int]:
    """Pairs to draw per (level, stratum): each level's count split over the strata in proportion to how many
    high-or-low pairs each stratum has (``largest_remainder``)."""
    if not stratified:
        return {(level, None): count for level, count in wanted.items()}
    weights = {v: len(pools.get(("high", v), [])) + len(pools.get(("low", v), [])) for v in values}
    quotas = {}
    for level, count in wanted.items():
        if not weights:
            quotas[(level, None)] = count  # no pool at all: reported as short
            continue
        for value, quota in largest_remainder(count, weights).items():
            quotas[(level, value)] = quota
    return quotas


def _short_error(
    short: dict[tuple[str, Any], tuple[int, int]],
    pools: Pools,
    wanted: dict[str, int],
    size: int,
    ratio_high: float,
    stratify: str | None,
) -> MixError:
    """The error naming every count a mix needs and the pairs have."""
    available = {level: sum(len(ix) for (lv, _), ix in pools.items() if lv == level) for level in wanted}
    detail = "; ".join(
        f"{level}"
        + (f" with {stratify}={value!r}" if stratify is not None else "")
        + f": need {q}, have {have}"
        for (level, value), (q, have) in short.items()
    )
    return MixError(
        f"mix_contrast: size={size} at ratio_high={ratio_high} needs {wanted['high']} high and "
        f"{wanted['low']} low contrast pairs; the pairs hold {available['high']} high and "
        f"{available['low']} low ({detail}). Lower size, change ratio_high, or pass allow_short=True."
    )


def mix_contrast(
    pairs: Any,
    ratio_high: float = 0.5,
    size: int | None = None,
    seed: int = 0,
    *,
    stratify: str | None = None,
    allow_short: bool = False,
) -> Any:
    """A dataset of ``size`` pairs, ``mix_counts(size, ratio_high)`` of them high contrast, the rest low.

    ``pairs``: a ``datasets.Dataset`` of pairs rows with ``contrast_level`` (``ContrastPairs`` in mode
    "all", or high and low outputs concatenated); rows with a ``drop_reason`` and ``mid`` pairs are not
    used. Within a level, pairs are drawn uniformly without replacement with a generator seeded from
    ``seed`` and the level (and stratum), and returned in their input order, without ``drop_reason``.

    ``stratify``: a column (e.g. ``"difficulty"``) whose values both levels then share in the same
    proportions: the high and low counts are each split over the column's values in proportion to how
    many high-or-low pairs have that value (``largest_remainder``), so contrast and that column are not
    confounded in the mix. None is a value of its own.

    Raises ``MixError``, naming every count needed and available, when a level (or a level within a
    stratum) has too few pairs. With ``allow_short=True`` it takes every pair of a short level (or
    cell) instead, and the result is shorter than ``size`` and off the ratio by that shortfall.
    """
    _check_arguments(pairs, ratio_high, size, seed, stratify)
    pools = _pools(pairs, stratify)
    wanted = dict(zip(("high", "low"), mix_counts(size, ratio_high), strict=True))
    values = sorted({stratum for _, stratum in pools}, key=_stratum_key)
    quotas = _quotas(wanted, pools, values, stratified=stratify is not None)
    short = {
        cell: (q, len(pools.get(cell, []))) for cell, q in quotas.items() if q > len(pools.get(cell, []))
    }
    if short and not allow_short:
        raise _short_error(short, pools, wanted, size, ratio_high, stratify)

    chosen: list[int] = []
    for (level, value), quota in quotas.items():
        pool = pools.get((level, value), [])
        stratum_seed = values.index(value) if value in values else 0
        rng = np.random.default_rng([seed, LEVELS.index(level), stratum_seed])
        picked = rng.permutation(len(pool))[: min(quota, len(pool))]
        chosen.extend(pool[int(p)] for p in picked)
    mixed = pairs.select(sorted(chosen))
    return mixed.remove_columns(C.DROP_REASON) if C.DROP_REASON in pairs.column_names else mixed
