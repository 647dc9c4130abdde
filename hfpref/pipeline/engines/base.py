"""What every engine shares: pair selection as one pass over the selectors, each written through
``Step.apply`` so its pairs are encoded and cached the same whichever engine computed them.

An engine subclass decides only which selectors it runs elsewhere (``run_selectors``: worker processes, Ray
tasks), returning their pairs as ``datasets`` read back from the cache; this class yields every strategy's
pairs in order, applying in this process the selectors the engine left to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hfpref.core.step import Step


class Engine:
    """Base class of the engines: the ``select_pairs`` and ``close`` half of the engine protocol."""

    name = "engine"

    def map_step(self, step: Step, dataset: Any, *, batch_size: int = 64, num_proc: int | None = None) -> Any:
        """``step``'s output over ``dataset`` (cached and resumable)."""
        raise NotImplementedError

    def run_selectors(
        self, selectors: dict[str, Step], candidates: Any, *, batch_size: int, num_proc: int | None
    ) -> dict[str, Any]:
        """Run the selectors this engine runs elsewhere; return their pairs by strategy (a strategy left out
        is computed, or found in the cache, by its selector in this process)."""
        return {}

    def select_pairs(
        self,
        selectors: dict[str, Step],
        candidates: Any,
        *,
        batch_size: int = 64,
        num_proc: int | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """(strategy, pairs with ``drop_reason``) for each selector, in order; the same rows and fingerprints
        on every engine."""
        computed = self.run_selectors(selectors, candidates, batch_size=batch_size, num_proc=num_proc)
        for strategy, selector in selectors.items():
            if strategy in computed:
                yield strategy, computed[strategy]
            else:
                yield strategy, selector.apply(candidates, batch_size=batch_size, desc=f"pairs: {strategy}")

    def close(self) -> None:
        """Release what the engine holds (nothing, unless a subclass says otherwise)."""


__all__ = ["Engine"]
