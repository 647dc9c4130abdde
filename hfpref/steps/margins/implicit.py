"""DPO implicit rewards of candidate responses and implicit margins of their pairs: ``ImplicitMargins``.

r̂(y) = β · (log π_θ(y|x) − log π_ref(y|x)), optionally per token; the margin of an unordered pair {i, j},
i < j, is r̂(y_i) − r̂(y_j) (see ``hfpref.steps.margins`` for the paper and how the margins are used).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label


def implicit_rewards(
    policy_logps: Sequence[float],
    ref_logps: Sequence[float],
    beta: float,
    *,
    policy_token_counts: Sequence[int] | None = None,
    ref_token_counts: Sequence[int] | None = None,
) -> np.ndarray:
    """r̂(y) = β·(log π_θ(y|x) − log π_ref(y|x)) per response; per-token log-probs when counts are given."""
    policy = np.asarray(policy_logps, dtype=np.float64)
    ref = np.asarray(ref_logps, dtype=np.float64)
    if (policy_token_counts is None) != (ref_token_counts is None):
        raise ValueError("length normalisation needs both policy_token_counts and ref_token_counts")
    if policy_token_counts is not None:
        policy = policy / np.asarray(policy_token_counts, dtype=np.float64)
        ref = ref / np.asarray(ref_token_counts, dtype=np.float64)
    return beta * (policy - ref)


def unordered_pairs(n: int) -> list[tuple[int, int]]:
    """The N(N−1)/2 pairs (i, j), i < j, in a fixed order: (0, 1), (0, 2), ..., (N−2, N−1)."""
    return list(itertools.combinations(range(n), 2))


def pair_margins(rewards: Sequence[float]) -> np.ndarray:
    """r̂_i − r̂_j for every pair of ``unordered_pairs(len(rewards))``, in that order."""
    values = np.asarray(rewards, dtype=np.float64)
    pairs = unordered_pairs(len(values))
    if not pairs:
        return np.zeros(0)
    first, second = np.array(pairs).T
    return values[first] - values[second]


@dataclasses.dataclass
class MarginConfig(StepConfig):
    """``beta``: DPO's β (use the β the policy was trained with; the ranking does not depend on it).
    ``length_normalize``: divide each summed log-prob by its token count first."""

    beta: float = 0.1
    length_normalize: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ValueError(f"MarginConfig.beta must be a positive number, got {self.beta!r}")


class ImplicitMargins(Step):
    """DPO implicit rewards of every response and implicit margins of every unordered pair.

    Input columns: ``responses``, ``policy_logps``, ``ref_logps`` (list[float]); with ``length_normalize``
    also ``policy_token_counts``, ``ref_token_counts`` (list[int]). A missing response (None) may have None
    in these columns (the log-prob steps write None for it); every other response needs finite numbers.
    Output columns: ``implicit_rewards`` (list[float], r̂ per response, None for a missing response),
    ``pair_indices`` (list of [i, j], i < j), ``implicit_margins`` (list[float], r̂_i − r̂_j per pair, NaN
    for a pair with a missing response).
    """

    # the public path, as before the split: manifests name the step by it and its fingerprint hashes it, so
    # cached outputs and released recipes stay valid (the package re-exports the class under this path)
    __module__ = "hfpref.steps.margins"

    config_class = MarginConfig
    version = "2"  # 2: missing (None) responses get None rewards and NaN margins instead of an error
    config: MarginConfig

    def input_columns(self) -> list[str]:
        needed = [C.RESPONSES, C.POLICY_LOGPS, C.REF_LOGPS]
        if self.config.length_normalize:
            needed += [C.POLICY_TOKEN_COUNTS, C.REF_TOKEN_COUNTS]
        return needed

    def output_columns(self) -> list[str]:
        return [C.IMPLICIT_REWARDS, C.PAIR_INDICES, C.IMPLICIT_MARGINS]

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        out: Batch = {name: [] for name in self.output_columns()}
        for i, responses in enumerate(batch[C.RESPONSES]):
            missing = [text is None for text in responses or []]
            n = len(missing)
            policy = self._numbers(batch, C.POLICY_LOGPS, i, missing, indices)
            ref = self._numbers(batch, C.REF_LOGPS, i, missing, indices)
            counts = {}
            if self.config.length_normalize:
                for name in (C.POLICY_TOKEN_COUNTS, C.REF_TOKEN_COUNTS):
                    counts[name] = self._numbers(batch, name, i, missing, indices, positive=True)
            rewards = implicit_rewards(
                policy,
                ref,
                self.config.beta,
                policy_token_counts=counts.get(C.POLICY_TOKEN_COUNTS),
                ref_token_counts=counts.get(C.REF_TOKEN_COUNTS),
            )
            # a missing response's NaN reward makes its pairs' margins NaN; the reward itself is written None
            out[C.IMPLICIT_REWARDS].append(
                [None if gone else r for gone, r in zip(missing, rewards.tolist(), strict=True)]
            )
            out[C.PAIR_INDICES].append([list(p) for p in unordered_pairs(n)])
            out[C.IMPLICIT_MARGINS].append(pair_margins(rewards).tolist())
        return out

    def _numbers(
        self,
        batch: Batch,
        column: str,
        i: int,
        missing: list[bool],
        indices: list[int] | None,
        positive: bool = False,
    ) -> list[float]:
        """Row i's values, NaN for missing responses (which may hold None); finite numbers required elsewhere."""
        values = batch[column][i]
        n = len(missing)

        def ok(value: Any, gone: bool) -> bool:
            if gone and value is None:
                return True
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            return number and (value > 0 or not positive)

        if not (
            isinstance(values, (list, tuple))
            and len(values) == n
            and all(ok(v, gone) for v, gone in zip(values, missing, strict=True))
        ):
            want = "positive numbers" if positive else "finite numbers"
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must hold {n} {want} "
                f"(one per response; None only for a missing response), got {values!r}"
            )
        return [math.nan if v is None else v for v in values]

    def output_features(self, input_features: Any) -> Any:
        """The output columns' types, fixed up front (a batch of missing responses only holds only None)."""
        import datasets

        real = datasets.Value("float64")
        return datasets.Features(
            {
                **input_features,
                C.IMPLICIT_REWARDS: datasets.List(real),
                C.PAIR_INDICES: datasets.List(datasets.List(datasets.Value("int64"))),
                C.IMPLICIT_MARGINS: datasets.List(real),
            }
        )
