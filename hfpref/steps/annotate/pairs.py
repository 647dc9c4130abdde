"""``AnnotatedPairs``: one TRL preference row per pair selected for annotation, chosen by the annotation.

Chosen is the response with the higher reward, or the one a pairwise judge preferred; the drop reasons are
listed in ``hfpref.steps.annotate``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import datasets

from hfpref.core import columns as C
from hfpref.core.columns import (
    IMPLICIT_MARGIN,
    IMPLICIT_MARGINS,
    IMPLICIT_REWARD_CHOSEN,
    IMPLICIT_REWARD_REJECTED,
    IMPLICIT_REWARDS,
    PAIR_COLUMNS,
    PAIR_INDICES,
    PER_PAIR_COLUMNS,
    SELECTED_FOR_ANNOTATION,
    SELECTION_LEVEL,
    SELECTION_STRATEGY,
)
from hfpref.core.step import Batch, RowError, StepConfig, row_label
from hfpref.steps.annotate.selected import is_per_response
from hfpref.steps.pair_rows import (
    PairMaker,
    append_pair_row,
    finite_or_none,
    pair_sides,
    pairs_features,
    prompt_is_missing,
    response_numbers,
)


@dataclasses.dataclass
class AnnotatedPairsConfig(StepConfig):
    """``pair_strategy``: the value of the ``pair_strategy`` column; None names it after the selection,
    e.g. ``smallest_margin_corpus``. ``preferences_column``: a pairwise annotator's per-pair preference
    column (1.0: the pair's first response is better, 0.0: the second, 0.5: a tie, None: no verdict),
    used instead of ``rewards``; ``reward_chosen`` / ``reward_rejected`` are then the preferences (1.0 /
    0.0)."""

    pair_strategy: str | None = None
    preferences_column: str | None = None


class AnnotatedPairs(PairMaker):
    """One TRL preference row per selected pair (chosen = higher reward), or a drop reason.

    Input columns: ``prompt``, ``responses``, ``rewards``, ``implicit_rewards``, ``pair_indices``,
    ``selected_for_annotation``, ``selection_strategy``, ``selection_level``; ``generators`` and
    ``ref_logps`` when present.
    Output columns, one row per selected pair: ``prompt``; ``chosen``, ``rejected`` (strings for a standard
    prompt, ``[{"role": "assistant", "content": text}]`` for a conversational one); ``chosen_index``,
    ``rejected_index`` (positions in ``responses``); ``chosen_generator``, ``rejected_generator``;
    ``reward_chosen``, ``reward_rejected``, ``reward_margin``; ``edit_distance`` and ``dcrm`` (None: not
    computed here), ``logp_diff`` (p_Δ = |ref log-prob difference|, None without ``ref_logps``);
    ``implicit_margin`` (r̂(chosen) − r̂(rejected), the ``rewards/margins`` TRL logs for this pair),
    ``implicit_reward_chosen``, ``implicit_reward_rejected``; ``pair_strategy``; ``drop_reason`` (None, or
    ``missing_prompt`` / ``missing_response`` / ``nan_reward`` / ``rewards_tied``, or with a pairwise annotator
    ``judge_tie`` / ``judge_missing``, with the pair columns None); and every other per-row input column
    (e.g. ``reward_source``, ``selection_*``, ids), while per-response and per-pair lists stay behind.
    """

    # the public path, as before the split: manifests name the step by it and its fingerprint hashes it, so
    # cached outputs and released recipes stay valid (the package re-exports the class under this path)
    __module__ = "hfpref.steps.annotate"

    config_class = AnnotatedPairsConfig
    version = "2"  # 2: missing prompts and missing responses dropped
    config: AnnotatedPairsConfig

    EXTRA_COLUMNS = (IMPLICIT_MARGIN, IMPLICIT_REWARD_CHOSEN, IMPLICIT_REWARD_REJECTED)

    def input_columns(self) -> list[str]:
        return [
            C.PROMPT,
            C.RESPONSES,
            self.config.preferences_column or C.REWARDS,
            IMPLICIT_REWARDS,
            PAIR_INDICES,
            SELECTED_FOR_ANNOTATION,
            SELECTION_STRATEGY,
            SELECTION_LEVEL,
        ]

    def output_columns(self) -> list[str]:
        return [C.PROMPT, *PAIR_COLUMNS, *self.EXTRA_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON]

    def passthrough_columns(self, column_names: list[str]) -> list[str]:
        excluded = {*self.output_columns(), *PER_PAIR_COLUMNS, IMPLICIT_MARGINS, *C.TOKEN_CACHE_COLUMNS}
        if self.config.preferences_column:  # a pairwise judge's per-pair lists stay behind too
            prefix = self.config.preferences_column[: -len("preferences")]
            excluded |= {self.config.preferences_column, f"{prefix}verdicts", f"{prefix}judge_raw"}
        return [c for c in column_names if c not in excluded and not is_per_response(c)]

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        out, passthrough = self.empty_output(batch)
        for i in range(len(batch[C.PROMPT])):
            responses = batch[C.RESPONSES][i] or []
            n = len(responses)
            preferences = self._preferences(batch, i, indices)
            rewards = None if preferences is not None else self._per_response(batch, C.REWARDS, i, n, indices)
            implicit = self._per_response(batch, IMPLICIT_REWARDS, i, n, indices)
            ref = self._per_response(batch, C.REF_LOGPS, i, n, indices) if C.REF_LOGPS in batch else None
            generators = batch[C.GENERATORS][i] if C.GENERATORS in batch else None
            strategy = self.config.pair_strategy or (
                f"{batch[SELECTION_STRATEGY][i]}_{batch[SELECTION_LEVEL][i]}"
            )
            prompt = batch[C.PROMPT][i]
            flags, pairs = batch[SELECTED_FOR_ANNOTATION][i], batch[PAIR_INDICES][i]
            for k, (flag, (a, b)) in enumerate(zip(flags, pairs, strict=True)):
                if not flag:
                    continue
                if preferences is not None:
                    # the pair's preference as rewards of its two responses: chosen = the preferred one
                    p = preferences[k]
                    pair_rewards: list[float | None] = [None] * n
                    pair_rewards[a], pair_rewards[b] = (None, None) if p is None else (p, 1.0 - p)
                    row, reason = self._pair(a, b, responses, pair_rewards, implicit, ref, generators, prompt)
                    reason = {"rewards_tied": "judge_tie", "nan_reward": "judge_missing"}.get(reason, reason)
                else:
                    row, reason = self._pair(a, b, responses, rewards, implicit, ref, generators, prompt)
                columns = [*PAIR_COLUMNS, *self.EXTRA_COLUMNS]
                append_pair_row(out, batch, i, row, columns, strategy, reason, passthrough)
        return out

    @staticmethod
    def _pair(
        a: int,
        b: int,
        responses: list[str],
        rewards: list[float | None],
        implicit: list[float | None],
        ref: list[float | None] | None,
        generators: list[str | None] | None,
        prompt: Any,
    ) -> tuple[dict[str, Any] | None, str | None]:
        if prompt_is_missing(prompt):
            return None, "missing_prompt"
        if responses[a] is None or responses[b] is None:
            return (
                None,
                "missing_response",
            )  # AnnotationSelector excludes these; a hand-made selection may not
        ra, rb = rewards[a], rewards[b]
        if (
            ra is None
            or rb is None
            or not (math.isfinite(ra) and math.isfinite(rb) and math.isfinite(ra - rb))
        ):
            return None, "nan_reward"
        if ra == rb:
            return None, "rewards_tied"
        chosen, rejected = (a, b) if ra > rb else (b, a)
        logp_diff = None
        if ref is not None and ref[chosen] is not None and ref[rejected] is not None:
            logp_diff = finite_or_none(abs(float(ref[chosen]) - float(ref[rejected])))
        return {
            **pair_sides(responses, chosen, rejected, generators, isinstance(prompt, list)),
            C.REWARD_CHOSEN: float(rewards[chosen]),
            C.REWARD_REJECTED: float(rewards[rejected]),
            C.REWARD_MARGIN: float(rewards[chosen]) - float(rewards[rejected]),
            C.EDIT_DISTANCE: None,
            C.LOGP_DIFF: logp_diff,
            C.DCRM: None,
            IMPLICIT_MARGIN: _difference(implicit[chosen], implicit[rejected]),
            IMPLICIT_REWARD_CHOSEN: finite_or_none(implicit[chosen]),
            IMPLICIT_REWARD_REJECTED: finite_or_none(implicit[rejected]),
        }, None

    def _preferences(self, batch: Batch, i: int, indices: list[int] | None) -> list[float | None] | None:
        column = self.config.preferences_column
        if column is None:
            return None
        values = batch[column][i]
        pairs = batch[PAIR_INDICES][i] or []
        if values is None or len(values) != len(pairs):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must hold one preference per "
                f"pair of {PAIR_INDICES!r} ({len(pairs)}), got {values!r:.200}"
            )
        return list(values)

    def _per_response(
        self, batch: Batch, column: str, i: int, n: int, indices: list[int] | None
    ) -> list[float]:
        """Row i's per-response numbers, NaN where not annotated (None)."""
        where = f"{self.name}: {row_label(batch, i, indices)}"
        note = "one per response, None where not annotated"
        return response_numbers(batch[column][i], n, where, column, note).tolist()

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The pairs rows' features, fixed so a batch without selected pairs keeps the same types."""
        passthrough = self.passthrough_columns(list(input_features))
        return pairs_features(input_features, passthrough, self.EXTRA_COLUMNS, step=self.name)


def _difference(a: float | None, b: float | None) -> float | None:
    """a − b, or None when either is unknown or the difference is not finite."""
    if finite_or_none(a) is None or finite_or_none(b) is None:
        return None
    return finite_or_none(float(a) - float(b))
