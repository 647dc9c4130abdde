"""The ``hfpref iterate`` recipe: its YAML sections, their checks, and the step configs each round gets."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hfpref.pipeline.iterate.budget import BudgetSpec
from hfpref.pipeline.iterate.errors import IterateError
from hfpref.pipeline.spec import InputSpec, OutputSpec
from hfpref.pipeline.validate import RecipeError, as_mapping, check_keys, read_recipe_yaml
from hfpref.steps.margins import AnnotationSelectionConfig, MarginConfig
from hfpref.training.dpo import DCRM_RECIPE

CHAT_FORMATS = ("auto", "messages", "text")
_TOP_LEVEL_KEYS = (
    "description",
    "input",
    "policy",
    "reference",
    "warmup",
    "rounds",
    "chat_format",
    "sampling",
    "logprobs",
    "margins",
    "selection",
    "budget",
    "annotation",
    "training",
    "output",
)
_SECTIONS = ("sampling", "logprobs", "margins", "selection", "training")
# fields the loop sets itself, per section
_RESERVED = {
    "sampling": ("model", "revision", "generator_name"),
    "logprobs": ("model", "revision", "output_prefix"),
    "margins": ("beta",),
    "selection": ("fraction", "count"),
    "training": ("output_dir", "model_revision"),
}
# DPOConfig defaults the loop changes: every round's checkpoint is one saved model (no intermediate
# checkpoints inside it, which would also enter the next round's content hash)
TRAINING_DEFAULTS: dict[str, Any] = {"save_strategy": "no"}

ANNOTATION_KINDS = ("model", "label-studio")
_MODEL_ANNOTATION_KEYS = ("kind", "annotator", "config")
_HUMAN_ANNOTATION_KEYS = ("kind", "url", "project", "seed", "rule", "min_annotations", "annotators_per_pair")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as a Hub id (with an optional revision) or a local folder."""

    model: str
    revision: str | None = None

    def label(self) -> str:
        return self.model if self.revision is None else f"{self.model}@{self.revision}"


def _one_of(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise IterateError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


def _model_ref(value: Any, where: str) -> ModelRef:
    model = as_mapping(value, where)
    check_keys(model, ("model", "revision"), where)
    if not isinstance(model.get("model"), str) or not model["model"]:
        raise IterateError(f"{where}: 'model' must name a Hub model id or a local folder")
    return ModelRef(model["model"], model.get("revision"))


def _check_reserved(section: str, values: Mapping[str, Any]) -> None:
    taken = [k for k in values if k in _RESERVED.get(section, ())]
    if taken:
        raise IterateError(
            f"{section}: {taken} are set by the loop itself (see hfpref.pipeline.iterate), remove them"
        )


def _annotation_section(value: Any) -> dict[str, Any]:
    """The ``annotation`` mapping: a model annotator (``kind: model``, the default) or Label Studio."""
    annotation = as_mapping(value, "annotation")
    if "api_key" in annotation:
        # a recipe is copied into every release's manifest and card: a key there would be published
        raise IterateError(
            "annotation.api_key: a recipe must not hold the Label Studio key (it is published with every "
            "release); remove the field and `export LABEL_STUDIO_API_KEY=...` instead"
        )
    kind = _one_of(annotation.get("kind", "model"), ANNOTATION_KINDS, "annotation.kind")
    allowed = _HUMAN_ANNOTATION_KEYS if kind == "label-studio" else _MODEL_ANNOTATION_KEYS
    check_keys(annotation, allowed, f"annotation (kind {kind})")
    return annotation


def _warmup_share(value: Any) -> float | None:
    warmup = as_mapping(value, "warmup")
    check_keys(warmup, ("fraction",), "warmup")
    if not warmup:
        return None
    share = warmup.get("fraction")
    if not (isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share < 1):
        raise IterateError(
            f"warmup.fraction is the warm-up round's share of the total budget, in (0, 1); got {share!r}"
        )
    return float(share)


def _fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's fields from its checked top-level mapping (``IterateRecipe``'s keyword arguments)."""
    for required in ("input", "policy", "rounds", "budget", "annotation"):
        if required not in raw:
            raise IterateError(f"recipe: missing '{required}'")
    rounds = raw["rounds"]
    if not (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1):
        raise IterateError(f"rounds must be a positive int, got {rounds!r}")
    output = OutputSpec.from_dict(raw.get("output"))
    if output.push_to_hub is not None:
        raise IterateError(
            "output.push_to_hub: rounds are not pushed by the loop; push each round's release "
            "folder with `hfpref push`"
        )
    chat_format = _one_of(raw.get("chat_format", "auto"), CHAT_FORMATS, "chat_format")
    sections = {section: as_mapping(raw.get(section), section) for section in _SECTIONS}
    for section, values in sections.items():
        _check_reserved(section, values)
    return {
        "input": InputSpec.from_dict(raw["input"]),
        "policy": _model_ref(raw["policy"], "policy"),
        "reference": _model_ref(raw["reference"], "reference") if raw.get("reference") else None,
        "warmup": _warmup_share(raw.get("warmup")),
        "rounds": rounds,
        "budget": BudgetSpec.from_dict(raw["budget"]),
        "annotation": _annotation_section(raw["annotation"]),
        "output": output,
        "chat_format": chat_format,
        "description": str(raw.get("description") or ""),
        **sections,
    }


@dataclasses.dataclass
class IterateRecipe:
    """An ``hfpref iterate`` recipe (see ``dataset_scripts/iterative_margins.yaml``)::

    description: ...
    input: {hub: ID, revision: SHA, split: train, columns: [prompt]}   # as in curate recipes
    policy: {model: ID_OR_FOLDER, revision: null}   # the initial policy
    reference: {model: ID_OR_FOLDER}  # the first round's DPO reference (default: the policy itself)
    warmup: {fraction: 0.1}           # optional round 0: this share of the budget at random, then train
    rounds: 3
    chat_format: auto                 # auto | messages | text
    sampling: {n: 8, temperature: 0.8, max_new_tokens: 512, seed: 0}       # SamplerConfig fields
    logprobs: {dtype: float32}                                             # LogProbConfig fields
    margins: {length_normalize: false}        # beta is training.beta (DPO's, default 0.1)
    selection: {strategy: smallest_margin, level: corpus, seed: 0, on_equal_margins: error}
    budget: {fraction: 0.5, schedule: decreasing}   # or {pairs: 20000, ...}
    annotation: {annotator: RewardAnnotator, config: {model: ID}}
    # or people: annotation: {kind: label-studio, project: TITLE, url: URL, rule: majority, min_annotations: 1}
    training: {learning_rate: 5.0e-7}               # trl.DPOConfig fields (train_dpo's defaults)
    output: {folder: FOLDER, name: NAME, version: 0.1.0}
    """

    input: InputSpec
    policy: ModelRef
    rounds: int
    budget: BudgetSpec
    annotation: dict[str, Any]
    output: OutputSpec
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    logprobs: dict[str, Any] = dataclasses.field(default_factory=dict)
    margins: dict[str, Any] = dataclasses.field(default_factory=dict)
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    chat_format: str = "auto"
    description: str = ""
    source: str | None = None
    reference: ModelRef | None = None  # the first round's reference; None: the policy itself
    warmup: float | None = None  # the warm-up round's share of the total budget; None: no warm-up

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None, validate: bool = True) -> IterateRecipe:
        try:
            raw = as_mapping(raw, "recipe")
            check_keys(raw, _TOP_LEVEL_KEYS, "recipe")
            recipe = cls(**_fields(raw), source=source)
            if validate:
                recipe.validate()
        except RecipeError as err:
            if source:
                raise IterateError(f"recipe {source}: {err}") from None
            if not isinstance(err, IterateError):  # a shared check (input, output, field names)
                raise IterateError(str(err)) from None
            raise
        return recipe

    @classmethod
    def from_yaml(cls, path: str | Path, validate: bool = True) -> IterateRecipe:
        return cls.from_dict(read_recipe_yaml(path, IterateError), source=str(path), validate=validate)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        out["input"] = self.input.to_dict()
        out["policy"] = {"model": self.policy.model, "revision": self.policy.revision}
        # written only when set, so the state of a folder made before these fields existed still matches
        if self.reference is not None:
            out["reference"] = {"model": self.reference.model, "revision": self.reference.revision}
        if self.warmup is not None:
            out["warmup"] = {"fraction": self.warmup}
        out["rounds"] = self.rounds
        out["chat_format"] = self.chat_format
        for section in ("sampling", "logprobs", "margins", "selection"):
            out[section] = copy.deepcopy(getattr(self, section))
        out["budget"] = self.budget.to_dict()
        out["annotation"] = copy.deepcopy(self.annotation)
        out["training"] = copy.deepcopy(self.training)
        out["output"] = self.output.to_dict()
        return out

    def with_overrides(self, *, folder: str | None = None, rounds: int | None = None) -> IterateRecipe:
        raw = self.to_dict()
        if folder is not None:
            raw["output"]["folder"] = folder
        if rounds is not None:
            raw["rounds"] = rounds
        return IterateRecipe.from_dict(raw, source=self.source)

    # ---- the rounds ----------------------------------------------------------------------------------
    @property
    def beta(self) -> float:
        return float(self.training.get("beta", DCRM_RECIPE["beta"]))

    @property
    def first_round(self) -> int:
        """0 with a warm-up round, else 1."""
        return 0 if self.warmup is not None else 1

    def round_numbers(self) -> list[int]:
        return list(range(self.first_round, self.rounds + 1))

    def initial_reference(self) -> ModelRef:
        return self.reference if self.reference is not None else self.policy

    def round_budgets(self) -> list[dict[str, Any]]:
        """The budget of each of ``round_numbers()``, in order."""
        budgets = self.budget.per_round(self.rounds, self.warmup)
        if self.budget.pairs is not None and self.selection.get("level", "instance") != "corpus":
            raise IterateError(
                "budget.pairs is a total count of pairs, which only corpus-level selection can spend; "
                "use budget.fraction with selection.level: instance"
            )
        return budgets

    @property
    def human_labels(self) -> bool:
        """True when people label the selected pairs in Label Studio (``annotation.kind: label-studio``)."""
        return self.annotation.get("kind") == "label-studio"

    def training_overrides(self) -> dict[str, Any]:
        return {**TRAINING_DEFAULTS, **self.training}

    # ---- each step's config values (what the round's recipe lists) and configs -----------------------
    def sampler_values(self, policy: ModelRef, generator_name: str) -> dict[str, Any]:
        return {
            "model": policy.model,
            "revision": policy.revision,
            "generator_name": generator_name,
            **copy.deepcopy(self.sampling),
        }

    def logprob_values(self, model: ModelRef, prefix: str) -> dict[str, Any]:
        return {
            "model": model.model,
            "revision": model.revision,
            "output_prefix": prefix,
            **copy.deepcopy(self.logprobs),
        }

    def margin_values(self) -> dict[str, Any]:
        return {"beta": self.beta, **copy.deepcopy(self.margins)}

    def selection_values(self, round_number: int) -> dict[str, Any]:
        fields = {"strategy": "smallest_margin", "level": "instance", "seed": 0, **self.selection}
        step = round_number - self.first_round
        fields["seed"] = int(fields["seed"]) + step  # fresh tie-breaks each round
        if round_number == 0:
            fields["strategy"] = "random"  # the warm-up: the policy has no margins worth ranking yet
        return {**fields, **self.round_budgets()[step]}

    def annotate_values(self) -> dict[str, Any]:
        return {
            "annotator": self.annotation.get("annotator", "RewardAnnotator"),
            "annotator_config": dict(copy.deepcopy(self.annotation.get("config")) or {}),
        }

    def sampler_config(self, policy: ModelRef, generator_name: str):
        from hfpref.steps.sampling import SamplerConfig

        return SamplerConfig(**self.sampler_values(policy, generator_name))

    def logprob_config(self, model: ModelRef, prefix: str):
        from hfpref.steps.logprobs import LogProbConfig

        return LogProbConfig(**self.logprob_values(model, prefix))

    def margin_config(self) -> MarginConfig:
        return MarginConfig(**self.margin_values())

    def selection_config(self, round_number: int) -> AnnotationSelectionConfig:
        return AnnotationSelectionConfig(**self.selection_values(round_number))

    def annotate_config(self):
        from hfpref.steps.annotate import AnnotateSelectedConfig

        return AnnotateSelectedConfig(**self.annotate_values())

    def label_studio_settings(self, round_number: int) -> dict[str, Any]:
        """``label_round`` keyword arguments for round ``round_number``: one project per round, so a pull
        holds exactly that round's pairs."""
        base = self.annotation.get("project") or self.output.name
        return {
            "project": f"{base} round {round_number}",
            "url": self.annotation.get("url"),
            "seed": self.annotation.get("seed", 0),
            "rule": self.annotation.get("rule", "majority"),
            "min_annotations": self.annotation.get("min_annotations", 1),
            "annotators_per_pair": self.annotation.get("annotators_per_pair", 1),
        }

    def validate(self) -> None:
        """Build every config (no model is loaded, nothing is downloaded) and check the DPOConfig fields."""
        from hfpref.pipeline.iterate.checks import check_recipe

        check_recipe(self)
