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

import collections
import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.steps.pair_metrics import MATRIX_COLUMNS, dcrm

# which pair-metric terms each strategy reads: "e" = e_Δ, "p" = p_Δ (0 where unknown), "p!" = p_Δ required
_TERMS: dict[str, tuple[str, ...]] = {
    "best_of_n2": ("e", "p"),
    "best_of_n2_ds": ("e", "p"),
    "max_margin": (),
    "random": (),
    "ds_rm": (),
    "ds_fix": (),
    "dcrm_no_edit": ("p!",),
    "dcrm_no_logp": ("e",),
    "dcrm_no_reward": ("e", "p"),
    "edit_only": ("e",),
    "logp_only": ("p!",),
    "reward_only": (),
}
STRATEGIES: tuple[str, ...] = tuple(_TERMS)
# strategies that score p_Δ alone: every row without ref_logps is dropped (``no_ref_logps``)
STRATEGIES_NEEDING_REF_LOGPS: tuple[str, ...] = tuple(name for name, terms in _TERMS.items() if "p!" in terms)
CROSS_GENERATOR_STRATEGIES = ("best_of_n2_ds", "ds_rm")

PAIR_COLUMNS = (
    C.CHOSEN,
    C.REJECTED,
    C.CHOSEN_INDEX,
    C.REJECTED_INDEX,
    C.CHOSEN_GENERATOR,
    C.REJECTED_GENERATOR,
    C.REWARD_CHOSEN,
    C.REWARD_REJECTED,
    C.REWARD_MARGIN,
    C.EDIT_DISTANCE,
    C.LOGP_DIFF,
    C.DCRM,
)
# per-response lists and N×N matrices describe candidates, not a pair: they are not passed through
_NOT_PASSED_THROUGH = frozenset(C.PER_RESPONSE_COLUMNS) | frozenset(MATRIX_COLUMNS)


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


def _sigma_centered(margin: np.ndarray) -> np.ndarray:
    """σ(x) − 0.5, as tanh(x/2)/2 (identical, and exact in sign for tiny margins)."""
    return 0.5 * np.tanh(0.5 * margin)


def _scores(
    strategy: str, r: np.ndarray, e: np.ndarray | None, p: np.ndarray | None, eps: float
) -> np.ndarray:
    """Score of every ordered pair under a score-based strategy (higher is better)."""
    scorers: dict[str, Callable[[], np.ndarray]] = {
        "best_of_n2": lambda: dcrm(r, e, p, eps),
        "best_of_n2_ds": lambda: dcrm(r, e, p, eps),
        "max_margin": lambda: r,
        "ds_rm": lambda: r,
        "dcrm_no_edit": lambda: _sigma_centered(r) / (p + eps),
        "dcrm_no_logp": lambda: _sigma_centered(r) / (e + eps),
        "dcrm_no_reward": lambda: 1.0 / (e + p + eps),
        "edit_only": lambda: 1.0 / (e + eps),
        "logp_only": lambda: 1.0 / (p + eps),
        "reward_only": lambda: _sigma_centered(r),
    }
    return np.asarray(scorers[strategy](), dtype=np.float64)


def _finite_or_none(value: Any) -> float | None:
    """A float, or None for a value that is None, NaN or ±inf."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def prompt_is_missing(prompt: Any) -> bool:
    """Whether a prompt gives a model nothing to answer: None, blank text, no messages, or chat messages none of
    which has non-blank text content. Pair makers drop such rows with ``missing_prompt``."""
    if prompt is None:
        return True
    if isinstance(prompt, str):
        return not prompt.strip()
    if isinstance(prompt, Sequence):
        return not any(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) and m["content"].strip()
            for m in prompt
        )
    return False  # not a prompt type at all: left to the steps' own type checks


def prompt_seed(prompt: Any) -> int:
    """A stable 64-bit integer from a prompt (str or list of messages), independent of Python's hash seed."""
    payload = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(payload.encode()).digest()[:8], "little")


class PairSelector(Step):
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
    changes_row_count = True
    config: SelectionConfig

    def _terms(self) -> tuple[str, ...]:
        return _TERMS[self.config.strategy]

    def input_columns(self) -> list[str]:
        needed = [C.PROMPT, C.RESPONSES, C.REWARDS]
        terms = self._terms()
        if "e" in terms:
            needed.append(C.EDIT_DISTANCE_MATRIX)
        if "p" in terms or "p!" in terms:
            needed.append(C.LOGP_DIFF_MATRIX)
        if self.config.strategy in (*CROSS_GENERATOR_STRATEGIES, "ds_fix"):
            needed.append(C.GENERATORS)
        return needed

    def output_columns(self) -> list[str]:
        return [C.PROMPT, *PAIR_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON]

    @staticmethod
    def passthrough_columns(column_names: list[str]) -> list[str]:
        """The input columns copied unchanged to the pairs rows."""
        excluded = _NOT_PASSED_THROUGH | {C.PROMPT, *PAIR_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON}
        return [name for name in column_names if name not in excluded]

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        passthrough = self.passthrough_columns(list(batch))
        out: Batch = {name: [] for name in [*self.output_columns(), *passthrough]}
        for i in range(len(batch[C.PROMPT])):
            pair, reason = self._select_row(batch, i, indices)
            prompt = batch[C.PROMPT][i]
            out[C.PROMPT].append(prompt)
            if pair is None:
                for name in PAIR_COLUMNS:
                    out[name].append(None)
            else:
                conversational = isinstance(prompt, list)
                for name in (C.CHOSEN, C.REJECTED):
                    text = pair[name]
                    out[name].append([{"role": "assistant", "content": text}] if conversational else text)
                for name in PAIR_COLUMNS[2:]:
                    out[name].append(pair[name])
            out[C.PAIR_STRATEGY].append(self.config.strategy)
            out[C.DROP_REASON].append(reason)
            for name in passthrough:
                out[name].append(batch[name][i])
        return out

    def _select_row(
        self, batch: Batch, i: int, indices: list[int] | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The chosen pair's columns and None, or None and the drop reason."""
        strategy = self.config.strategy
        if prompt_is_missing(batch[C.PROMPT][i]):
            return None, "missing_prompt"
        responses = batch[C.RESPONSES][i] or []
        n = len(responses)
        rewards = self._floats(batch, C.REWARDS, i, n, indices)
        generators = self._generators(batch, i, n, indices)
        for k, text in enumerate(responses):
            if text is not None and not isinstance(text, str):
                raise RowError(
                    f"{self.name}: {row_label(batch, i, indices)} column {C.RESPONSES!r}[{k}] must be a "
                    f"string or None (missing), got {type(text).__name__} {text!r}"
                )
        # a missing response is no candidate: masked out by ``usable`` before any of its values is read
        present = np.array([t is not None for t in responses], dtype=bool)
        if present.sum() < 2:
            return None, "fewer_than_two_responses"
        edit = self._matrix(batch, C.EDIT_DISTANCE_MATRIX, i, n, indices)
        logp = self._matrix(batch, C.LOGP_DIFF_MATRIX, i, n, indices)

        texts = ["" if t is None else t for t in responses]  # placeholders only: None is never usable
        usable = present & np.array([t.strip() != "" for t in texts], dtype=bool)
        finite = np.isfinite(rewards)
        off_diagonal = ~np.eye(n, dtype=bool)
        filters: list[tuple[str, Callable[[], np.ndarray]]] = [
            ("empty_response", lambda: usable[:, None] & usable[None, :] & off_diagonal),
            ("nan_reward", lambda: finite[:, None] & finite[None, :]),
            ("identical_responses", lambda: self._distinct_texts(texts)),
        ]
        if strategy in CROSS_GENERATOR_STRATEGIES:
            filters.append(("no_cross_generator_pair", lambda: self._cross_generator(generators)))
        if strategy == "ds_fix":
            rank_of = self._generator_ranks(generators)
            ranked = np.isfinite(rank_of)
            filters.append(
                (
                    "no_ranked_generators",
                    lambda: ranked[:, None] & ranked[None, :] & (rank_of[:, None] < rank_of[None, :]),
                )
            )
        else:
            filters.append(("rewards_tied", lambda: rewards[:, None] > rewards[None, :]))
        if "p!" in self._terms():
            filters.append(("no_ref_logps", lambda: np.full((n, n), logp is not None)))

        eligible = np.ones((n, n), dtype=bool)
        with np.errstate(invalid="ignore"):
            for reason, keep in filters:
                eligible &= keep()
                if not eligible.any():
                    return None, reason

        with np.errstate(over="ignore", invalid="ignore"):  # two huge rewards: r_Δ overflows to ±inf
            margin = rewards[:, None] - rewards[None, :]
        eligible &= np.isfinite(margin)
        if not eligible.any():
            return None, "nan_metric"
        if strategy == "random":
            cells = np.flatnonzero(eligible)
            rng = np.random.default_rng([self.config.seed, prompt_seed(batch[C.PROMPT][i])])
            best = int(cells[rng.integers(len(cells))])
        else:
            if strategy == "ds_fix":
                with np.errstate(invalid="ignore"):  # unranked generators (inf − inf) are not eligible anyway
                    score = rank_of[None, :] - rank_of[:, None]
            else:
                zeros = np.zeros((n, n))
                p_known = logp if logp is not None else zeros
                with np.errstate(invalid="ignore", over="ignore"):  # NaN cells are filtered just below
                    score = _scores(strategy, margin, edit, p_known, self.config.eps)
            eligible &= np.isfinite(score)
            if not eligible.any():
                return None, "nan_metric"
            # argmax returns the first maximum in row-major order: ties go to the lowest (chosen, rejected)
            best = int(np.argmax(np.where(eligible, score, -np.inf)))
        chosen, rejected = divmod(best, n)
        # unknown or non-finite metric values of the chosen pair are written as None, never as NaN
        edit_value = None if edit is None else _finite_or_none(edit[chosen, rejected])
        logp_value = None if logp is None else _finite_or_none(logp[chosen, rejected])
        dcrm_value = None
        if edit_value is not None and (logp is None or logp_value is not None):
            dcrm_value = dcrm(margin[chosen, rejected], edit_value, logp_value or 0.0, self.config.eps)
        return {
            C.CHOSEN: texts[chosen],
            C.REJECTED: texts[rejected],
            C.CHOSEN_INDEX: chosen,
            C.REJECTED_INDEX: rejected,
            C.CHOSEN_GENERATOR: None if generators is None else generators[chosen],
            C.REJECTED_GENERATOR: None if generators is None else generators[rejected],
            C.REWARD_CHOSEN: float(rewards[chosen]),
            C.REWARD_REJECTED: float(rewards[rejected]),
            C.REWARD_MARGIN: float(margin[chosen, rejected]),
            C.EDIT_DISTANCE: edit_value,
            C.LOGP_DIFF: logp_value,
            C.DCRM: dcrm_value,
        }, None

    # ---- row helpers -----------------------------------------------------------------------
    @staticmethod
    def _distinct_texts(texts: list[str]) -> np.ndarray:
        codes = {text: k for k, text in enumerate(dict.fromkeys(texts))}
        ids = np.array([codes[t] for t in texts])
        return ids[:, None] != ids[None, :]

    @staticmethod
    def _cross_generator(generators: list[str | None]) -> np.ndarray:
        known = np.array([g is not None for g in generators])
        codes = {g: k for k, g in enumerate(dict.fromkeys(generators))}
        ids = np.array([codes[g] for g in generators])
        return known[:, None] & known[None, :] & (ids[:, None] != ids[None, :])

    def _generator_ranks(self, generators: list[str | None]) -> np.ndarray:
        """Each response's generator rank (0 = strongest); +inf for generators outside the ranking."""
        ranking = {name: k for k, name in enumerate(self.config.generator_ranking or [])}
        return np.array([ranking.get(g, math.inf) if g is not None else math.inf for g in generators])

    def _floats(self, batch: Batch, column: str, i: int, n: int, indices: list[int] | None) -> np.ndarray:
        values = batch[column][i]
        if values is None:
            return np.full(n, np.nan)
        if len(values) != n or not all(v is None or isinstance(v, numbers.Real) for v in values):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must hold {n} numbers "
                f"(one per response), got {values!r}"
            )
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def _generators(self, batch: Batch, i: int, n: int, indices: list[int] | None) -> list[str | None] | None:
        if C.GENERATORS not in batch:
            return None
        values = batch[C.GENERATORS][i]
        if values is None:
            return [None] * n
        if len(values) != n:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {C.GENERATORS!r} has {len(values)} "
                f"values for {n} responses: {values!r}"
            )
        return list(values)

    def _matrix(
        self, batch: Batch, column: str, i: int, n: int, indices: list[int] | None
    ) -> np.ndarray | None:
        if column not in batch or batch[column][i] is None:
            return None
        rows = batch[column][i]
        try:
            matrix = np.array(rows, dtype=np.float64)  # None cells become NaN
        except (TypeError, ValueError) as err:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} is not a numeric matrix: {rows!r}"
            ) from err
        if matrix.shape != (n, n):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} has shape {matrix.shape} for "
                f"{n} responses (rerun PairMetrics after changing responses)"
            )
        return matrix

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The pairs dataset's features, fixed so batches whose rows were all dropped keep the same types."""
        return pairs_features(input_features, self.passthrough_columns(list(input_features)), step=self.name)


def pairs_features(
    input_features: datasets.Features,
    passthrough: Sequence[str],
    extra_float_columns: Sequence[str] = (),
    step: str = "pair selection",
) -> datasets.Features:
    """Features of pairs rows (TRL's preference format, DESIGN.md's pair metadata, ``drop_reason``).

    Fixed up front, so a batch whose rows were all dropped (all pair columns None) keeps the same
    Arrow types as the others. ``chosen``/``rejected`` follow the prompt: strings for a standard
    prompt, a list of one assistant message for a conversational one.
    """
    prompt_feature = input_features[C.PROMPT]
    if prompt_feature == datasets.Value("string"):
        completion: Any = datasets.Value("string")
    elif isinstance(prompt_feature, (datasets.List, datasets.LargeList)):
        completion = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    else:
        raise TypeError(
            f"{step}: column {C.PROMPT!r} must be a string or a list of messages, its feature is {prompt_feature}"
        )
    string, integer, real = datasets.Value("string"), datasets.Value("int64"), datasets.Value("float64")
    features: dict[str, Any] = {
        C.PROMPT: prompt_feature,
        C.CHOSEN: completion,
        C.REJECTED: completion,
        C.CHOSEN_INDEX: integer,
        C.REJECTED_INDEX: integer,
        C.CHOSEN_GENERATOR: string,
        C.REJECTED_GENERATOR: string,
        **{name: real for name in PAIR_COLUMNS[6:]},
        **{name: real for name in extra_float_columns},
        C.PAIR_STRATEGY: string,
        C.DROP_REASON: string,
    }
    for name in passthrough:
        features[name] = input_features[name]
    return datasets.Features(features)


def split_dropped(pairs: datasets.Dataset) -> tuple[datasets.Dataset, collections.Counter]:
    """The kept pairs (without ``drop_reason``) and how many rows each drop reason removed."""
    reasons = collections.Counter(r for r in pairs[C.DROP_REASON] if r is not None)
    kept = pairs.filter(
        lambda reason: [r is None for r in reason],
        batched=True,
        input_columns=C.DROP_REASON,
        desc="kept pairs",
    )
    return kept.remove_columns(C.DROP_REASON), reasons


__all__ = [
    "CROSS_GENERATOR_STRATEGIES",
    "PAIR_COLUMNS",
    "STRATEGIES",
    "PairSelector",
    "SelectionConfig",
    "prompt_is_missing",
    "prompt_seed",
    "split_dropped",
]
