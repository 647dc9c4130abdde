"""Synthetic instruction-following prompts: seed prompts with k verifiable IFEval constraints each.

``ConstrainedPrompts`` is a :class:`hfpref.core.step.Step` (arXiv 2412.15282, §3: prompts whose
constraints a program can check, with the number of constraints k as the prompt's difficulty).

* input column: ``config.source_column`` (default ``prompt``), a seed prompt (str)
* output columns: ``prompt`` (the seed text followed by the constraints' descriptions), ``seed_prompt``
  (the seed text), ``instruction_id_list`` (list[str], IFEval ids), ``kwargs`` (list of dicts, one per
  instruction: the check's own ``get_instruction_args()``, ``{}`` for a check without arguments) and
  ``difficulty`` (int, k = ``len(instruction_id_list)``)

Every prompt it writes is graded by :class:`hfpref.steps.ifeval.IFEvalVerifier` as written.

The constraint kinds are lm-eval's IFEval checks (``instructions_registry.INSTRUCTION_DICT``). The k kinds
of a prompt are drawn uniformly among the k-sets of mutually compatible kinds (by rejection: a uniform
k-subset is redrawn until no two of its kinds conflict), with IFEval's own conflict table
(``INSTRUCTION_CONFLICTS`` made symmetric by ``conflict_make``) plus ``EXTRA_CONFLICTS``. Each kind's
arguments are drawn with the row's own generator and kept consistent within the prompt (words that do
not clash, a section marker that fits the case constraints, ...): see ``hfpref.steps.constraint_arguments``.

Determinism. Each row has its own generator, seeded from ``config.seed`` and a stable hash of the seed
text, so a row's constraints depend on neither the batch size nor the row order nor other rows (equal seed
texts get equal constraints: deduplicate seed prompts first). The step never changes global random state.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.steps.constraint_arguments import (
    ARGUMENT_SAMPLERS,
    build_constraint,
    draw_arguments,
    lm_eval_modules,
)
from hfpref.steps.ifeval import checker_versions, instruction_registry
from hfpref.steps.pair_rows import prompt_seed

SEED_PROMPT = C.SEED_PROMPT
DIFFICULTY = C.DIFFICULTY

# Kinds left out of the default pool, with the reason.
EXCLUDED_KINDS: dict[str, str] = {
    # Its check needs the request to repeat. IFEvalVerifier (like lm-eval) takes that to be the whole
    # prompt, constraint text included, while the description asks to repeat the request *without* its
    # own sentence: the response could not meet both.
    "combination:repeat_prompt": "the check needs the request text, which the verifier takes to be the whole prompt",
}
# Pairs of kinds that cannot both hold although IFEval's conflict table allows them.
EXTRA_CONFLICTS: tuple[tuple[str, str], ...] = (
    # section markers are "Section" / "SECTION" (matched case-sensitively): never in an all-lowercase text
    ("change_case:english_lowercase", "detectable_format:multiple_sections"),
)
MAX_KIND_DRAWS = 1_000_000  # rejection-sampling attempts per row before giving up (see draw_kinds)


@dataclasses.dataclass
class ConstraintConfig(StepConfig):
    """Settings of ``ConstrainedPrompts``.

    k: constraints per prompt; or k_choices: a list of k values, one drawn uniformly per row.
    seed: non-negative seed (with the seed text's hash) of each row's generator.
    source_column: the column holding the seed prompt (str).
    kinds: IFEval instruction ids to draw from; None = every kind lm-eval registers except
      ``EXCLUDED_KINDS``.
    template: how the prompt is written, with ``{prompt}`` (seed text) and ``{constraints}`` (the
      descriptions joined by ``separator``).
    """

    k: int | None = None
    k_choices: list[int] | None = None
    seed: int = 0
    source_column: str = C.PROMPT
    kinds: list[str] | None = None
    template: str = "{prompt}\n\n{constraints}"
    separator: str = "\n"

    def __post_init__(self) -> None:
        if (self.k is None) == (self.k_choices is None):
            raise ValueError(
                f"ConstraintConfig: give exactly one of k or k_choices, got k={self.k!r}, "
                f"k_choices={self.k_choices!r}"
            )
        values = [self.k] if self.k is not None else self.k_choices
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ValueError(
                f"ConstraintConfig: k / k_choices must be integers >= 1, got k={self.k!r}, "
                f"k_choices={self.k_choices!r}"
            )
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"ConstraintConfig.seed must be a non-negative int, got {self.seed!r}")
        if self.kinds is not None and (not self.kinds or len(set(self.kinds)) != len(self.kinds)):
            raise ValueError(
                f"ConstraintConfig.kinds must be a non-empty list without repeats, got {self.kinds!r}"
            )
        for field in ("{prompt}", "{constraints}"):
            if field not in self.template:
                raise ValueError(f"ConstraintConfig.template must contain {field}, got {self.template!r}")

    @property
    def k_values(self) -> list[int]:
        return [self.k] if self.k is not None else list(self.k_choices or [])


# ---- lm-eval's tables ------------------------------------------------------------------------------


@functools.cache
def conflict_table() -> Mapping[str, frozenset[str]]:
    """instruction id -> the ids it cannot be combined with (itself included), symmetric."""
    _, _, registry_module = lm_eval_modules()
    # conflict_make adds the symmetric entries in place: give it a copy, not lm-eval's own table
    table = registry_module.conflict_make(copy.deepcopy(registry_module.INSTRUCTION_CONFLICTS))
    for a, b in EXTRA_CONFLICTS:
        table[a].add(b)
        table[b].add(a)
    return {kind: frozenset(others) for kind, others in table.items()}


def default_kinds() -> list[str]:
    """Every kind lm-eval registers that hfpref draws arguments for (all but ``EXCLUDED_KINDS``), sorted."""
    return sorted(kind for kind in instruction_registry() if kind in ARGUMENT_SAMPLERS)


def compatible(kinds: Sequence[str], conflicts: Mapping[str, frozenset[str]] | None = None) -> bool:
    """Whether no two of ``kinds`` conflict (and none repeats)."""
    table = conflicts if conflicts is not None else conflict_table()
    return all(b not in table[a] for a, b in itertools.combinations(kinds, 2))


def has_compatible_set(kinds: Sequence[str], k: int, conflicts: Mapping[str, frozenset[str]]) -> bool:
    """Whether some k of ``kinds`` are mutually compatible (stops at the first such set)."""
    return any(compatible(subset, conflicts) for subset in itertools.combinations(kinds, k))


def draw_kinds(
    rng: np.random.Generator, kinds: Sequence[str], k: int, conflicts: Mapping[str, frozenset[str]]
) -> list[str]:
    """k mutually compatible kinds, uniform over such sets, in a uniformly random order.

    Rejection sampling: a uniform ordered k-subset is redrawn until compatible (with every kind, about 1
    draw in 6 is compatible at k = 6, 1 in 200 at k = 11).
    """
    for _ in range(MAX_KIND_DRAWS):
        picked = [kinds[int(i)] for i in rng.choice(len(kinds), size=k, replace=False)]
        if compatible(picked, conflicts):
            return picked
    raise RuntimeError(
        f"no compatible set of {k} constraint kinds found in {MAX_KIND_DRAWS} draws from {list(kinds)}; "
        "compatible sets are too rare: use a smaller k or more kinds"
    )


# ---- the step --------------------------------------------------------------------------------------


class ConstrainedPrompts(Step):
    """Compose prompts with k verifiable constraints from seed prompts (see the module docstring).

    Input column: ``config.source_column`` (str). Output columns: ``prompt`` (str), ``seed_prompt`` (str),
    ``instruction_id_list`` (list[str]), ``kwargs`` (list of dicts), ``difficulty`` (int, k). Other
    columns pass through unchanged.
    """

    config_class: ClassVar[type[StepConfig]] = ConstraintConfig
    version: ClassVar[str] = "1"
    config: ConstraintConfig

    def __init__(self, config: ConstraintConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.kinds = self._check_kinds()

    def _check_kinds(self) -> list[str]:
        """The kinds to draw from, after checking names and that every k has a compatible set."""
        known = instruction_registry()
        kinds = sorted(self.config.kinds) if self.config.kinds is not None else default_kinds()
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise ValueError(
                f"ConstraintConfig.kinds: unknown IFEval instruction id(s) {unknown}; known: {sorted(known)}"
            )
        unsupported = [k for k in kinds if k not in ARGUMENT_SAMPLERS]
        if unsupported:
            reasons = [
                EXCLUDED_KINDS.get(k, "no argument sampler for it in hfpref.steps.constraint_arguments")
                for k in unsupported
            ]
            raise ValueError(
                f"ConstraintConfig.kinds: {unsupported} cannot be generated: "
                + "; ".join(f"{k}: {why}" for k, why in zip(unsupported, reasons, strict=True))
            )
        conflicts = conflict_table()
        for k in sorted(set(self.config.k_values)):
            if k > len(kinds) or not has_compatible_set(kinds, k, conflicts):
                raise ValueError(
                    f"ConstraintConfig: no {k} of the kinds {kinds} are mutually compatible "
                    f"(IFEval's conflict table plus {list(EXTRA_CONFLICTS)})"
                )
        return kinds

    def input_columns(self) -> list[str]:
        return [self.config.source_column]

    def output_columns(self) -> list[str]:
        return [C.PROMPT, SEED_PROMPT, C.INSTRUCTION_ID_LIST, C.KWARGS, DIFFICULTY]

    def load(self, rank: int | None) -> Mapping[str, type]:
        return instruction_registry()

    def resolved_revision(self) -> str:
        return checker_versions()  # the descriptions and checks are lm-eval's

    def row_rng(self, seed_text: str) -> np.random.Generator:
        """The generator of one row: the config's seed and a stable hash of the seed text."""
        return np.random.default_rng([self.config.seed, prompt_seed(seed_text)])

    def compose(self, seed_text: str) -> dict[str, Any]:
        """One row's outputs for a seed text (the step's map function calls this for every row)."""
        cfg = self.config
        registry = self.resources(None)
        rng = self.row_rng(seed_text)
        k = cfg.k if cfg.k is not None else cfg.k_values[int(rng.integers(len(cfg.k_values)))]
        kinds = draw_kinds(rng, self.kinds, k, conflict_table())
        arguments = draw_arguments(rng, kinds)
        descriptions, recorded = [], []
        for kind in kinds:
            description, args = build_constraint(registry, kind, arguments[kind])
            descriptions.append(description)
            recorded.append(args)
        prompt = cfg.template.format(prompt=seed_text, constraints=cfg.separator.join(descriptions))
        return {
            C.PROMPT: prompt,
            SEED_PROMPT: seed_text,
            C.INSTRUCTION_ID_LIST: list(kinds),
            C.KWARGS: recorded,
            DIFFICULTY: k,
        }

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        out: Batch = {name: [] for name in self.output_columns()}
        column = self.config.source_column
        for i, seed_text in enumerate(batch[column]):
            if not isinstance(seed_text, str) or not seed_text.strip():
                raise RowError(
                    f"{self.name}: {row_label(batch, i, indices)} column {column!r} must be a non-empty "
                    f"seed prompt (str), got {seed_text!r:.200}"
                )
            for name, value in self.compose(seed_text).items():
                out[name].append(value)
        return out

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: Any) -> Any:
        """The output's features: the input's plus the constraint columns (``kwargs`` as JSON objects,
        the way ``datasets`` reads IFEval, since each check has its own arguments)."""
        import datasets

        features = dict(input_features)
        features.update(
            {
                C.PROMPT: datasets.Value("string"),
                SEED_PROMPT: datasets.Value("string"),
                C.INSTRUCTION_ID_LIST: datasets.List(datasets.Value("string")),
                C.KWARGS: datasets.List(datasets.Json()),
                DIFFICULTY: datasets.Value("int64"),
            }
        )
        return datasets.Features(features)


__all__ = [
    "DIFFICULTY",
    "EXCLUDED_KINDS",
    "EXTRA_CONFLICTS",
    "ARGUMENT_SAMPLERS",
    "SEED_PROMPT",
    "ConstrainedPrompts",
    "ConstraintConfig",
    "compatible",
    "conflict_table",
    "default_kinds",
    "draw_arguments",
    "draw_kinds",
]
