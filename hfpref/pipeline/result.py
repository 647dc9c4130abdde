"""What a recipe run produced (``RecipeResult``): the annotated candidates, every pair config's kept pairs and
drop counts, what made each, and the records the release writer puts into the manifest and card."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfpref.pipeline.recipe import Recipe


@dataclasses.dataclass
class RecipeResult:
    """What a run produced: annotated candidates, kept pairs and drop counts per strategy, the steps run."""

    recipe: Recipe
    candidates: Any  # datasets.Dataset
    steps: list[Any]
    pairs: dict[str, Any]  # config (strategy, maker or mix name) -> datasets.Dataset of kept pairs
    dropped: dict[str, Counter]  # config -> drop reason -> count
    selectors: dict[str, Any]  # config -> what made it (anything with describe(): a step, a MixRecord)
    input_info: dict[str, Any]
    skipped_strategies: dict[str, str] = dataclasses.field(default_factory=dict)
    step_rows: list[dict[str, int]] = dataclasses.field(default_factory=list)  # rows in/out of each step
    resolved_ranking: list[str] | None = None  # the ranking the selectors used (measured or given)
    generator_accuracy: list[dict[str, Any]] | None = None  # hfpref.steps.capabilities, when measured
    sweeps: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=dict
    )  # hfpref.pipeline.pairing.sweep_pairs
    filters: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=dict
    )  # hfpref.pipeline.pairing.filter_pairs

    @property
    def generator_ranking(self) -> list[str] | None:
        """Generator names, strongest first, as the selectors used them (measured or given)."""
        if self.resolved_ranking is not None:
            return self.resolved_ranking
        given = self.recipe.pairs.generator_ranking
        return list(given) if isinstance(given, list) else None

    @property
    def ranking_source(self) -> str | None:
        return self.recipe.pairs.ranking_source if self.generator_ranking else None

    def edit_distance_unit(self) -> str | None:
        """ "word" or "token:<id>@<rev>", as the pair-metrics step wrote it (None without that step)."""
        if "edit_distance_unit" in self.candidates.column_names and len(self.candidates):
            return self.candidates[0]["edit_distance_unit"]
        return None
