"""Pointwise quality scores from an LLM judge and the sample-level delta of each pair ("Decomposing the Delta").

``QualityJudge`` asks the judge to score each of a pair's two responses on its own, on several quality
dimensions (default: reasoning quality — correctness, logical soundness, clarity, completeness — on a
1-10 scale), and writes the sample-level delta: the first response's score minus the second's, overall
(the mean over dimensions) and per dimension. ``filter_by_sample_delta`` keeps pairs by a delta
threshold or the top fraction.

Columns (``p`` = ``column_prefix``, ``first``/``second`` = the two response columns, by default
``chosen``/``rejected``; use e.g. the trained and reference models' outputs to compare models):

* input: ``prompt`` (str or messages), ``first``, ``second`` (str, or TRL conversational completions)
* output:
  - ``{p}quality_{first}``, ``{p}quality_{second}``: {dimension: score or None, ..., "overall": mean or None}
  - ``{p}sample_delta``: overall(first) − overall(second), None unless both overall scores are known
  - ``{p}sample_delta_{dimension}``: the same per dimension
  - ``{p}quality_judge_raw``: the judge's two replies as received (None for a failed request), for audit
  - ``{p}quality_parse_failures``: replies (0-2) that lacked a readable score for some dimension; the
    dimensions that were readable keep their scores, the overall score of that response is None
  - ``{p}quality_request_failures``: requests (0-2) that failed (with ``on_request_error="missing"``)

``hfpref.steps.judges.parsing.parse_failure_summary(dataset, "quality")`` sums the failures over a dataset.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import datasets

from hfpref.core import columns as C
from hfpref.core.step import Batch, StepConfig
from hfpref.steps.judges.base import JudgeStep
from hfpref.steps.judges.config import JudgeStepConfig
from hfpref.steps.judges.parsing import QualityVerdict, normalize_key, parse_quality

# reasoning-quality dimensions (Decomposing the Delta judges traces on several such dimensions)
DEFAULT_DIMENSIONS: dict[str, str] = {
    "correctness": "Is the final answer right, and is every stated fact and calculation accurate?",
    "logical_soundness": "Does each step follow from the previous ones, without gaps, leaps or contradictions?",
    "clarity": "Is the reasoning easy to follow: well organised, precise, free of needless repetition?",
    "completeness": "Does it address every part of the request and carry the reasoning through to the end?",
}
OVERALL = "overall"
DELTA = "sample_delta"


@dataclasses.dataclass
class QualityConfig(JudgeStepConfig):
    """The judge (``JudgeConfig`` or a mapping of its fields), the dimensions and scale, the columns.

    ``dimensions``: name -> what the judge should look at; names become keys and column suffixes
    (``normalize_key``: "Logical soundness" -> ``logical_soundness``). ``scale_min``/``scale_max``: the
    closed scale; a score outside it is unreadable, not clipped. ``template``: a Jinja file replacing
    the packaged ``quality.j2`` (it gets ``prompt``, ``response``, ``dimensions``, ``scale_min``,
    ``scale_max``).
    """

    dimensions: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_DIMENSIONS))
    scale_min: int = 1
    scale_max: int = 10
    first_column: str = C.CHOSEN
    second_column: str = C.REJECTED

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dimensions:
            raise ValueError("QualityConfig.dimensions must name at least one dimension")
        keys = [normalize_key(name) for name in self.dimensions]
        if len(set(keys)) != len(keys) or "" in keys or OVERALL in keys:
            raise ValueError(
                f"QualityConfig.dimensions {list(self.dimensions)} must give distinct, non-empty keys other "
                f"than {OVERALL!r} (keys: {keys})"
            )
        if not self.scale_min < self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must be below scale_max ({self.scale_max})")
        if self.first_column == self.second_column:
            raise ValueError(f"first_column and second_column are both {self.first_column!r}")

    @property
    def keys(self) -> list[str]:
        return [normalize_key(name) for name in self.dimensions]


class QualityJudge(JudgeStep):
    """Judge scores of two responses per row and their sample-level delta.

    Reads the prompt and two response columns (``JudgeStep``); writes ``quality_<first>``,
    ``quality_<second>``, ``sample_delta``, ``sample_delta_<dimension>`` per dimension,
    ``quality_judge_raw``, ``quality_parse_failures``, ``quality_request_failures`` (see the module notes).
    """

    config_class: ClassVar[type[StepConfig]] = QualityConfig
    version: ClassVar[str] = "1"
    family: ClassVar[str] = "quality"
    config: QualityConfig

    # ---- columns ---------------------------------------------------------------------------
    def output_columns(self) -> list[str]:
        cfg = self.config
        return [
            self.column(f"quality_{cfg.first_column}"),
            self.column(f"quality_{cfg.second_column}"),
            self.column(DELTA),
            *[self.column(f"{DELTA}_{key}") for key in cfg.keys],
            *self.bookkeeping_columns(),
        ]

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The input's features plus the outputs', fixed so a batch of unreadable replies keeps its types."""
        real = datasets.Value("float64")
        scores = {key: real for key in [*self.config.keys, OVERALL]}
        names = self.output_columns()
        types = [scores, scores, *[real] * (len(self.config.keys) + 1)]
        types += [datasets.List(datasets.Value("string")), datasets.Value("int64"), datasets.Value("int64")]
        return datasets.Features({**input_features, **dict(zip(names, types, strict=True))})

    def describe(self) -> dict[str, Any]:
        # the config's canonical form sorts the dimensions, but their order is part of the judge's prompt
        return {**super().describe(), "dimension_order": self.config.keys}

    # ---- the map function ------------------------------------------------------------------
    def judge_prompt(self, prompt: str, response: str) -> str:
        cfg = self.config
        dimensions = {normalize_key(name): text for name, text in cfg.dimensions.items()}
        return self.render(
            prompt=prompt,
            response=response,
            dimensions=dimensions,
            scale_min=cfg.scale_min,
            scale_max=cfg.scale_max,
        )

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        cfg = self.config

        def judge_prompts(i: int) -> list[str]:
            prompt = self.prompt_text(batch, cfg.prompt_column, i, indices)
            responses = [
                self.response_text(batch, c, i, indices) for c in (cfg.first_column, cfg.second_column)
            ]
            return [self.judge_prompt(prompt, response) for response in responses]

        out: Batch = {name: [] for name in self.output_columns()}
        for pair in self.ask_rows(batch, indices, rank, judge_prompts):
            verdicts = [
                parse_quality(c.text, cfg.keys, cfg.scale_min, cfg.scale_max)
                if c.text is not None
                else QualityVerdict({key: None for key in cfg.keys})
                for c in pair
            ]
            first, second = verdicts
            out[self.column(f"quality_{cfg.first_column}")].append(_scores(first))
            out[self.column(f"quality_{cfg.second_column}")].append(_scores(second))
            out[self.column(DELTA)].append(_difference(first.overall, second.overall))
            for key in cfg.keys:
                out[self.column(f"{DELTA}_{key}")].append(_difference(first.scores[key], second.scores[key]))
            unreadable = sum(
                1 for c, v in zip(pair, verdicts, strict=True) if c.text is not None and not v.complete
            )
            self.record_replies(
                out, [c.text for c in pair], unreadable, sum(1 for c in pair if c.text is None)
            )
        return out


def _scores(verdict: QualityVerdict) -> dict[str, float | None]:
    return {**verdict.scores, OVERALL: verdict.overall}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# ---- dataset-level filter ----------------------------------------------------------------------


def filter_by_sample_delta(
    pairs: datasets.Dataset,
    *,
    threshold: float | None = None,
    top_fraction: float | None = None,
    column: str = DELTA,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Pairs with a large enough sample-level delta, in their original order, and what was dropped.

    Give exactly one of ``threshold`` (keep ``delta >= threshold``) or ``top_fraction`` (keep the
    ``floor(top_fraction * n)`` largest deltas among the ``n`` rows that have one; equal deltas at the
    cut go to the earlier row, so the result is deterministic). Rows without a delta (unreadable
    replies) are dropped and counted as ``missing_delta``; the others dropped as ``below_threshold`` or
    ``outside_top_fraction``. ``column`` may name a per-dimension delta such as
    ``sample_delta_correctness``.
    """
    if (threshold is None) == (top_fraction is None):
        raise ValueError("give exactly one of threshold or top_fraction")
    if top_fraction is not None and not 0 <= top_fraction <= 1:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    if column not in pairs.column_names:
        raise KeyError(f"column {column!r} is missing; columns present: {sorted(pairs.column_names)}")
    deltas = pairs[column]
    known = [i for i, d in enumerate(deltas) if d is not None and math.isfinite(d)]
    if threshold is not None:
        kept = [i for i in known if deltas[i] >= threshold]
        reason = "below_threshold"
    else:
        count = math.floor(top_fraction * len(known) + 1e-9)  # the epsilon keeps 0.3 * 10 at 3
        kept = sorted(sorted(known, key=lambda i: (-deltas[i], i))[:count])
        reason = "outside_top_fraction"
    report = {"kept": len(kept), reason: len(known) - len(kept), "missing_delta": len(deltas) - len(known)}
    return pairs.select(kept), report


__all__ = ["DEFAULT_DIMENSIONS", "QualityConfig", "QualityJudge", "filter_by_sample_delta"]
