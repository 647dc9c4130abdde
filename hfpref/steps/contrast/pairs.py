"""Rejection-sampling (RS) preference pairs tagged with their contrast, and contrast-mixed datasets.

arXiv 2412.15282 (§3, §5.2) samples N responses per constrained prompt, scores each by the fraction of
its constraints met (``correctness``), and builds pairs whose *contrast* — the correctness gap between
chosen and rejected — is high or low; it finds high contrast generally better and a mix of both often
best, and studies prompt difficulty (k constraints) alongside.

``ContrastPairs`` (a :class:`hfpref.core.step.Step` that changes the row count) turns candidates rows into
pairs rows. A row whose prompt is missing (``hfpref.steps.selection.prompt_is_missing``: None, blank, or no
message with text) makes no pair (``missing_prompt``); a missing response (None in ``responses``) is no
candidate and is never paired, while an empty string is a response (that rule 2 keeps out of pairs). For a
row, a pair (i, j) is *eligible* when, in this order (the first filter that leaves no pair names the drop
reason):

1. the row has at least two real (non-None) responses (else ``fewer_than_two_responses``);
2. neither response is empty or whitespace-only, and i ≠ j (else ``empty_response``);
3. both scores and their gap are finite — None, NaN or ±inf marks a failed scoring (else ``nan_score``);
4. the two texts differ (else ``identical_responses``);
5. score(i) > score(j), strictly: chosen is the better response and ties make no pair (else
   ``scores_tied``);
6. the pair's contrast level is the one asked for (``mode="high"`` / ``"low"``; else
   ``no_high_contrast_pair`` / ``no_low_contrast_pair``; ``mode="all"`` takes every level).

The contrast is gap = score(i) − score(j) and its level is ``high`` when gap ≥ ``high_min_gap``, ``low``
when gap ≤ ``low_max_gap``, else ``mid`` (``low_max_gap < high_min_gap``; a gap within 1e-9 of a
threshold counts as on it, because correctness fractions are not exact in floating point: 7/10 − 2/10 is
0.49999999999999994). Among the eligible pairs, up to ``max_pairs_per_prompt`` are kept (None: all), in
this order, ties broken by a seeded shuffle (``seed`` and a hash of the prompt, so the pick depends on
neither batch size nor row order), and never the same (chosen text, rejected text) twice:

* ``high`` and ``all``: largest gap first (the first high pair is best vs worst), then better chosen;
* ``low``: better chosen first (the paper finds contrast matters more than absolute correctness *as long
  as the chosen response is reasonably correct*), then smaller gap.

``mix_contrast`` then draws a fixed-size dataset from pairs of both levels in a given ratio, optionally
with the same difficulty mix in both levels.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.steps.constraints import DIFFICULTY
from hfpref.steps.pair_metrics import dcrm
from hfpref.steps.selection import PAIR_COLUMNS, PairSelector, pairs_features, prompt_is_missing, prompt_seed

CONTRAST = "contrast"
CONTRAST_LEVEL = "contrast_level"
CHOSEN_CORRECTNESS = "chosen_correctness"
REJECTED_CORRECTNESS = "rejected_correctness"
CONTRAST_FLOAT_COLUMNS = (CONTRAST, CHOSEN_CORRECTNESS, REJECTED_CORRECTNESS)

MODES = ("high", "low", "all")
LEVELS = ("high", "mid", "low")
PAIR_STRATEGIES = {"high": "rs_high_contrast", "low": "rs_low_contrast", "all": "rs_contrast"}
GAP_TOLERANCE = 1e-9
ORDER_DECIMALS = 9  # gaps equal to this many decimals are ties when ordering pairs


@dataclasses.dataclass
class ContrastConfig(StepConfig):
    """Settings of ``ContrastPairs`` (see the module docstring).

    mode: "high", "low" or "all" (every positive gap, each pair tagged with its level).
    high_min_gap: a gap at least this is high contrast. low_max_gap: a positive gap at most this is low.
    max_pairs_per_prompt: pairs kept per prompt (None: every eligible pair).
    seed: non-negative seed of the tie-breaking shuffle.
    score_column: the per-response score that ranks responses (``correctness``: fraction of constraints met).
    eps: ε of the ``dcrm`` column, written when ``PairMetrics``' matrices are present (keep it equal to
      PairMetrics').
    """

    mode: str = "high"
    high_min_gap: float = 0.5
    low_max_gap: float = 0.25
    max_pairs_per_prompt: int | None = 1
    seed: int = 0
    score_column: str = C.CORRECTNESS
    eps: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"ContrastConfig.mode must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.low_max_gap < self.high_min_gap:
            raise ValueError(
                "ContrastConfig needs 0 < low_max_gap < high_min_gap, got "
                f"low_max_gap={self.low_max_gap!r}, high_min_gap={self.high_min_gap!r}"
            )
        if self.max_pairs_per_prompt is not None and not (
            isinstance(self.max_pairs_per_prompt, int) and self.max_pairs_per_prompt >= 1
        ):
            raise ValueError(
                f"ContrastConfig.max_pairs_per_prompt must be None or an int >= 1, got {self.max_pairs_per_prompt!r}"
            )
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"ContrastConfig.seed must be a non-negative int, got {self.seed!r}")
        if not self.eps > 0:
            raise ValueError(f"ContrastConfig.eps must be positive, got {self.eps!r}")


def contrast_level(gap: float, high_min_gap: float, low_max_gap: float) -> str:
    """ "high", "mid" or "low" for a positive gap (thresholds inclusive, within ``GAP_TOLERANCE``)."""
    if gap >= high_min_gap - GAP_TOLERANCE:
        return "high"
    if gap <= low_max_gap + GAP_TOLERANCE:
        return "low"
    return "mid"


class ContrastPairs(Step):
    """RS pairs of each candidates row at a contrast level (see the module docstring).

    Input columns: ``prompt``, ``responses``, ``config.score_column`` (default ``correctness``). Read when
    present: ``generators``, ``rewards`` (``reward_chosen`` / ``reward_rejected`` / ``reward_margin``),
    ``edit_distance_matrix`` / ``logp_diff_matrix`` (``edit_distance``, ``logp_diff``, ``dcrm``),
    ``difficulty`` (else k = ``len(instruction_id_list)`` when that column is present).

    Output columns, one row per kept pair, or one row with a ``drop_reason`` (and the pair columns None)
    for a prompt without a pair: ``prompt``; TRL's ``chosen`` / ``rejected`` (strings, or a list with one
    assistant message for a conversational prompt); DESIGN.md's pair columns (``chosen_index`` ...
    ``dcrm``, None when unknown); ``contrast`` (float, the score gap); ``contrast_level`` ("high", "mid",
    "low"); ``chosen_correctness``, ``rejected_correctness`` (the two scores); ``difficulty`` (int or
    None); ``pair_strategy`` (``rs_high_contrast``, ``rs_low_contrast`` or ``rs_contrast``);
    ``drop_reason``; and every other input column except per-response lists and N×N matrices.
    """

    config_class: ClassVar[type[StepConfig]] = ContrastConfig
    version: ClassVar[str] = "2"  # 2: missing prompts dropped, None responses never candidates
    changes_row_count: ClassVar[bool] = True
    config: ContrastConfig

    @property
    def pair_strategy(self) -> str:
        return PAIR_STRATEGIES[self.config.mode]

    def input_columns(self) -> list[str]:
        return [C.PROMPT, C.RESPONSES, self.config.score_column]

    def output_columns(self) -> list[str]:
        return [
            C.PROMPT,
            *PAIR_COLUMNS,
            *CONTRAST_FLOAT_COLUMNS,
            CONTRAST_LEVEL,
            DIFFICULTY,
            C.PAIR_STRATEGY,
            C.DROP_REASON,
        ]

    def passthrough_columns(self, column_names: list[str]) -> list[str]:
        """The input columns copied unchanged to every pairs row of their prompt."""
        own = {*self.output_columns(), self.config.score_column}
        return [name for name in PairSelector.passthrough_columns(column_names) if name not in own]

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        passthrough = self.passthrough_columns(list(batch))
        out: Batch = {name: [] for name in [*self.output_columns(), *passthrough]}
        for i in range(len(batch[C.PROMPT])):
            pairs, reason = self._row_pairs(batch, i, indices)
            difficulty = self._difficulty(batch, i, indices)
            for pair in pairs or [None]:
                out[C.PROMPT].append(batch[C.PROMPT][i])
                for name in [*PAIR_COLUMNS, *CONTRAST_FLOAT_COLUMNS, CONTRAST_LEVEL]:
                    out[name].append(None if pair is None else pair[name])
                out[DIFFICULTY].append(difficulty)
                out[C.PAIR_STRATEGY].append(self.pair_strategy)
                out[C.DROP_REASON].append(reason)
                for name in passthrough:
                    out[name].append(batch[name][i])
        return out

    def _row_pairs(
        self, batch: Batch, i: int, indices: list[int] | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The row's kept pairs (column -> value) and None, or [] and the drop reason."""
        cfg = self.config
        where = f"{self.name}: {row_label(batch, i, indices)}"
        texts = batch[C.RESPONSES][i]
        if texts is None or isinstance(texts, str) or not isinstance(texts, Sequence):
            raise RowError(f"{where} column {C.RESPONSES!r} must be a list of strings, got {texts!r:.200}")
        for k, text in enumerate(texts):
            if text is not None and not isinstance(text, str):
                raise RowError(
                    f"{where} column {C.RESPONSES!r}[{k}] must be a string or None (missing), got {text!r:.200}"
                )
        n = len(texts)
        scores = _per_response_floats(batch, cfg.score_column, i, n, where, required=True)
        rewards = _per_response_floats(batch, C.REWARDS, i, n, where, required=False)
        generators = batch[C.GENERATORS][i] if C.GENERATORS in batch else None
        if generators is not None and len(generators) != n:
            raise RowError(f"{where} column {C.GENERATORS!r} has {len(generators)} values for {n} responses")
        if prompt_is_missing(batch[C.PROMPT][i]):
            return [], "missing_prompt"
        # a missing response is no candidate: ``usable`` masks it out before any of its values is read
        present = np.array([t is not None for t in texts], dtype=bool)
        if present.sum() < 2:
            return [], "fewer_than_two_responses"
        texts = ["" if t is None else t for t in texts]  # placeholders only

        usable = present & np.array([t.strip() != "" for t in texts], dtype=bool)
        with np.errstate(over="ignore", invalid="ignore"):  # huge scores: a gap overflowing to ±inf
            gap = scores[:, None] - scores[None, :]
        finite = np.isfinite(scores)[:, None] & np.isfinite(scores)[None, :] & np.isfinite(gap)
        codes = {text: k for k, text in enumerate(dict.fromkeys(texts))}
        text_id = np.array([codes[t] for t in texts])
        with np.errstate(invalid="ignore"):
            better = scores[:, None] > scores[None, :]
        levels = np.full((n, n), "", dtype=object)
        filters = [
            ("empty_response", usable[:, None] & usable[None, :] & ~np.eye(n, dtype=bool)),
            ("nan_score", finite),
            ("identical_responses", text_id[:, None] != text_id[None, :]),
            ("scores_tied", better),
        ]
        eligible = np.ones((n, n), dtype=bool)
        for reason, keep in filters:
            eligible &= keep
            if not eligible.any():
                return [], reason
        for a, b in zip(*np.nonzero(eligible), strict=True):
            levels[a, b] = contrast_level(float(gap[a, b]), cfg.high_min_gap, cfg.low_max_gap)
        if cfg.mode != "all":
            eligible &= levels == cfg.mode
            if not eligible.any():
                return [], f"no_{cfg.mode}_contrast_pair"

        cells = [(int(a), int(b)) for a, b in zip(*np.nonzero(eligible), strict=True)]
        shuffle = np.random.default_rng([cfg.seed, prompt_seed(batch[C.PROMPT][i])]).permutation(len(cells))
        # gaps rounded for ordering only, so equal fractions (1 − 2/3, 2/3 − 1/3) tie as they should
        rounded = [round(float(gap[cell]), ORDER_DECIMALS) for cell in cells]
        chosen_scores = [float(scores[a]) for a, _ in cells]
        if cfg.mode == "low":
            keys = [(-chosen_scores[c], rounded[c], shuffle[c]) for c in range(len(cells))]
        else:
            keys = [(-rounded[c], -chosen_scores[c], shuffle[c]) for c in range(len(cells))]
        order = sorted(range(len(cells)), key=keys.__getitem__)
        edit = _matrix(batch, C.EDIT_DISTANCE_MATRIX, i, n, where)
        logp = _matrix(batch, C.LOGP_DIFF_MATRIX, i, n, where)
        conversational = isinstance(batch[C.PROMPT][i], list)
        kept, seen = [], set()
        for c in order:
            chosen, rejected = cells[c]
            if (texts[chosen], texts[rejected]) in seen:
                continue
            seen.add((texts[chosen], texts[rejected]))
            # rewards are optional here and not filtered on: an unknown or non-finite one is written as None
            reward_c = None if rewards is None else _finite_or_none(rewards[chosen])
            reward_r = None if rewards is None else _finite_or_none(rewards[rejected])
            margin = None
            if reward_c is not None and reward_r is not None:
                margin = _finite_or_none(reward_c - reward_r)
            edit_value = None if edit is None else _finite_or_none(edit[chosen, rejected])
            logp_value = None if logp is None else _finite_or_none(logp[chosen, rejected])
            p_known = logp is None or logp_value is not None  # no ref_logps at all: p_Δ = 0, as PairMetrics
            both_known = edit_value is not None and margin is not None and p_known
            kept.append(
                {
                    C.CHOSEN: _completion(texts[chosen], conversational),
                    C.REJECTED: _completion(texts[rejected], conversational),
                    C.CHOSEN_INDEX: chosen,
                    C.REJECTED_INDEX: rejected,
                    C.CHOSEN_GENERATOR: None if generators is None else generators[chosen],
                    C.REJECTED_GENERATOR: None if generators is None else generators[rejected],
                    C.REWARD_CHOSEN: reward_c,
                    C.REWARD_REJECTED: reward_r,
                    C.REWARD_MARGIN: margin,
                    C.EDIT_DISTANCE: edit_value,
                    C.LOGP_DIFF: logp_value,
                    C.DCRM: dcrm(margin, edit_value, logp_value or 0.0, cfg.eps) if both_known else None,
                    CONTRAST: float(gap[chosen, rejected]),
                    CONTRAST_LEVEL: levels[chosen, rejected],
                    CHOSEN_CORRECTNESS: float(scores[chosen]),
                    REJECTED_CORRECTNESS: float(scores[rejected]),
                }
            )
            if cfg.max_pairs_per_prompt is not None and len(kept) == cfg.max_pairs_per_prompt:
                break
        return kept, None

    def _difficulty(self, batch: Batch, i: int, indices: list[int] | None) -> int | None:
        """k of the row: its ``difficulty``, else the number of its instructions, else None."""
        if DIFFICULTY in batch:
            value = batch[DIFFICULTY][i]
            if value is not None and not (
                isinstance(value, numbers.Integral) and not isinstance(value, bool)
            ):
                raise RowError(
                    f"{self.name}: {row_label(batch, i, indices)} column {DIFFICULTY!r} must be an int, got {value!r}"
                )
            return None if value is None else int(value)
        if C.INSTRUCTION_ID_LIST in batch and batch[C.INSTRUCTION_ID_LIST][i] is not None:
            return len(batch[C.INSTRUCTION_ID_LIST][i])
        return None

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: Any) -> Any:
        """The pairs' features, fixed so batches whose rows were all dropped keep the same types."""
        import datasets

        base = pairs_features(input_features, [], extra_float_columns=CONTRAST_FLOAT_COLUMNS, step=self.name)
        features = {name: base[name] for name in [C.PROMPT, *PAIR_COLUMNS, *CONTRAST_FLOAT_COLUMNS]}
        features[CONTRAST_LEVEL] = datasets.Value("string")
        features[DIFFICULTY] = datasets.Value("int64")
        features[C.PAIR_STRATEGY] = base[C.PAIR_STRATEGY]
        features[C.DROP_REASON] = base[C.DROP_REASON]
        for name in self.passthrough_columns(list(input_features)):
            features[name] = input_features[name]
        return datasets.Features(features)


def _finite_or_none(value: Any) -> float | None:
    """A float, or None for a NaN or ±inf."""
    value = float(value)
    return value if math.isfinite(value) else None


def _completion(text: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": text}] if conversational else text


def _per_response_floats(
    batch: Batch, column: str, i: int, n: int, where: str, *, required: bool
) -> np.ndarray | None:
    """One number per response as a float array (None → NaN); None when an optional column is absent."""
    if column not in batch:
        if required:  # unreachable through __call__, which checks input columns first
            raise RowError(f"{where} column {column!r} is missing")
        return None
    values = batch[column][i]
    if values is None:
        return np.full(n, np.nan)
    if (
        isinstance(values, str)
        or len(values) != n
        or not all(v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)) for v in values)
    ):
        raise RowError(
            f"{where} column {column!r} must hold {n} numbers (one per response), got {values!r:.200}"
        )
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _matrix(batch: Batch, column: str, i: int, n: int, where: str) -> np.ndarray | None:
    if column not in batch or batch[column][i] is None:
        return None
    try:
        matrix = np.array(batch[column][i], dtype=np.float64)  # None cells become NaN
    except (TypeError, ValueError) as err:
        raise RowError(
            f"{where} column {column!r} is not a numeric matrix: {batch[column][i]!r:.200}"
        ) from err
    if matrix.shape != (n, n):
        raise RowError(f"{where} column {column!r} has shape {matrix.shape} for {n} responses")
    return matrix


# ---- dataset-level mixing ------------------------------------------------------------------------


class MixError(UserError):
    """The pairs cannot give the mix asked for; the message gives the counts needed and available."""


def mix_counts(size: int, ratio_high: float) -> tuple[int, int]:
    """(high, low) pairs of a mix: high = ⌊ratio_high · size + ½⌋ (half rounds up), low = the rest."""
    high = math.floor(ratio_high * size + 0.5)
    return high, size - high


def largest_mix_size(pairs: Any, ratio_high: float) -> int:
    """The largest ``size`` for which ``mix_contrast(pairs, ratio_high, size)`` (unstratified) has enough
    high and low pairs; 0 when there is none."""
    columns = pairs.column_names
    dropped = pairs[C.DROP_REASON] if C.DROP_REASON in columns else [None] * len(pairs)
    available = collections.Counter(
        level for level, reason in zip(pairs[CONTRAST_LEVEL], dropped, strict=True) if reason is None
    )
    for size in range(available["high"] + available["low"], 0, -1):
        high, low = mix_counts(size, ratio_high)
        if high <= available["high"] and low <= available["low"]:
            return size
    return 0


def largest_remainder(total: int, weights: dict[Any, int]) -> dict[Any, int]:
    """``total`` split in proportion to ``weights`` (Hamilton's method): each key gets the floor of its
    share, and the remaining units go to the largest fractional parts, ties to the earlier key."""
    whole = sum(weights.values())
    exact = {key: total * w / whole for key, w in weights.items()}
    quotas = {key: math.floor(value) for key, value in exact.items()}
    keys = list(weights)
    by_remainder = sorted(keys, key=lambda key: (-(exact[key] - quotas[key]), keys.index(key)))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas


def _stratum_key(value: Any) -> tuple:
    return (value is None, value if value is not None else 0)  # None sorts last


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

    levels = pairs[CONTRAST_LEVEL]
    dropped = pairs[C.DROP_REASON] if C.DROP_REASON in columns else [None] * len(pairs)
    strata = pairs[stratify] if stratify is not None else [None] * len(pairs)
    pools: dict[tuple[str, Any], list[int]] = collections.defaultdict(list)
    for index, (level, reason, stratum) in enumerate(zip(levels, dropped, strata, strict=True)):
        if reason is None and level in ("high", "low"):
            pools[(level, stratum)].append(index)

    wanted = dict(zip(("high", "low"), mix_counts(size, ratio_high), strict=True))
    values = sorted({stratum for _, stratum in pools}, key=_stratum_key)
    if stratify is None:
        quotas = {(level, None): count for level, count in wanted.items()}
    else:
        weights = {v: len(pools.get(("high", v), [])) + len(pools.get(("low", v), [])) for v in values}
        quotas = {}
        for level, count in wanted.items():
            if not weights:
                quotas[(level, None)] = count  # no pool at all: reported as short below
                continue
            for value, quota in largest_remainder(count, weights).items():
                quotas[(level, value)] = quota

    short = {
        cell: (q, len(pools.get(cell, []))) for cell, q in quotas.items() if q > len(pools.get(cell, []))
    }
    if short and not allow_short:
        available = {level: sum(len(ix) for (lv, _), ix in pools.items() if lv == level) for level in wanted}
        detail = "; ".join(
            f"{level}"
            + (f" with {stratify}={value!r}" if stratify is not None else "")
            + f": need {q}, have {have}"
            for (level, value), (q, have) in short.items()
        )
        raise MixError(
            f"mix_contrast: size={size} at ratio_high={ratio_high} needs {wanted['high']} high and "
            f"{wanted['low']} low contrast pairs; the pairs hold {available['high']} high and "
            f"{available['low']} low ({detail}). Lower size, change ratio_high, or pass allow_short=True."
        )

    chosen: list[int] = []
    for (level, value), quota in quotas.items():
        pool = pools.get((level, value), [])
        stratum_seed = values.index(value) if value in values else 0
        rng = np.random.default_rng([seed, LEVELS.index(level), stratum_seed])
        picked = rng.permutation(len(pool))[: min(quota, len(pool))]
        chosen.extend(pool[int(p)] for p in picked)
    mixed = pairs.select(sorted(chosen))
    return mixed.remove_columns(C.DROP_REASON) if C.DROP_REASON in columns else mixed


__all__ = [
    "CHOSEN_CORRECTNESS",
    "CONTRAST",
    "CONTRAST_LEVEL",
    "LEVELS",
    "MODES",
    "PAIR_STRATEGIES",
    "REJECTED_CORRECTNESS",
    "ContrastConfig",
    "ContrastPairs",
    "MixError",
    "contrast_level",
    "largest_mix_size",
    "largest_remainder",
    "mix_contrast",
    "mix_counts",
]
