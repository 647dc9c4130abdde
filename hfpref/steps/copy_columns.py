"""``CopyColumns``: columns copied under new names, where a copy stands in for a computation.

The iterate loop uses it when a round's policy is its own DPO reference: the policy's log-probs are then
the reference's, so they are copied rather than computed twice (``hfpref.pipeline.iterate.rounds``).
"""

from __future__ import annotations

import dataclasses

from hfpref.core.step import Batch, Step, StepConfig


@dataclasses.dataclass
class CopyColumnsConfig(StepConfig):
    """``columns``: {source: destination}; ``reason``: why the copy stands in for a computation."""

    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    reason: str = ""


class CopyColumns(Step):
    """Copies columns under new names (round 1: the policy's log-probs are the reference's).

    Input columns: the keys of ``columns``; output columns: its values.
    """

    config_class = CopyColumnsConfig
    version = "1"
    config: CopyColumnsConfig

    def input_columns(self) -> list[str]:
        return list(self.config.columns)

    def output_columns(self) -> list[str]:
        return list(self.config.columns.values())

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        return {dst: list(batch[src]) for src, dst in self.config.columns.items()}


__all__ = ["CopyColumns", "CopyColumnsConfig"]
