"""``AnnotateSelected``: an annotator run on the responses of the pairs selected for annotation, and no other.

See ``hfpref.steps.annotate`` for how it fits between ``AnnotationSelector`` and ``AnnotatedPairs``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets

from hfpref.core import columns as C
from hfpref.core.columns import (
    IMPLICIT_REWARDS,
    PAIR_INDICES,
    PER_PAIR_COLUMNS,
    RESPONSE_ANNOTATED,
    SELECTED_FOR_ANNOTATION,
)
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label

# per-response columns written by hfpref's steps besides those of columns.PER_RESPONSE_COLUMNS
KNOWN_PER_RESPONSE = frozenset(
    {
        *C.PER_RESPONSE_COLUMNS,
        C.POLICY_TOKEN_COUNTS,
        IMPLICIT_REWARDS,
        RESPONSE_ANNOTATED,
        C.REWARD_OUTPUTS,
        C.REWARD_TRUNCATED_TOKENS,
        C.REF_TRUNCATED_TOKENS,
        C.POLICY_TRUNCATED_TOKENS,
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

    # the public path, as before the split: manifests name the step by it and its fingerprint hashes it, so
    # cached outputs and released recipes stay valid (the package re-exports the class under this path)
    __module__ = "hfpref.steps.annotate"

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
