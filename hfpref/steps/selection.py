"""Pair selection: one preference pair (or a drop reason) per candidates row, by a named strategy.

Every strategy scores the ordered pairs (i, j) of a row — i the chosen response, j the rejected one — and
takes the highest score among the *eligible* pairs. Ties go to the lowest chosen index, then the lowest
rejected index (row-major order), so selection is deterministic.

A row with a missing prompt — None, blank text, no messages, or messages none of which has non-blank
content (``prompt_is_missing``) — makes no pair (``missing_prompt``): a pair without its prompt cannot be
trained on. A missing response (None in ``responses``, e.g. a failed API call) is not a candidate: it is
never paired and its per-response values (reward, generator, matrix cells) are never read. An empty
string is a real response (a model can answer ""), but it never makes a pair either (rule 2).

A pair is eligible when, in this order (the first filter that leaves no pair names the drop reason):

1. the row has at least two real (non-None) responses (else ``fewer_than_two_responses``);
2. neither response is empty or whitespace-only, and i ≠ j (else ``empty_response``);
3. both rewards are finite — a NaN, ±inf or None reward marks a failed scoring, so that response is not a
   candidate; ``ds_fix`` follows the same rule so every kept pair has finite reward columns (else
   ``nan_reward``);
4. the two texts differ, so chosen == rejected is impossible (else ``identical_responses``);
5. for different-source strategies, the two responses come from different, known (non-None) generators
   (else ``no_cross_generator_pair``); for ``ds_fix``, both generators are in ``generator_ranking`` and i's
   ranks strictly higher (else ``no_ranked_generators``);
6. reward(i) > reward(j), strictly (else ``rewards_tied``) — every strategy but ``ds_fix``;
7. p_Δ is known for the row, for the strategies that cannot do without it (else ``no_ref_logps``);
8. the strategy's score and r_Δ are finite, e.g. no NaN log-prob in the score and no r_Δ that overflows
   to ±inf from two huge finite rewards (else ``nan_metric``).

A kept pair's ``edit_distance``, ``logp_diff`` and ``dcrm`` are None where unknown or not finite (e.g. a
NaN log-prob a reward-only strategy did not need), so every number a kept pair carries is finite.

Strategies (DCRM paper §2.2, §5, Appendices E and H; e_Δ, p_Δ from ``PairMetrics``, r_Δ = r_i − r_j from
``rewards``, ε = ``SelectionConfig.eps``; where a row has no ``ref_logps`` the DCRM scores take p_Δ = 0,
as ``PairMetrics``' ``dcrm_matrix`` does):

==================  ================================================================================
``best_of_n2``      best-of-N²: highest DCRM = (σ(r_Δ) − 0.5) / (e_Δ + p_Δ + ε)
``best_of_n2_ds``   the same, restricted to pairs from different generators (the paper's DS BoN²)
``max_margin``      SS-RM baseline: highest r_Δ, i.e. chosen = highest reward, rejected = lowest
``random``          a uniformly random eligible pair; the generator is seeded from ``seed`` and a hash of
                    the row's prompt, so the pick depends on neither batch size nor row order
``ds_rm``           DS-RM: the cross-generator pair with the highest r_Δ (the paper's "BoN² (r_Δ only)"
                    DS baseline; with one response per generator it is the paper's DS-RM pair)
``ds_fix``          DS-Fix: chosen from the highest-ranked generator present, rejected from the
                    lowest-ranked one (score = rank gap), regardless of reward; within a generator the
                    lowest-index eligible response is taken
``dcrm_no_edit``    ablation −e_Δ: (σ(r_Δ) − 0.5) / (p_Δ + ε); needs ``ref_logps``
``dcrm_no_logp``    ablation −p_Δ: (σ(r_Δ) − 0.5) / (e_Δ + ε)
``dcrm_no_reward``  ablation −r_Δ: 1 / (e_Δ + p_Δ + ε), the closest pair, labelled by reward
``edit_only``       single term e_Δ: 1 / (e_Δ + ε), the pair with the smallest edit distance
``logp_only``       single term p_Δ: 1 / (p_Δ + ε), the smallest log-prob gap; needs ``ref_logps``
``reward_only``     single term r_Δ: σ(r_Δ) − 0.5 (same pick as ``max_margin`` unless σ saturates)
==================  ================================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets
import numpy as np

from hfpref.core import columns as C
from hfpref.core.columns import PAIR_COLUMNS
from hfpref.core.step import Batch, RowError, StepConfig, row_label
from hfpref.steps.pair_rows import (
    PairMaker,
    append_pair_row,
    check_response_texts,
    distinct,
    first_empty,
    pair_metrics,
    pair_sides,
    pairs_features,
    prompt_is_missing,
    prompt_seed,
    response_matrix,
    response_numbers,
    split_dropped,
    usable_pairs,
)
from hfpref.steps.selection_scores import (
    CROSS_GENERATOR_STRATEGIES,
    GENERATOR_STRATEGIES,
    STRATEGIES,
    STRATEGIES_NEEDING_REF_LOGPS,
    TERMS,
    generator_ranks,
    pick_pair,
    strategy_filters,
)


@dataclasses.dataclass
class SelectionConfig(StepConfig):
    """Settings of ``PairSelector``.

    strategy: one of ``STRATEGIES`` (see the module docstring).
    seed: non-negative seed of the ``random`` strategy.
    generator_ranking: generator names, strongest first; required by ``ds_fix``.
    eps: ε in the DCRM-style scores and in the ``dcrm`` output column (keep it equal to PairMetrics').
    """

    strategy: str = "best_of_n2"
    seed: int = 0
    generator_ranking: list[str] | None = None
    eps: float = 1.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown pair strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.strategy == "ds_fix" and not self.generator_ranking:
            raise ValueError("strategy 'ds_fix' needs generator_ranking (generator names, strongest first)")
        if self.generator_ranking is not None and len(set(self.generator_ranking)) != len(
            self.generator_ranking
        ):
            raise ValueError(f"generator_ranking names a generator twice: {self.generator_ranking!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"SelectionConfig.seed must be a non-negative int, got {self.seed!r}")
        if not self.eps > 0:
            raise ValueError(f"SelectionConfig.eps must be positive (the paper uses 1), got {self.eps!r}")


class PairSelector(PairMaker):
    """One preference pair per candidates row, chosen by ``SelectionConfig.strategy``.

    Input columns: ``prompt``, ``responses``, ``rewards``; ``edit_distance_matrix`` and/or
    ``logp_diff_matrix`` (from ``PairMetrics``) for the strategies that score e_Δ / p_Δ; ``generators`` for
    ``best_of_n2_ds``, ``ds_rm`` and ``ds_fix``. The matrices, when present, also fill ``edit_distance``,
    ``logp_diff`` and ``dcrm`` for the other strategies.

    Output columns, one row per input row: ``prompt``; ``chosen``, ``rejected`` (strings for a standard
    prompt, ``[{"role": "assistant", "content": text}]`` for a conversational one); ``chosen_index``,
    ``rejected_index``, ``chosen_generator``, ``rejected_generator`` (None without generators),
    ``reward_chosen``, ``reward_rejected``, ``reward_margin``, ``edit_distance``, ``logp_diff``, ``dcrm``
    (None when unknown); ``pair_strategy``; ``drop_reason`` (None for a kept row, else a code from the
    module docstring, with the pair columns None); and every other input column except per-response lists
    (``columns.PER_RESPONSE_COLUMNS``) and the N×N matrices.
    """

    config_class = SelectionConfig
    version = "2"  # 2: missing prompts dropped, None responses never candidates
    config: SelectionConfig

    def input_columns(self) -> list[str]:
        needed = [C.PROMPT, C.RESPONSES, C.REWARDS]
        terms = TERMS[self.config.strategy]
        if "e" in terms:
            needed.append(C.EDIT_DISTANCE_MATRIX)
        if "p" in terms or "p!" in terms:
            needed.append(C.LOGP_DIFF_MATRIX)
        if self.config.strategy in GENERATOR_STRATEGIES:
            needed.append(C.GENERATORS)
        return needed

    def output_columns(self) -> list[str]:
        return [C.PROMPT, *PAIR_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON]

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        out, passthrough = self.empty_output(batch)
        for i in range(len(batch[C.PROMPT])):
            pair, reason = self._select_row(batch, i, indices)
            append_pair_row(out, batch, i, pair, PAIR_COLUMNS, self.config.strategy, reason, passthrough)
        return out

    def _select_row(
        self, batch: Batch, i: int, indices: list[int] | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The chosen pair's columns and None, or None and the drop reason (rules in the module docstring)."""
        cfg, prompt = self.config, batch[C.PROMPT][i]
        strategy = cfg.strategy
        if prompt_is_missing(prompt):
            return None, "missing_prompt"
        where = f"{self.name}: {row_label(batch, i, indices)}"
        responses, rewards, generators = self._read_row(batch, i, where)
        n = len(responses)
        # a missing response is no candidate: masked out by ``usable_pairs`` before any of its values is read
        if sum(text is not None for text in responses) < 2:
            return None, "fewer_than_two_responses"
        edit = response_matrix(batch, C.EDIT_DISTANCE_MATRIX, i, n, where)
        logp = response_matrix(batch, C.LOGP_DIFF_MATRIX, i, n, where)
        texts = ["" if t is None else t for t in responses]  # placeholders only: None is never usable
        rank_of = generator_ranks(generators, cfg.generator_ranking) if strategy == "ds_fix" else None
        finite = np.isfinite(rewards)
        eligible, reason = first_empty(
            [
                ("empty_response", lambda: usable_pairs(responses)),
                ("nan_reward", lambda: finite[:, None] & finite[None, :]),
                ("identical_responses", lambda: distinct(texts)),
                *strategy_filters(strategy, rewards, generators, rank_of, logp is not None),
            ],
            n,
        )
        if reason is not None:
            return None, reason
        best = pick_pair(strategy, eligible, rewards, edit, logp, rank_of, cfg.eps, cfg.seed, prompt)
        if best is None:
            return None, "nan_metric"
        chosen, rejected = divmod(best, n)
        margin = rewards[chosen] - rewards[rejected]
        return {
            **pair_sides(texts, chosen, rejected, generators, isinstance(prompt, list)),
            C.REWARD_CHOSEN: float(rewards[chosen]),
            C.REWARD_REJECTED: float(rewards[rejected]),
            C.REWARD_MARGIN: float(margin),
            # unknown or non-finite metric values of the chosen pair are written as None, never as NaN
            **pair_metrics(edit, logp, chosen, rejected, margin, cfg.eps),
        }, None

    def _read_row(self, batch: Batch, i: int, where: str) -> tuple[list, np.ndarray, list | None]:
        """Row ``i``'s responses, rewards and generators (None without the column), after checking them."""
        responses = batch[C.RESPONSES][i] or []
        n = len(responses)
        rewards = response_numbers(batch[C.REWARDS][i], n, where, C.REWARDS)
        generators = self._generators(batch, i, n, where)
        check_response_texts(responses, where)
        return responses, rewards, generators

    def _generators(self, batch: Batch, i: int, n: int, where: str) -> list[str | None] | None:
        if C.GENERATORS not in batch:
            return None
        values = batch[C.GENERATORS][i]
        if values is None:
            return [None] * n
        if len(values) != n:
            raise RowError(
                f"{where} column {C.GENERATORS!r} has {len(values)} values for {n} responses: {values!r}"
            )
        return list(values)

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The pairs dataset's features, fixed so batches whose rows were all dropped keep the same types."""
        return pairs_features(input_features, self.passthrough_columns(list(input_features)), step=self.name)


__all__ = [
    "CROSS_GENERATOR_STRATEGIES",
    "PAIR_COLUMNS",
    "STRATEGIES",
    "STRATEGIES_NEEDING_REF_LOGPS",
    "PairSelector",
    "SelectionConfig",
    "pairs_features",
    "prompt_is_missing",
    "prompt_seed",
    "split_dropped",
]
