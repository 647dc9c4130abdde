"""Annotation budgets of the iterate loop: the schedule's per-round weights and each round's share or count.

``budget.fraction`` F is the share of all sampled pairs annotated over all rounds (every round samples
the same prompts with the same N, so each has the same number of pairs); round r annotates F · R · w_r of
its pairs, where the schedule's weights w sum to 1. ``budget.pairs`` is a total count instead (corpus level
only), split by the same weights with largest-remainder rounding so the rounds sum exactly to it. A
warm-up share s takes s of that same total, and the rounds split the rest (1 − s).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from hfpref.core.stats import largest_remainder
from hfpref.pipeline.iterate.errors import IterateError
from hfpref.pipeline.validate import as_mapping, check_keys

SCHEDULES = ("constant", "increasing", "decreasing")


def schedule_weights(schedule: str | Sequence[float], rounds: int) -> list[float]:
    """Per-round shares of the total budget (they sum to 1)."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise IterateError(f"budget.schedule: {schedule!r} is not one of {list(SCHEDULES)} or a list")
        raw = {
            "constant": [1.0] * rounds,
            "increasing": [float(r) for r in range(1, rounds + 1)],
            "decreasing": [float(r) for r in range(rounds, 0, -1)],
        }[schedule]
    else:
        raw = [float(w) for w in schedule]
        if len(raw) != rounds or any(not math.isfinite(w) or w < 0 for w in raw) or sum(raw) <= 0:
            raise IterateError(
                f"budget.schedule: a list needs {rounds} non-negative weights (one per round), got {schedule!r}"
            )
    total = sum(raw)
    return [w / total for w in raw]


@dataclasses.dataclass
class BudgetSpec:
    """Exactly one of ``fraction`` (share of all pairs over all rounds) or ``pairs`` (a total count), and
    the ``schedule`` that spreads it over the rounds."""

    fraction: float | None = None
    pairs: int | None = None
    schedule: str | list[float] = "decreasing"

    @classmethod
    def from_dict(cls, raw: Any) -> BudgetSpec:
        raw = as_mapping(raw, "budget")
        check_keys(raw, ("fraction", "pairs", "schedule"), "budget")
        spec = cls(**raw)
        if (spec.fraction is None) == (spec.pairs is None):
            raise IterateError(
                "budget: give exactly one of 'fraction' (0 < F <= 1) or 'pairs' (a total count)"
            )
        if spec.fraction is not None and not (
            isinstance(spec.fraction, (int, float)) and 0 < spec.fraction <= 1
        ):
            raise IterateError(f"budget.fraction must be in (0, 1], got {spec.fraction!r}")
        if spec.pairs is not None and not (
            isinstance(spec.pairs, int) and not isinstance(spec.pairs, bool) and spec.pairs >= 1
        ):
            raise IterateError(f"budget.pairs must be a positive int, got {spec.pairs!r}")
        return spec

    def per_round(self, rounds: int, warmup: float | None = None) -> list[dict[str, Any]]:
        """Each round's budget as ``AnnotationSelectionConfig`` fields: ``{"fraction": f}`` or ``{"count": n}``.

        With a ``warmup`` share s, the list starts with round 0's budget (s of the total) and the rounds
        share the rest by the schedule.
        """
        weights = schedule_weights(self.schedule, rounds)
        first = 1
        if warmup is not None:
            weights = [warmup] + [(1 - warmup) * w for w in weights]
            first = 0
        if self.pairs is not None:
            counts = list(largest_remainder(self.pairs, dict(enumerate(weights))).values())
            if warmup is not None and counts[0] == 0:
                raise IterateError(
                    f"warmup: fraction {warmup} of budget.pairs {self.pairs} is no pair; raise either"
                )
            return [{"count": n} for n in counts]
        fractions = [self.fraction * rounds * w for w in weights]
        too_big = [(r + first, f) for r, f in enumerate(fractions) if f > 1 + 1e-12]
        if too_big:
            raise IterateError(
                f"budget: fraction {self.fraction} over {rounds} rounds with schedule {self.schedule!r}"
                + (f" and warm-up share {warmup}" if warmup is not None else "")
                + f" asks round(s) {[r for r, _ in too_big]} to annotate more than all their pairs "
                f"({', '.join(f'{f:.3g}' for _, f in too_big)}); lower the fraction or flatten the schedule"
            )
        return [{"fraction": min(f, 1.0)} for f in fractions]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            {"fraction": self.fraction} if self.fraction is not None else {"pairs": self.pairs}
        )
        out["schedule"] = self.schedule if isinstance(self.schedule, str) else list(self.schedule)
        return out
