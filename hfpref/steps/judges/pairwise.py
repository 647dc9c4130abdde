"""A pairwise LLM judge in the role arXiv 2406.17312 gives PairRM: which of two responses is better.

``PairwiseJudge`` asks the judge about each pair of a candidates row twice, once in each order (A = the
pair's first response, then A = its second), to undo position bias. The two answers become one verdict:

=====================  =====================================================  ==============
both orders say         verdict                                                preference
=====================  =====================================================  ==============
the same response       ``first`` / ``second`` (that response is better)       1.0 / 0.0
tie, tie                ``tie``                                                0.5
different things        ``order_disagreement`` (counted as a tie)              0.5
=====================  =====================================================  ==============

A pair with a failed request (``on_request_error="missing"``) or an unreadable reply in either order has
no preference (None) and is counted. A reply is read as JSON ``{"winner": "A" | "B" | "tie"}`` (also
under ``better`` or ``verdict``; "neither", "equal" and "draw" mean tie), or a bare ``A`` / ``B`` /
``tie``; anything else is a parse failure, never a guess.

Columns (``p`` = ``column_prefix``), on candidates rows:

* input: ``prompt`` (str or messages), ``responses`` (list[str]); when present, ``pair_indices`` (the
  pairs, default every unordered pair i < j) and ``selected_for_annotation`` (judge only the flagged
  pairs: annotation is what the budget pays for)
* output, aligned with the pairs: ``{p}pairwise_preferences`` (list[float | None]: 1.0 when the pair's
  first response is better, 0.0 the second, 0.5 a tie, None when not judged or unreadable),
  ``{p}pairwise_verdicts`` (list[str | None], the table above, or ``request_failure`` / ``parse_failure``),
  ``{p}pairwise_judge_raw`` (list, per pair the two replies as received, None when not asked);
  per row: ``{p}pairwise_ties`` (pairs with preference 0.5, order disagreements included),
  ``{p}pairwise_order_disagreements``, ``{p}pairwise_parse_failures`` (replies),
  ``{p}pairwise_request_failures`` (requests).

As ``annotation.annotator`` of ``hfpref iterate`` (through ``hfpref.steps.annotate.AnnotateSelected``), the
preferences decide each selected pair's chosen and rejected response (``AnnotatedPairs``).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import datasets

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, StepConfig, row_label
from hfpref.steps.judges.base import JudgeStep
from hfpref.steps.judges.config import Completion, JudgeStepConfig
from hfpref.steps.judges.parsing import find_json

PAIR_INDICES = C.PAIR_INDICES  # written by hfpref.steps.margins
SELECTED_FOR_ANNOTATION = C.SELECTED_FOR_ANNOTATION
PREFERENCES = "pairwise_preferences"
VERDICTS = ("first", "second", "tie", "order_disagreement", "parse_failure", "request_failure")
_WINNER_KEYS = ("winner", "better", "verdict", "answer")
_TIE_WORDS = {"tie", "neither", "equal", "draw", "both", "none"}
_BARE = re.compile(r"^[\s\"'`*(\[]*(A|B|tie)[\s\"'`*.)\]]*$", re.IGNORECASE)


def parse_winner(text: str | None) -> str | None:
    """ "A", "B" or "tie" from a judge reply, or None when the reply does not say."""
    if text is None:
        return None
    found = find_json(text)
    value: Any = None
    if isinstance(found, Mapping):
        value = next((found[k] for k in _WINNER_KEYS if k in found), None)
    else:
        match = _BARE.match(text)
        value = match.group(1) if match else None
    if not isinstance(value, str):
        return None
    value = value.strip().strip("\"'").strip()
    if value.upper() in ("A", "B"):
        return value.upper()
    if value.lower() in _TIE_WORDS:
        return "tie"
    return None


def combine(ab: str | None, ba: str | None) -> tuple[str, float | None]:
    """(verdict, preference for the pair's first response) from the answers with it as A, then as B."""
    if ab is None or ba is None:
        return "parse_failure", None
    # in the second order the letters are swapped: "A" there names the pair's second response
    first = {"A": "first", "B": "second", "tie": "tie"}[ab]
    second = {"A": "second", "B": "first", "tie": "tie"}[ba]
    if first == second:
        return first, {"first": 1.0, "second": 0.0, "tie": 0.5}[first]
    return "order_disagreement", 0.5


@dataclasses.dataclass
class PairwiseConfig(JudgeStepConfig):
    """The judge (``JudgeConfig`` or a mapping of its fields), the columns, and an optional template.

    ``template``: a Jinja file replacing the packaged ``pairwise.j2`` (it gets ``prompt``, ``response_a``,
    ``response_b``).
    """

    responses_column: str = C.RESPONSES


class PairwiseJudge(JudgeStep):
    """Which response of each pair is better, judged in both orders (see the module notes).

    Input columns: ``prompt``, ``responses``; ``pair_indices`` and ``selected_for_annotation`` when
    present. Output columns (prefixed): ``pairwise_preferences``, ``pairwise_verdicts``,
    ``pairwise_judge_raw``, ``pairwise_ties``, ``pairwise_order_disagreements``,
    ``pairwise_parse_failures``, ``pairwise_request_failures``.
    """

    config_class: ClassVar[type[StepConfig]] = PairwiseConfig
    version: ClassVar[str] = "1"
    family: ClassVar[str] = "pairwise"
    # AnnotateSelected hands a pairwise annotator whole rows and takes its per-pair preferences
    pairwise: ClassVar[bool] = True
    config: PairwiseConfig

    def input_columns(self) -> list[str]:
        return [self.config.prompt_column, self.config.responses_column]

    def output_columns(self) -> list[str]:
        names = [PREFERENCES, "pairwise_verdicts", "pairwise_judge_raw", "pairwise_ties"]
        names += ["pairwise_order_disagreements", "pairwise_parse_failures", "pairwise_request_failures"]
        return [self.column(n) for n in names]

    def preferences_column(self) -> str:
        return self.column(PREFERENCES)

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The input's features plus the outputs', fixed so rows with nothing judged keep their types."""
        integer, text = datasets.Value("int64"), datasets.Value("string")
        types = [
            datasets.List(datasets.Value("float64")),
            datasets.List(text),
            datasets.List(datasets.List(text)),
            integer,
            integer,
            integer,
            integer,
        ]
        return datasets.Features({**input_features, **dict(zip(self.output_columns(), types, strict=True))})

    def judge_prompt(self, prompt: str, response_a: str, response_b: str) -> str:
        return self.render(prompt=prompt, response_a=response_a, response_b=response_b)

    def _pairs(self, batch: Batch, i: int, n: int, indices: list[int] | None) -> list[tuple[int, int]]:
        if PAIR_INDICES not in batch:
            return list(itertools.combinations(range(n), 2))
        pairs = batch[PAIR_INDICES][i] or []
        if not all(len(p) == 2 and 0 <= p[0] < n and 0 <= p[1] < n and p[0] != p[1] for p in pairs):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {PAIR_INDICES!r} must hold pairs of "
                f"distinct positions in the {n} responses, got {pairs!r:.200}"
            )
        return [(int(a), int(b)) for a, b in pairs]

    def _flags(
        self, batch: Batch, i: int, pairs: list[tuple[int, int]], indices: list[int] | None
    ) -> list[bool] | None:
        """Row ``i``'s ``selected_for_annotation`` flags (one per pair), or None: judge every pair."""
        flags = batch[SELECTED_FOR_ANNOTATION][i] if SELECTED_FOR_ANNOTATION in batch else None
        if flags is not None and len(flags) != len(pairs):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} columns {SELECTED_FOR_ANNOTATION!r} and "
                f"{PAIR_INDICES!r} must be aligned, got {len(flags)} flags for {len(pairs)} pairs"
            )
        return flags

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        cfg = self.config
        pairs_of: list[list[tuple[int, int]]] = []  # per row: its pairs
        # per row: (pair position, where its two replies start among the row's replies, None if not asked)
        asked: list[list[tuple[int, int | None]]] = []

        def judge_prompts(i: int) -> list[str]:
            responses = batch[cfg.responses_column][i] or []
            pairs = self._pairs(batch, i, len(responses), indices)
            flags = self._flags(batch, i, pairs, indices)
            pairs_of.append(pairs)
            wanted = [k for k in range(len(pairs)) if flags is None or flags[k]]
            if wanted:
                prompt = self.prompt_text(batch, cfg.prompt_column, i, indices)
            texts: list[str] = []
            row_asked = []
            for k in wanted:
                first, second = responses[pairs[k][0]], responses[pairs[k][1]]
                if not (isinstance(first, str) and isinstance(second, str)):
                    row_asked.append((k, None))  # a missing response (None) is never judged
                    continue
                row_asked.append((k, len(texts)))
                texts += [self.judge_prompt(prompt, first, second), self.judge_prompt(prompt, second, first)]
            asked.append(row_asked)
            return texts

        out: Batch = {name: [] for name in self.output_columns()}
        for i, replies in enumerate(self.ask_rows(batch, indices, rank, judge_prompts)):
            self._write_row(out, len(pairs_of[i]), asked[i], replies)
        return out

    def _write_row(
        self, out: Batch, n_pairs: int, asked: list[tuple[int, int | None]], replies: list[Completion]
    ) -> None:
        """Append one row's outputs: a verdict per asked pair from its two replies, and the row's counts."""
        preferences: list[float | None] = [None] * n_pairs
        verdicts: list[str | None] = [None] * n_pairs
        raw: list[list[str | None] | None] = [None] * n_pairs
        counts = {"ties": 0, "disagreements": 0, "parse": 0, "requests": 0}
        for k, start in asked:
            if start is None:
                continue
            both = replies[start : start + 2]
            raw[k] = [c.text for c in both]
            failed = sum(1 for c in both if c.text is None)
            if failed:
                counts["requests"] += failed
                verdicts[k] = "request_failure"
                continue
            winners = [parse_winner(c.text) for c in both]
            counts["parse"] += sum(1 for w in winners if w is None)
            verdicts[k], preferences[k] = combine(*winners)
            counts["ties"] += preferences[k] == 0.5
            counts["disagreements"] += verdicts[k] == "order_disagreement"
        out[self.column(PREFERENCES)].append(preferences)
        out[self.column("pairwise_verdicts")].append(verdicts)
        out[self.column("pairwise_ties")].append(counts["ties"])
        out[self.column("pairwise_order_disagreements")].append(counts["disagreements"])
        self.record_replies(out, raw, counts["parse"], counts["requests"])


def pairwise_summary(dataset: Any, prefix: str = "") -> dict[str, int]:
    """Dataset-level counts of a ``PairwiseJudge`` output: judged pairs by verdict, and the failures."""
    counts = dict.fromkeys(VERDICTS, 0)
    for row in dataset[f"{prefix}pairwise_verdicts"]:
        for verdict in row or []:
            if verdict is not None:
                counts[verdict] += 1
    return {"judged_pairs": sum(counts.values()), **counts}


__all__ = ["PairwiseConfig", "PairwiseJudge", "combine", "pairwise_summary", "parse_winner"]
