"""The pair strategies of ``PairSelector``: which pairs each may take, and how it scores them.

``hfpref.steps.selection``'s docstring is the specification (the strategies table and the drop reasons);
this module holds the per-strategy parts of it, one function per strategy family: the filters that family
adds to the common ones (``strategy_filters``) and how it picks one pair among the eligible ones
(``pick_pair``: seeded random, rank gap for ``ds_fix``, or a score for the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hfpref.steps.pair_metrics import dcrm
from hfpref.steps.pair_rows import distinct, prompt_seed

# which pair-metric terms each strategy reads: "e" = e_Δ, "p" = p_Δ (0 where unknown), "p!" = p_Δ required
TERMS: dict[str, tuple[str, ...]] = {
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
STRATEGIES: tuple[str, ...] = tuple(TERMS)
# strategies that score p_Δ alone: every row without ref_logps is dropped (``no_ref_logps``)
STRATEGIES_NEEDING_REF_LOGPS: tuple[str, ...] = tuple(name for name, terms in TERMS.items() if "p!" in terms)
CROSS_GENERATOR_STRATEGIES = ("best_of_n2_ds", "ds_rm")
# strategies that read ``generators``
GENERATOR_STRATEGIES = (*CROSS_GENERATOR_STRATEGIES, "ds_fix")

Filter = tuple[str, Callable[[], np.ndarray]]


def _sigma_centered(margin: np.ndarray) -> np.ndarray:
    """σ(x) − 0.5, as tanh(x/2)/2 (identical, and exact in sign for tiny margins)."""
    return 0.5 * np.tanh(0.5 * margin)


def scores(
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


def generator_ranks(generators: Sequence[str | None], ranking: Sequence[str] | None) -> np.ndarray:
    """Each response's generator rank (0 = strongest); +inf for generators outside the ranking."""
    rank_of = {name: k for k, name in enumerate(ranking or [])}
    return np.array([rank_of.get(g, math.inf) if g is not None else math.inf for g in generators])


def strategy_filters(
    strategy: str,
    rewards: np.ndarray,
    generators: Sequence[str | None] | None,
    rank_of: np.ndarray | None,
    has_logps: bool,
) -> list[Filter]:
    """The eligibility rules a strategy adds after the common ones (rules 5 to 7 of the docstring), in order:
    different generators (cross-generator strategies) or ranked generators (``ds_fix``), a strictly higher
    reward (every strategy but ``ds_fix``), and known p_Δ (strategies that score p_Δ alone)."""
    n = len(rewards)
    filters: list[Filter] = []
    if strategy in CROSS_GENERATOR_STRATEGIES:
        known = np.array([g is not None for g in generators])
        filters.append(
            ("no_cross_generator_pair", lambda: known[:, None] & known[None, :] & distinct(generators))
        )
    if strategy == "ds_fix":
        ranked = np.isfinite(rank_of)
        filters.append(
            (
                "no_ranked_generators",
                lambda: ranked[:, None] & ranked[None, :] & (rank_of[:, None] < rank_of[None, :]),
            )
        )
    else:
        filters.append(("rewards_tied", lambda: rewards[:, None] > rewards[None, :]))
    if "p!" in TERMS[strategy]:
        filters.append(("no_ref_logps", lambda: np.full((n, n), has_logps)))
    return filters


def pick_pair(
    strategy: str,
    eligible: np.ndarray,
    rewards: np.ndarray,
    edit: np.ndarray | None,
    logp: np.ndarray | None,
    rank_of: np.ndarray | None,
    eps: float,
    seed: int,
    prompt: Any,
) -> int | None:
    """The flat index (chosen · N + rejected) of the strategy's pair among the eligible ones; None when no
    eligible pair has a finite r_Δ and score (rule 8, ``nan_metric``). ``eligible`` is narrowed in place."""
    n = len(rewards)
    with np.errstate(over="ignore", invalid="ignore"):  # two huge rewards: r_Δ overflows to ±inf
        margin = rewards[:, None] - rewards[None, :]
    eligible &= np.isfinite(margin)
    if not eligible.any():
        return None
    if strategy == "random":
        cells = np.flatnonzero(eligible)
        rng = np.random.default_rng([seed, prompt_seed(prompt)])
        return int(cells[rng.integers(len(cells))])
    if strategy == "ds_fix":
        with np.errstate(invalid="ignore"):  # unranked generators (inf − inf) are not eligible anyway
            score = rank_of[None, :] - rank_of[:, None]
    else:
        p_known = logp if logp is not None else np.zeros((n, n))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN cells are filtered just below
            score = scores(strategy, margin, edit, p_known, eps)
    eligible &= np.isfinite(score)
    if not eligible.any():
        return None
    # argmax returns the first maximum in row-major order: ties go to the lowest (chosen, rejected)
    return int(np.argmax(np.where(eligible, score, -np.inf)))


__all__ = [
    "CROSS_GENERATOR_STRATEGIES",
    "GENERATOR_STRATEGIES",
    "STRATEGIES",
    "STRATEGIES_NEEDING_REF_LOGPS",
    "TERMS",
    "generator_ranks",
    "pick_pair",
    "scores",
    "strategy_filters",
]
