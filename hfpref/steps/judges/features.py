"""Pairwise feature-difference analysis with an LLM judge (DCRM paper §3.3 and Appendix C).

The judge names the ``num_features`` (3, the paper's f_Δ) most prominent features in which two responses
differ, each with the response that is better in that respect where that applies. Features come from
the paper's 11 relevant features (what training should teach: helpfulness, correctness, ...) and 21
irrelevant ones (tone, humour, ...), listed to the judge in one alphabetical list so it cannot tell
which kind a feature is; it may also propose a new feature, which counts as irrelevant (the paper's
"other"). To cancel position bias the judge is asked twice, with the responses in both orders, and the
verdicts are mapped back to the original responses.

Per pair (paper's definitions, over every difference identified in both orders):

* f_Δ (``f_delta``): the number of feature differences identified;
* f_Δ^rel (``f_rel``): the fraction of them along a relevant feature;
* f_Δ^des (``f_des``): the fraction that are desired: along a relevant feature *and* with the first
  response (y⁺, or y_trained) the better one.

Per dataset (``feature_summary``): the mean of the per-pair fractions (the paper averages over pairs),
the pooled fractions, the agreement between the two orders, and the distribution of feature differences.

Columns (``p`` = ``column_prefix``; the two response columns default to ``chosen``/``rejected``, or give
e.g. a trained and a reference model's outputs — ``analyze_feature_differences`` takes the two names):

* input: ``prompt``, ``first``, ``second``
* output:
  - ``{p}feature_differences``: list of {order (0: first shown as A, 1: swapped), feature, listed (in the
    feature lists), relevant, verdict ("A"/"B"/None as the judge said), better (the name of the better
    response's column, or None), desired, justification}
  - ``{p}f_delta`` (int), ``{p}f_rel``, ``{p}f_des`` (None when no reply parsed)
  - ``{p}feature_order_agreement``: among features named in both orders, the share given the same
    direction (None when no feature was named in both)
  - ``{p}feature_judge_raw``: the replies as received, order 0 then order 1
  - ``{p}feature_parse_failures``, ``{p}feature_request_failures``: per-row counts (see ``parsing``)
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import datasets

from hfpref.core import columns as C
from hfpref.core.step import Batch, StepConfig
from hfpref.steps.judges.base import JudgeStep
from hfpref.steps.judges.config import JudgeConfig, JudgeStepConfig
from hfpref.steps.judges.parsing import (
    FIRST,
    FeatureVerdict,
    normalize_feature,
    parse_failure_summary,
    parse_feature_differences,
)

# DCRM paper, Appendix C.1 (Table 10): the 11 relevant features, synthesised from ArmoRM's reward objectives
RELEVANT_FEATURES: tuple[str, ...] = (
    "helpfulness",
    "correctness",
    "factuality",
    "coherence",
    "verbosity",
    "instruction following",
    "truthfulness",
    "honesty",
    "harmlessness",
    "code complexity",
    "code readability",
)
# ... and the 21 irrelevant features, plus "other" for anything not listed
IRRELEVANT_FEATURES: tuple[str, ...] = (
    "writing style",
    "tone",
    "politeness",
    "friendliness",
    "caring or not",
    "intimacy",
    "empathy",
    "language type",
    "casual or formal",
    "authoritative or not",
    "creativity",
    "certainty",
    "humor",
    "passive or active",
    "pessimistic or optimistic",
    "explicit or implicit",
    "sarcastic or not",
    "passion",
    "repetitiveness",
    "word usage diversity",
    "structure of presentation",
    "other",
)
CODING_ONLY_FEATURES: tuple[str, ...] = ("code complexity", "code readability")
OTHER = "other"

DIFFERENCE_FEATURE = datasets.List(
    {
        "order": datasets.Value("int64"),
        "feature": datasets.Value("string"),
        "listed": datasets.Value("bool"),
        "relevant": datasets.Value("bool"),
        "verdict": datasets.Value("string"),
        "better": datasets.Value("string"),
        "desired": datasets.Value("bool"),
        "justification": datasets.Value("string"),
    }
)


@dataclasses.dataclass
class FeatureConfig(JudgeStepConfig):
    """The judge, the feature lists, how many differences to ask for, the columns.

    ``relevant_features`` / ``irrelevant_features``: the paper's lists by default. All but ``"other"``
    are shown to the judge, alphabetically. ``coding_only_features``: features the judge is told to use
    only for programming requests. ``both_orders``: ask twice, A/B swapped (default; the paper's setup).
    ``template``: a Jinja file replacing ``features.j2`` (it gets ``prompt``, ``response_a``,
    ``response_b``, ``features``, ``coding_only_features``, ``num_features``).
    """

    first_column: str = C.CHOSEN
    second_column: str = C.REJECTED
    num_features: int = 3
    relevant_features: list[str] = dataclasses.field(default_factory=lambda: list(RELEVANT_FEATURES))
    irrelevant_features: list[str] = dataclasses.field(default_factory=lambda: list(IRRELEVANT_FEATURES))
    coding_only_features: list[str] = dataclasses.field(default_factory=lambda: list(CODING_ONLY_FEATURES))
    both_orders: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {self.num_features}")
        if self.first_column == self.second_column:
            raise ValueError(f"first_column and second_column are both {self.first_column!r}")
        relevant = {normalize_feature(f) for f in self.relevant_features}
        irrelevant = {normalize_feature(f) for f in self.irrelevant_features}
        if not relevant:
            raise ValueError("relevant_features is empty")
        if relevant & irrelevant:
            raise ValueError(
                f"features listed as both relevant and irrelevant: {sorted(relevant & irrelevant)}"
            )
        unknown = {normalize_feature(f) for f in self.coding_only_features} - relevant - irrelevant
        if unknown:
            raise ValueError(f"coding_only_features {sorted(unknown)} are in neither feature list")

    @property
    def relevant(self) -> frozenset[str]:
        return frozenset(normalize_feature(f) for f in self.relevant_features)

    @property
    def listed(self) -> frozenset[str]:
        return self.relevant | {normalize_feature(f) for f in self.irrelevant_features}

    @property
    def shown_features(self) -> list[str]:
        """The list the judge sees: every feature but the catch-all "other", alphabetically."""
        return sorted(self.listed - {OTHER})


# ---- pure computations -------------------------------------------------------------------------


def classify(
    verdicts: Sequence[FeatureVerdict],
    order: int,
    first: str,
    second: str,
    relevant: frozenset[str] | set[str],
    listed: frozenset[str] | set[str],
) -> list[dict[str, Any]]:
    """A reply's verdicts as difference records, with "A"/"B" mapped back to the response columns.

    ``order`` 0 showed ``first`` as A; order 1 showed ``second`` as A. A difference is desired when its
    feature is relevant and ``first`` is the better response.
    """
    shown_first = first if order == 0 else second
    shown_second = second if order == 0 else first
    records = []
    for v in verdicts:
        better = None if v.better is None else (shown_first if v.better == FIRST else shown_second)
        is_relevant = v.feature in relevant
        records.append(
            {
                "order": order,
                "feature": v.feature,
                "listed": v.feature in listed,
                "relevant": is_relevant,
                "verdict": v.better,
                "better": better,
                "desired": is_relevant and better == first,
                "justification": v.justification,
            }
        )
    return records


def pair_fractions(differences: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """f_Δ, f_Δ^rel, f_Δ^des and the order agreement of one pair's difference records.

    f_Δ^rel = relevant / identified and f_Δ^des = desired / identified, over every identified difference
    of both orders (so with 3 per order and both orders parsed, the mean of the two orders' fractions).
    Agreement: among features named in both orders, the share whose ``better`` is the same.
    """
    count = len(differences)
    by_feature: dict[str, dict[int, Any]] = defaultdict(dict)
    for d in differences:
        by_feature[d["feature"]].setdefault(d["order"], d["better"])
    common = [directions for directions in by_feature.values() if len(directions) == 2]
    agreeing = sum(1 for directions in common if directions[0] == directions[1])
    return {
        "f_delta": count,
        "f_rel": sum(bool(d["relevant"]) for d in differences) / count if count else None,
        "f_des": sum(bool(d["desired"]) for d in differences) / count if count else None,
        "agreement": agreeing / len(common) if common else None,
        "common_features": len(common),
        "agreeing_features": agreeing,
    }


# ---- the step -----------------------------------------------------------------------------------


class FeatureDifferenceJudge(JudgeStep):
    """Feature differences between two responses per row, and f_Δ^rel / f_Δ^des.

    Reads the prompt and two response columns (``JudgeStep``); writes ``feature_differences``, ``f_delta``,
    ``f_rel``, ``f_des``, ``feature_order_agreement``, ``feature_judge_raw``, ``feature_parse_failures``,
    ``feature_request_failures`` (see the module notes).
    """

    config_class: ClassVar[type[StepConfig]] = FeatureConfig
    version: ClassVar[str] = "1"
    default_template: ClassVar[str] = "features.j2"
    family: ClassVar[str] = "feature"
    config: FeatureConfig

    def output_columns(self) -> list[str]:
        names = ["feature_differences", "f_delta", "f_rel", "f_des", "feature_order_agreement"]
        return [*(self.column(n) for n in names), *self.bookkeeping_columns()]

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The input's features plus the outputs', fixed so a batch of unreadable replies keeps its types."""
        real, integer = datasets.Value("float64"), datasets.Value("int64")
        types = [DIFFERENCE_FEATURE, integer, real, real, real, datasets.List(datasets.Value("string"))]
        types += [integer, integer]
        return datasets.Features({**input_features, **dict(zip(self.output_columns(), types, strict=True))})

    @property
    def orders(self) -> tuple[int, ...]:
        return (0, 1) if self.config.both_orders else (0,)

    def judge_prompt(self, prompt: str, response_a: str, response_b: str) -> str:
        cfg = self.config
        shown = set(cfg.shown_features)
        return self.render(
            prompt=prompt,
            response_a=response_a,
            response_b=response_b,
            features=cfg.shown_features,
            coding_only_features=[f for f in map(normalize_feature, cfg.coding_only_features) if f in shown],
            num_features=cfg.num_features,
        )

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        cfg = self.config

        def judge_prompts(i: int) -> list[str]:
            prompt = self.prompt_text(batch, cfg.prompt_column, i, indices)
            first = self.response_text(batch, cfg.first_column, i, indices)
            second = self.response_text(batch, cfg.second_column, i, indices)
            shown = [(first, second) if order == 0 else (second, first) for order in self.orders]
            return [self.judge_prompt(prompt, a, b) for a, b in shown]

        out: Batch = {name: [] for name in self.output_columns()}
        relevant, listed = cfg.relevant, cfg.listed
        for replies in self.ask_rows(batch, indices, rank, judge_prompts):
            differences: list[dict[str, Any]] = []
            parse_failures = 0
            for order, completion in zip(self.orders, replies, strict=True):
                if completion.text is None:
                    continue
                verdicts = parse_feature_differences(completion.text, cfg.num_features)
                if verdicts is None:
                    parse_failures += 1
                    continue
                differences += classify(
                    verdicts, order, cfg.first_column, cfg.second_column, relevant, listed
                )
            fractions = pair_fractions(differences)
            out[self.column("feature_differences")].append(differences)
            out[self.column("f_delta")].append(fractions["f_delta"])
            out[self.column("f_rel")].append(fractions["f_rel"])
            out[self.column("f_des")].append(fractions["f_des"])
            out[self.column("feature_order_agreement")].append(fractions["agreement"])
            failed = sum(1 for c in replies if c.text is None)
            self.record_replies(out, [c.text for c in replies], parse_failures, failed)
        return out


# ---- dataset level -------------------------------------------------------------------------------


def analyze_feature_differences(
    dataset: datasets.Dataset,
    first_column: str = C.CHOSEN,
    second_column: str = C.REJECTED,
    *,
    judge: JudgeConfig | Mapping[str, Any],
    batch_size: int = 64,
    **config: Any,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Run ``FeatureDifferenceJudge`` on two response columns and summarise (``feature_summary``).

    For training pairs use ``chosen``/``rejected`` (Y⁺ − Y⁻); for what a model learnt, a column of the
    trained model's outputs and one of the reference model's, on the same prompts (Y_trained − Y_ref).
    """
    step = FeatureDifferenceJudge(
        judge=judge, first_column=first_column, second_column=second_column, **config
    )
    judged = step.apply(dataset, batch_size=batch_size)
    return judged, feature_summary(judged, step.config.column_prefix)


def feature_summary(dataset: datasets.Dataset | Mapping[str, Sequence], prefix: str = "") -> dict[str, Any]:
    """Dataset-level feature-difference numbers of a judged dataset.

    * ``f_rel`` / ``f_des``: the mean of the per-pair fractions over pairs with a parsed reply (the
      paper's dataset figure); ``f_rel_pooled`` / ``f_des_pooled``: over all identified differences;
    * ``order_agreement``: pooled over pairs, the share of features named in both orders that got the
      same direction; ``first_shown_better``: among directional verdicts, the share naming the response
      shown first (0.5 when the judge has no position bias);
    * ``differences``: per feature, how often each response column (or neither) was the better one —
      the distribution of feature differences (paper Figure 4); ``unlisted_features``: proposed features;
    * the parse-failure counts (``parsing.parse_failure_summary``).
    """
    rows = list(dataset[f"{prefix}feature_differences"])
    f_rel = [v for v in dataset[f"{prefix}f_rel"] if v is not None]
    f_des = [v for v in dataset[f"{prefix}f_des"] if v is not None]
    all_differences = [d for row in rows for d in row]
    common = agreeing = 0
    for row in rows:
        fractions = pair_fractions(row)
        common += fractions["common_features"]
        agreeing += fractions["agreeing_features"]
    directional = [d for d in all_differences if d["verdict"] is not None]
    distribution: dict[str, Counter] = defaultdict(Counter)
    for d in all_differences:
        distribution[d["feature"]][d["better"] or "neither"] += 1
    identified = len(all_differences)
    return {
        "pairs": len(rows),
        "pairs_judged": len(f_rel),
        "f_rel": statistics.fmean(f_rel) if f_rel else None,
        "f_des": statistics.fmean(f_des) if f_des else None,
        "identified_differences": identified,
        "f_rel_pooled": sum(d["relevant"] for d in all_differences) / identified if identified else None,
        "f_des_pooled": sum(d["desired"] for d in all_differences) / identified if identified else None,
        "order_agreement": agreeing / common if common else None,
        "features_in_both_orders": common,
        "first_shown_better": (
            sum(d["verdict"] == FIRST for d in directional) / len(directional) if directional else None
        ),
        "differences": {feature: dict(counts) for feature, counts in sorted(distribution.items())},
        "unlisted_features": dict(Counter(d["feature"] for d in all_differences if not d["listed"])),
        "judge": parse_failure_summary(dataset, f"{prefix}feature"),
    }


__all__ = [
    "IRRELEVANT_FEATURES",
    "RELEVANT_FEATURES",
    "FeatureConfig",
    "FeatureDifferenceJudge",
    "analyze_feature_differences",
    "classify",
    "feature_summary",
    "pair_fractions",
]
