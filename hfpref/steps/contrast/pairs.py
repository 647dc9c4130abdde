"""``ContrastPairs``: rejection-sampling (RS) preference pairs tagged with their contrast.

arXiv 2412.15282 (§3, §5.2) samples N responses per constrained prompt, scores each by the fraction of
its constraints met (``correctness``), and builds pairs whose *contrast* — the correctness gap between
chosen and rejected — is high or low; it finds high contrast generally better and a mix of both often
best, and studies prompt difficulty (k constraints) alongside.

``ContrastPairs`` (a :class:`hfpref.core.step.Step` that changes the row count) turns candidates rows into
pairs rows. A row whose prompt is missing (``hfpref.steps.pair_rows.prompt_is_missing``: None, blank, or no
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

``hfpref.steps.contrast.mix.mix_contrast`` then draws a fixed-size dataset from pairs of both levels in a
given ratio, optionally with the same difficulty mix in both levels.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hfpref.core import columns as C
from hfpref.core.columns import (
    CHOSEN_CORRECTNESS,
    CONTRAST,
    CONTRAST_LEVEL,
    DIFFICULTY,
    PAIR_COLUMNS,
    REJECTED_CORRECTNESS,
)
from hfpref.core.step import Batch, RowError, StepConfig, row_label
from hfpref.steps import pair_rows

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


class ContrastPairs(pair_rows.PairMaker):
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

    # the public path, as before the split: manifests name the step by it and its fingerprint hashes it, so
    # cached outputs and released recipes stay valid (the package re-exports the class under this path)
    __module__ = "hfpref.steps.contrast"

    config_class: ClassVar[type[StepConfig]] = ContrastConfig
    version: ClassVar[str] = "2"  # 2: missing prompts dropped, None responses never candidates
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

    def consumed_columns(self) -> set[str]:
        return {self.config.score_column}

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        out, passthrough = self.empty_output(batch)
        for i in range(len(batch[C.PROMPT])):
            pairs, reason = self._row_pairs(batch, i, indices)
            difficulty = self._difficulty(batch, i, indices)
            columns = [*PAIR_COLUMNS, *CONTRAST_FLOAT_COLUMNS, CONTRAST_LEVEL]
            for pair in pairs or [None]:
                pair_rows.append_pair_row(
                    out, batch, i, pair, columns, self.pair_strategy, reason, passthrough
                )
                out[DIFFICULTY].append(difficulty)
        return out

    def _row_pairs(
        self, batch: Batch, i: int, indices: list[int] | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The row's kept pairs (column -> value) and None, or [] and the drop reason."""
        cfg = self.config
        where = f"{self.name}: {row_label(batch, i, indices)}"
        texts, scores, rewards, generators = self._read_row(batch, i, where)
        n = len(texts)
        prompt = batch[C.PROMPT][i]
        if pair_rows.prompt_is_missing(prompt):
            return [], "missing_prompt"
        # a missing response is no candidate: ``usable_pairs`` masks it out before any of its values is read
        if sum(t is not None for t in texts) < 2:
            return [], "fewer_than_two_responses"
        with np.errstate(over="ignore", invalid="ignore"):  # huge scores: a gap overflowing to ±inf
            gap = scores[:, None] - scores[None, :]
        cells, levels, reason = self._eligible_cells(texts, scores, gap)
        if reason is not None:
            return [], reason
        texts = ["" if t is None else t for t in texts]  # placeholders only
        edit = pair_rows.response_matrix(batch, C.EDIT_DISTANCE_MATRIX, i, n, where)
        logp = pair_rows.response_matrix(batch, C.LOGP_DIFF_MATRIX, i, n, where)
        kept, seen = [], set()
        for chosen, rejected in self._ordered(cells, scores, gap, prompt):
            if (texts[chosen], texts[rejected]) in seen:
                continue
            seen.add((texts[chosen], texts[rejected]))
            # rewards are optional here and not filtered on: an unknown or non-finite one is written as None
            reward_c = None if rewards is None else pair_rows.finite_or_none(rewards[chosen])
            reward_r = None if rewards is None else pair_rows.finite_or_none(rewards[rejected])
            margin = None
            if reward_c is not None and reward_r is not None:
                margin = pair_rows.finite_or_none(reward_c - reward_r)
            kept.append(
                {
                    **pair_rows.pair_sides(texts, chosen, rejected, generators, isinstance(prompt, list)),
                    C.REWARD_CHOSEN: reward_c,
                    C.REWARD_REJECTED: reward_r,
                    C.REWARD_MARGIN: margin,
                    **pair_rows.pair_metrics(edit, logp, chosen, rejected, margin, cfg.eps),
                    CONTRAST: float(gap[chosen, rejected]),
                    CONTRAST_LEVEL: levels[(chosen, rejected)],
                    CHOSEN_CORRECTNESS: float(scores[chosen]),
                    REJECTED_CORRECTNESS: float(scores[rejected]),
                }
            )
            if cfg.max_pairs_per_prompt is not None and len(kept) == cfg.max_pairs_per_prompt:
                break
        return kept, None

    def _read_row(
        self, batch: Batch, i: int, where: str
    ) -> tuple[list, np.ndarray, np.ndarray | None, list | None]:
        """Row ``i``'s responses, scores, rewards (None without the column) and generators, checked."""
        texts = batch[C.RESPONSES][i]
        if texts is None or isinstance(texts, str) or not isinstance(texts, Sequence):
            raise RowError(f"{where} column {C.RESPONSES!r} must be a list of strings, got {texts!r:.200}")
        pair_rows.check_response_texts(texts, where)
        n, column = len(texts), self.config.score_column
        scores = pair_rows.response_numbers(batch[column][i], n, where, column)
        rewards = None
        if C.REWARDS in batch:
            rewards = pair_rows.response_numbers(batch[C.REWARDS][i], n, where, C.REWARDS)
        generators = batch[C.GENERATORS][i] if C.GENERATORS in batch else None
        if generators is not None and len(generators) != n:
            raise RowError(f"{where} column {C.GENERATORS!r} has {len(generators)} values for {n} responses")
        return list(texts), scores, rewards, generators

    def _eligible_cells(
        self, texts: Sequence[str | None], scores: np.ndarray, gap: np.ndarray
    ) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str], str | None]:
        """The eligible (chosen, rejected) cells and each one's contrast level, or the drop reason."""
        cfg = self.config
        finite = np.isfinite(scores)[:, None] & np.isfinite(scores)[None, :] & np.isfinite(gap)
        with np.errstate(invalid="ignore"):
            better = scores[:, None] > scores[None, :]
        placeholders = ["" if t is None else t for t in texts]
        eligible, reason = pair_rows.first_empty(
            [
                ("empty_response", pair_rows.usable_pairs(texts)),
                ("nan_score", finite),
                ("identical_responses", pair_rows.distinct(placeholders)),
                ("scores_tied", better),
            ],
            len(texts),
        )
        if reason is not None:
            return [], {}, reason
        levels = {
            (int(a), int(b)): contrast_level(float(gap[a, b]), cfg.high_min_gap, cfg.low_max_gap)
            for a, b in zip(*np.nonzero(eligible), strict=True)
        }
        cells = [cell for cell, level in levels.items() if cfg.mode in ("all", level)]
        if not cells:
            return [], {}, f"no_{cfg.mode}_contrast_pair"
        return cells, levels, None

    def _ordered(
        self, cells: list[tuple[int, int]], scores: np.ndarray, gap: np.ndarray, prompt: Any
    ) -> list[tuple[int, int]]:
        """The cells in the order pairs are kept (module docstring), ties broken by a seeded shuffle."""
        shuffle = np.random.default_rng([self.config.seed, pair_rows.prompt_seed(prompt)]).permutation(
            len(cells)
        )
        # gaps rounded for ordering only, so equal fractions (1 − 2/3, 2/3 − 1/3) tie as they should
        rounded = [round(float(gap[cell]), ORDER_DECIMALS) for cell in cells]
        chosen_scores = [float(scores[a]) for a, _ in cells]
        if self.config.mode == "low":
            keys = [(-chosen_scores[c], rounded[c], shuffle[c]) for c in range(len(cells))]
        else:
            keys = [(-rounded[c], -chosen_scores[c], shuffle[c]) for c in range(len(cells))]
        return [cells[c] for c in sorted(range(len(cells)), key=keys.__getitem__)]

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

        base = pair_rows.pairs_features(
            input_features, [], extra_float_columns=CONTRAST_FLOAT_COLUMNS, step=self.name
        )
        features = {name: base[name] for name in [C.PROMPT, *PAIR_COLUMNS, *CONTRAST_FLOAT_COLUMNS]}
        features[CONTRAST_LEVEL] = datasets.Value("string")
        features[DIFFICULTY] = datasets.Value("int64")
        features[C.PAIR_STRATEGY] = base[C.PAIR_STRATEGY]
        features[C.DROP_REASON] = base[C.DROP_REASON]
        for name in self.passthrough_columns(list(input_features)):
            features[name] = input_features[name]
        return datasets.Features(features)
