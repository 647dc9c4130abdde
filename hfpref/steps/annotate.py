"""Annotation of the pairs selected for it, and the TRL preference rows they become.

Two steps, run after ``hfpref.steps.margins.AnnotationSelector``:

* ``AnnotateSelected`` runs any hfpref annotator that writes per-response ``rewards`` (``RewardAnnotator``,
  ``IFEvalVerifier``, or any step in the recipe registry) on the responses that appear in at least one
  selected pair, and on no other: annotation is what the budget pays for. The other responses get None in
  every per-response column the annotator writes, and ``response_annotated`` says which were scored.
* ``AnnotatedPairs`` turns each selected unordered pair into one TRL preference row: chosen = the response
  with the higher reward. A pair whose rewards are equal is dropped with ``drop_reason="rewards_tied"``,
  one with a missing or non-finite reward (or reward margin) with ``"nan_reward"``, one of a row whose
  prompt is missing (``hfpref.steps.selection.prompt_is_missing``) with ``"missing_prompt"`` and one with a
  missing (None) response with ``"missing_response"`` (``hfpref.steps.selection.split_dropped`` separates and
  counts them); unselected pairs make no row (they stay, flagged, in the candidates).

A pairwise annotator (a step with ``pairwise = True``, e.g. ``hfpref.steps.judges.pairwise.PairwiseJudge``, the
role arXiv 2406.17312 gives PairRM) gets whole rows and writes a preference per pair instead of a reward
per response; ``AnnotatedPairs(preferences_column=...)`` then takes chosen and rejected from it, and drops
ties as ``judge_tie`` and pairs without a verdict as ``judge_missing``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import datasets

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.steps.margins import (
    IMPLICIT_MARGIN,
    IMPLICIT_MARGINS,
    IMPLICIT_REWARD_CHOSEN,
    IMPLICIT_REWARD_REJECTED,
    IMPLICIT_REWARDS,
    PAIR_INDICES,
    PER_PAIR_COLUMNS,
    POLICY_TOKEN_COUNTS,
    SELECTED_FOR_ANNOTATION,
    SELECTION_LEVEL,
    SELECTION_STRATEGY,
)
from hfpref.steps.selection import PAIR_COLUMNS, pairs_features, prompt_is_missing

RESPONSE_ANNOTATED = "response_annotated"  # list[bool]: which responses the annotator scored
# per-response columns written by hfpref's steps besides those of columns.PER_RESPONSE_COLUMNS
KNOWN_PER_RESPONSE = frozenset(
    {
        *C.PER_RESPONSE_COLUMNS,
        POLICY_TOKEN_COUNTS,
        IMPLICIT_REWARDS,
        RESPONSE_ANNOTATED,
        "reward_outputs",
        "reward_truncated_tokens",
        "ref_truncated_tokens",
        "policy_truncated_tokens",
    }
)

# per-row list columns an annotator writes, never per-response whatever their length
KNOWN_PER_ROW = frozenset({C.IFEVAL_INVENTED_ARGS})


def is_per_response(name: str) -> bool:
    """Whether a candidates column holds one entry per response (by hfpref's names)."""
    return name in KNOWN_PER_RESPONSE or name.endswith(("_logps", "_token_counts", "_truncated_tokens"))


def needed_responses(selected: list[bool], pairs: list[list[int]]) -> list[int]:
    """Sorted indices of the responses that appear in at least one selected pair."""
    return sorted({k for flag, pair in zip(selected, pairs, strict=True) if flag for k in pair})


# ---- annotating the selected responses -------------------------------------------------------------------


@dataclasses.dataclass
class AnnotateSelectedConfig(StepConfig):
    """``annotator``: a step name from the step registry (``hfpref.core.registry.STEP_REGISTRY``), e.g.
    "RewardAnnotator" or "IFEvalVerifier"; ``annotator_config``: that step's config fields."""

    annotator: str = "RewardAnnotator"
    annotator_config: dict[str, Any] = dataclasses.field(default_factory=dict)


class AnnotateSelected(Step):
    """Runs an annotator on the responses of the pairs selected for annotation, and on no other.

    Input columns: ``prompt``, ``responses``, ``pair_indices``, ``selected_for_annotation``, plus the
    annotator's own inputs (e.g. ``instruction_id_list`` and ``kwargs`` for IFEval).
    Output columns: the annotator's (``rewards``, ``reward_source``, ...). Its per-response columns keep
    one entry per response, None where the response was not annotated; its per-row columns are None in a
    row with nothing annotated. ``response_annotated`` (list[bool]) marks the annotated responses.

    Which output columns are per-response is learnt from the annotator's output on the first row that
    needs annotation (a list with one entry per annotated response); ``apply`` does that up front and
    fixes the output features, so batches with nothing to annotate keep the same column types (that
    first row is annotated twice: once to learn, once in the map).
    """

    needs_whole_dataset = True  # its apply() looks at every row before mapping
    config_class = AnnotateSelectedConfig
    version = "1"
    config: AnnotateSelectedConfig

    def __init__(self, config: AnnotateSelectedConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        from hfpref.core.registry import build_step

        where = f"{self.name} annotator {self.config.annotator!r}"
        self.annotator: Step = build_step(self.config.annotator, self.config.annotator_config, where)
        self._per_response: set[str] | None = None  # learnt from the annotator's output

    @property
    def pairwise(self) -> bool:
        """Whether the annotator judges pairs (preferences per pair) rather than responses (rewards)."""
        return bool(getattr(self.annotator, "pairwise", False))

    def preferences_column(self) -> str | None:
        """The annotator's per-pair preference column (pairwise annotators only)."""
        return self.annotator.preferences_column() if self.pairwise else None

    @property
    def uses_model(self) -> bool:  # type: ignore[override]  # the annotator's, so --gpus reaches its model
        return bool(getattr(self.annotator, "uses_model", False))

    def unload(self) -> None:
        """Forget the annotator's model too (it is loaded by the annotator, not by this step)."""
        super().unload()
        self.annotator.unload()

    def input_columns(self) -> list[str]:
        own = [C.PROMPT, C.RESPONSES, PAIR_INDICES, SELECTED_FOR_ANNOTATION]
        return own + [c for c in self.annotator.input_columns() if c not in own]

    def output_columns(self) -> list[str]:
        return [*self.annotator.output_columns(), RESPONSE_ANNOTATED]

    def resolved_revision(self) -> str | None:
        return self.annotator.resolved_revision()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "annotator": self.annotator.describe()}

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        n_rows = len(batch[C.PROMPT])
        wanted: list[list[int]] = []
        for i in range(n_rows):
            flags, pairs = batch[SELECTED_FOR_ANNOTATION][i], batch[PAIR_INDICES][i]
            if flags is None or pairs is None or len(flags) != len(pairs):
                raise RowError(
                    f"{self.name}: {row_label(batch, i, indices)} columns {SELECTED_FOR_ANNOTATION!r} and "
                    f"{PAIR_INDICES!r} must be aligned lists, got {flags!r} and {pairs!r}"
                )
            wanted.append(needed_responses(flags, pairs))
        if self.pairwise:
            # the judge reads pair_indices and selected_for_annotation itself; its outputs are per pair
            out = dict(self.annotator(batch, rank=rank, indices=indices))
            out[RESPONSE_ANNOTATED] = [
                [index in set(wanted[i]) for index in range(len(batch[C.RESPONSES][i] or []))]
                for i in range(n_rows)
            ]
            return out
        rows = [i for i in range(n_rows) if wanted[i]]
        annotated = self._annotate(batch, rows, wanted, rank, indices) if rows else {}
        per_response = self._per_response_columns(annotated, [len(wanted[i]) for i in rows])
        out: Batch = {name: [] for name in self.output_columns()}
        position = {row: k for k, row in enumerate(rows)}
        for i in range(n_rows):
            n = len(batch[C.RESPONSES][i] or [])
            k = position.get(i)
            for name in self.annotator.output_columns():
                value = None if k is None else annotated[name][k]
                if name in per_response:
                    full = [None] * n
                    if value is not None:
                        for index, v in zip(wanted[i], value, strict=True):
                            full[index] = v
                    value = full
                out[name].append(value)
            out[RESPONSE_ANNOTATED].append([index in set(wanted[i]) for index in range(n)])
        return out

    def _annotate(
        self,
        batch: Batch,
        rows: list[int],
        wanted: list[list[int]],
        rank: int | None,
        indices: list[int] | None,
    ) -> Batch:
        """The annotator's output on the rows that need it, each narrowed to its wanted responses."""
        sub: Batch = {}
        for name, values in batch.items():
            if name in PER_PAIR_COLUMNS:
                continue  # pairs describe the full response list; the annotator never needs them
            if is_per_response(name):
                sub[name] = [None if values[i] is None else [values[i][k] for k in wanted[i]] for i in rows]
            else:
                sub[name] = [values[i] for i in rows]
        sub_indices = None if indices is None else [indices[i] for i in rows]
        return self.annotator(sub, rank=rank, indices=sub_indices)

    def _per_response_columns(self, annotated: Batch, sizes: list[int]) -> set[str]:
        """Which annotator outputs hold one entry per annotated response."""
        if self._per_response is None and annotated:
            self._per_response = {
                name
                for name in self.annotator.output_columns()
                # a per-row list that can happen to have one entry per response (IFEval's invented arguments)
                if name not in KNOWN_PER_ROW
                and all(
                    isinstance(v, list) and len(v) == size
                    for v, size in zip(annotated[name], sizes, strict=True)
                )
            }
        if self._per_response is not None:
            return self._per_response
        # nothing annotated here and nothing learnt yet: fall back to hfpref's known per-response columns
        return {name for name in self.annotator.output_columns() if is_per_response(name)}

    def apply(self, dataset, *, batch_size: int = 64, num_proc: int | None = None, **map_kwargs: Any):
        """``Step.apply`` after annotating one row alone, to learn the output columns' kinds and types."""
        from hfpref.core.step import check_columns

        check_columns(dataset.column_names, self.input_columns(), self.name)
        if self.pairwise and hasattr(self.annotator, "output_features"):
            features = self.annotator.output_features(dataset.features)
            features[RESPONSE_ANNOTATED] = datasets.List(datasets.Value("bool"))
            map_kwargs.setdefault("features", features)
        first = self._first_row_needing_annotation(dataset)
        if first is not None and "features" not in map_kwargs:
            probe = self(dataset[first : first + 1], indices=[first])
            features = datasets.Dataset.from_dict(probe).features
            map_kwargs["features"] = datasets.Features({**dataset.features, **features})
        return super().apply(dataset, batch_size=batch_size, num_proc=num_proc, **map_kwargs)

    @staticmethod
    def _first_row_needing_annotation(dataset) -> int | None:
        view = dataset.select_columns([SELECTED_FOR_ANNOTATION])
        for index, flags in enumerate(view[SELECTED_FOR_ANNOTATION]):
            if flags and any(flags):
                return index
        return None


# ---- preference rows --------------------------------------------------------------------------------------


@dataclasses.dataclass
class AnnotatedPairsConfig(StepConfig):
    """``pair_strategy``: the value of the ``pair_strategy`` column; None names it after the selection,
    e.g. ``smallest_margin_corpus``. ``preferences_column``: a pairwise annotator's per-pair preference
    column (1.0: the pair's first response is better, 0.0: the second, 0.5: a tie, None: no verdict),
    used instead of ``rewards``; ``reward_chosen`` / ``reward_rejected`` are then the preferences (1.0 /
    0.0)."""

    pair_strategy: str | None = None
    preferences_column: str | None = None


class AnnotatedPairs(Step):
    """One TRL preference row per selected pair (chosen = higher reward), or a drop reason.

    Input columns: ``prompt``, ``responses``, ``rewards``, ``implicit_rewards``, ``pair_indices``,
    ``selected_for_annotation``, ``selection_strategy``, ``selection_level``; ``generators`` and
    ``ref_logps`` when present.
    Output columns, one row per selected pair: ``prompt``; ``chosen``, ``rejected`` (strings for a standard
    prompt, ``[{"role": "assistant", "content": text}]`` for a conversational one); ``chosen_index``,
    ``rejected_index`` (positions in ``responses``); ``chosen_generator``, ``rejected_generator``;
    ``reward_chosen``, ``reward_rejected``, ``reward_margin``; ``edit_distance`` and ``dcrm`` (None: not
    computed here), ``logp_diff`` (p_Δ = |ref log-prob difference|, None without ``ref_logps``);
    ``implicit_margin`` (r̂(chosen) − r̂(rejected), the ``rewards/margins`` TRL logs for this pair),
    ``implicit_reward_chosen``, ``implicit_reward_rejected``; ``pair_strategy``; ``drop_reason`` (None, or
    ``missing_prompt`` / ``missing_response`` / ``nan_reward`` / ``rewards_tied``, or with a pairwise annotator
    ``judge_tie`` / ``judge_missing``, with the pair columns None); and every other per-row input column
    (e.g. ``reward_source``, ``selection_*``, ids), while per-response and per-pair lists stay behind.
    """

    config_class = AnnotatedPairsConfig
    version = "2"  # 2: missing prompts and missing responses dropped
    changes_row_count = True
    config: AnnotatedPairsConfig

    EXTRA_COLUMNS = (IMPLICIT_MARGIN, IMPLICIT_REWARD_CHOSEN, IMPLICIT_REWARD_REJECTED)

    def input_columns(self) -> list[str]:
        return [
            C.PROMPT,
            C.RESPONSES,
            self.config.preferences_column or C.REWARDS,
            IMPLICIT_REWARDS,
            PAIR_INDICES,
            SELECTED_FOR_ANNOTATION,
            SELECTION_STRATEGY,
            SELECTION_LEVEL,
        ]

    def output_columns(self) -> list[str]:
        return [C.PROMPT, *PAIR_COLUMNS, *self.EXTRA_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON]

    def passthrough_columns(self, column_names: list[str]) -> list[str]:
        excluded = {*self.output_columns(), *PER_PAIR_COLUMNS, IMPLICIT_MARGINS}
        if self.config.preferences_column:  # a pairwise judge's per-pair lists stay behind too
            prefix = self.config.preferences_column[: -len("preferences")]
            excluded |= {self.config.preferences_column, f"{prefix}verdicts", f"{prefix}judge_raw"}
        return [c for c in column_names if c not in excluded and not is_per_response(c)]

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        passthrough = self.passthrough_columns(list(batch))
        out: Batch = {name: [] for name in [*self.output_columns(), *passthrough]}
        for i in range(len(batch[C.PROMPT])):
            responses = batch[C.RESPONSES][i] or []
            n = len(responses)
            preferences = self._preferences(batch, i, indices)
            rewards = None if preferences is not None else self._per_response(batch, C.REWARDS, i, n, indices)
            implicit = self._per_response(batch, IMPLICIT_REWARDS, i, n, indices)
            ref = self._per_response(batch, C.REF_LOGPS, i, n, indices) if C.REF_LOGPS in batch else None
            generators = batch[C.GENERATORS][i] if C.GENERATORS in batch else None
            strategy = self.config.pair_strategy or (
                f"{batch[SELECTION_STRATEGY][i]}_{batch[SELECTION_LEVEL][i]}"
            )
            prompt = batch[C.PROMPT][i]
            flags, pairs = batch[SELECTED_FOR_ANNOTATION][i], batch[PAIR_INDICES][i]
            for k, (flag, (a, b)) in enumerate(zip(flags, pairs, strict=True)):
                if not flag:
                    continue
                if preferences is not None:
                    # the pair's preference as rewards of its two responses: chosen = the preferred one
                    p = preferences[k]
                    pair_rewards: list[float | None] = [None] * n
                    pair_rewards[a], pair_rewards[b] = (None, None) if p is None else (p, 1.0 - p)
                    row, reason = self._pair(a, b, responses, pair_rewards, implicit, ref, generators, prompt)
                    reason = {"rewards_tied": "judge_tie", "nan_reward": "judge_missing"}.get(reason, reason)
                else:
                    row, reason = self._pair(a, b, responses, rewards, implicit, ref, generators, prompt)
                out[C.PROMPT].append(prompt)
                for name in [*PAIR_COLUMNS, *self.EXTRA_COLUMNS]:
                    out[name].append(None if row is None else row[name])
                out[C.PAIR_STRATEGY].append(strategy)
                out[C.DROP_REASON].append(reason)
                for name in passthrough:
                    out[name].append(batch[name][i])
        return out

    @staticmethod
    def _pair(
        a: int,
        b: int,
        responses: list[str],
        rewards: list[float | None],
        implicit: list[float | None],
        ref: list[float | None] | None,
        generators: list[str | None] | None,
        prompt: Any,
    ) -> tuple[dict[str, Any] | None, str | None]:
        if prompt_is_missing(prompt):
            return None, "missing_prompt"
        if responses[a] is None or responses[b] is None:
            return (
                None,
                "missing_response",
            )  # AnnotationSelector excludes these; a hand-made selection may not
        ra, rb = rewards[a], rewards[b]
        if (
            ra is None
            or rb is None
            or not (math.isfinite(ra) and math.isfinite(rb) and math.isfinite(ra - rb))
        ):
            return None, "nan_reward"
        if ra == rb:
            return None, "rewards_tied"
        chosen, rejected = (a, b) if ra > rb else (b, a)
        conversational = isinstance(prompt, list)

        def completion(k: int) -> Any:
            return [{"role": "assistant", "content": responses[k]}] if conversational else responses[k]

        logp_diff = None
        if ref is not None and ref[chosen] is not None and ref[rejected] is not None:
            logp_diff = _finite_or_none(abs(float(ref[chosen]) - float(ref[rejected])))
        return {
            C.CHOSEN: completion(chosen),
            C.REJECTED: completion(rejected),
            C.CHOSEN_INDEX: chosen,
            C.REJECTED_INDEX: rejected,
            C.CHOSEN_GENERATOR: None if generators is None else generators[chosen],
            C.REJECTED_GENERATOR: None if generators is None else generators[rejected],
            C.REWARD_CHOSEN: float(rewards[chosen]),
            C.REWARD_REJECTED: float(rewards[rejected]),
            C.REWARD_MARGIN: float(rewards[chosen]) - float(rewards[rejected]),
            C.EDIT_DISTANCE: None,
            C.LOGP_DIFF: logp_diff,
            C.DCRM: None,
            IMPLICIT_MARGIN: _difference(implicit[chosen], implicit[rejected]),
            IMPLICIT_REWARD_CHOSEN: _finite_or_none(implicit[chosen]),
            IMPLICIT_REWARD_REJECTED: _finite_or_none(implicit[rejected]),
        }, None

    def _preferences(self, batch: Batch, i: int, indices: list[int] | None) -> list[float | None] | None:
        column = self.config.preferences_column
        if column is None:
            return None
        values = batch[column][i]
        pairs = batch[PAIR_INDICES][i] or []
        if values is None or len(values) != len(pairs):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must hold one preference per "
                f"pair of {PAIR_INDICES!r} ({len(pairs)}), got {values!r:.200}"
            )
        return list(values)

    def _per_response(
        self, batch: Batch, column: str, i: int, n: int, indices: list[int] | None
    ) -> list[float | None]:
        values = batch[column][i]
        if values is None:
            return [None] * n
        if len(values) != n or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
        ):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must hold {n} numbers "
                f"(one per response, None where not annotated), got {values!r}"
            )
        return list(values)

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The pairs rows' features, fixed so a batch without selected pairs keeps the same types."""
        passthrough = self.passthrough_columns(list(input_features))
        return pairs_features(input_features, passthrough, self.EXTRA_COLUMNS, step=self.name)


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _difference(a: float | None, b: float | None) -> float | None:
    """a − b, or None when either is unknown or the difference is not finite."""
    if _finite_or_none(a) is None or _finite_or_none(b) is None:
        return None
    return _finite_or_none(float(a) - float(b))


__all__ = [
    "RESPONSE_ANNOTATED",
    "AnnotateSelected",
    "AnnotateSelectedConfig",
    "AnnotatedPairs",
    "AnnotatedPairsConfig",
    "needed_responses",
]
