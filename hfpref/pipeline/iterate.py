"""Iterative preference learning with annotation by implicit-margin selection (arXiv 2406.17312).

Each round r = 1..R:

1. sample N responses per prompt from the current policy π_r (``ResponseSampler``);
2. score them under π_r and under its DPO reference (``LogProbAnnotator``, ``output_prefix`` "policy" and
   "ref"), and compute the implicit rewards and the margins of all pairs (``ImplicitMargins``);
3. select the pairs to annotate under the round's budget (``AnnotationSelector``), annotate them with
   the recipe's annotator (``AnnotateSelected``) and make TRL preference rows (``AnnotatedPairs``);
4. write the round's release (``hfpref.release.writer.write_release``: ``round-r/release``, with its card);
5. train π_{r+1} from π_r with DPO on that release (``hfpref.training.dpo.train_dpo``: ``round-r/policy``).

The reference. ``train_dpo`` trains with TRL's default reference, a frozen copy of the model it starts
from, so π_{r+1} is DPO-trained against π_r. The implicit reward of π_r is therefore measured against
the policy it was trained from: the reference of round r is π_{r−1} (round-(r−2)'s checkpoint). The first
round's reference is the recipe's ``reference`` (default: the policy itself).

The first round. If the policy *is* its reference every margin is exactly 0 (the policy log-probs are
copied from the reference's, so they are equal to the bit), and smallest, largest and random selection
pick the same pairs. The margin comparison of arXiv 2406.17312 needs a policy that already differs from
its reference, so the loop offers two starts, and refuses the degenerate one (``IterateError`` naming the
round) unless ``selection.on_equal_margins: random`` asks for the random fallback, which the card reports:

* ``policy: {model: DPO_CHECKPOINT}`` with ``reference: {model: SFT_MODEL}``: a policy already DPO-trained
  from the reference (e.g. on a seed set of preferences) ranks round 1's pairs by real margins;
* ``warmup: {fraction: 0.1}``: a round 0 annotates that share of the total budget at random, trains π_1
  from the initial policy, and the margin rounds start from there (round 1: π_1 against the initial policy).

Budgets. ``budget.fraction`` F is the share of all sampled pairs annotated over all rounds (every round
samples the same prompts with the same N, so each has the same number of pairs); round r annotates
F · R · w_r of its pairs, where the schedule's weights w sum to 1: ``constant`` (1/R each),
``increasing`` (∝ 1, 2, ..., R), ``decreasing`` (∝ R, ..., 2, 1: front-loading, which the paper finds
better) or an explicit list. ``budget.pairs`` is a total count instead (corpus level only), split by the
same weights with largest-remainder rounding so the rounds sum exactly to it. A warm-up share s takes
s of that same total (round 0 annotates F · R · s of its pairs), and the rounds split the rest (1 − s).

Resuming. ``iterate_state.json`` in the output folder records each round's release and checkpoint as they
are written. A round is finished when the state says so and both folders exist; a rerun skips finished
rounds, reuses a round's release when only its training is missing, and recomputes the rest (with the
``datasets`` cache under ``cache/``, finished steps of an interrupted round are cache hits). A rerun
with a different recipe is refused.

Human labels. ``annotation: {kind: label-studio, project: TITLE, url: URL, seed: 0, rule: majority,
min_annotations: 1, annotators_per_pair: 1}`` sends each round's selected pairs to people instead of a model
(``hfpref.human.labelstudio.label_round``): they are pushed to the Label Studio project ``TITLE round r``
(default title: the output name), and while any is pending the round's state is saved as
``awaiting_labels`` and the loop stops with ``LabelsPendingError`` (the CLI answers in one line, exit 2),
saying how many pairs are pending and where. Annotate them, then rerun the same command: the round's steps
are cache hits, the same pairs push nothing new, the labels are pulled, and once none is pending the pulled
rows (``label_source = human:<annotator ids>``) are the round's pairs (ties, skips and disagreements are its
drop reasons, ``human_<outcome>``) and training carries on. The API key is read only from
``LABEL_STUDIO_API_KEY``; a recipe with ``api_key`` is refused (a recipe is published with every release).

Prompts. With ``chat_format: auto`` (the default), string prompts become one user message when the
policy's tokenizer has a chat template, so sampling, log-probs, the reward model and TRL all see the same
chat-formatted conversation (a string prompt would be sampled through the template but scored and
trained on as raw text). ``messages`` always makes them messages. ``text`` keeps prompts raw text, which
only a policy without a chat template can honour: ``ResponseSampler`` samples a string through the
policy's template and writes it back as that message, so ``text`` with a templated policy would silently
mean messages. It is refused in validation (``IterateError``) rather than sampled around the template,
which would train a chat model on prompts formatted unlike its own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.columns import RESPONSE_ANNOTATED
from hfpref.core.step import Batch, Step, StepConfig
from hfpref.pipeline.recipe import (
    InputSpec,
    OutputSpec,
    PairsSpec,
    Recipe,
    RecipeError,
    RecipeResult,
    StepSpec,
    check_version,
    load_input,
    read_recipe_yaml,
)
from hfpref.steps.annotate import AnnotatedPairs, AnnotateSelected, AnnotateSelectedConfig
from hfpref.steps.chat_prompts import ChatPrompts, ChatPromptsConfig  # noqa: F401 (moved; re-exported)
from hfpref.steps.margins import (
    AnnotationSelectionConfig,
    AnnotationSelector,
    EqualMarginsError,
    ImplicitMargins,
    MarginConfig,
    selection_summary,
)
from hfpref.training.dpo import DCRM_RECIPE, train_dpo

logger = logging.getLogger(__name__)

STATE_FILE = "iterate_state.json"
STATE_FORMAT = "hfpref-iterate/1"
SCHEDULES = ("constant", "increasing", "decreasing")
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


class IterateError(RecipeError):
    """An iterate recipe or output folder that cannot run as it is."""


class LabelsPendingError(IterateError):
    """A round's pairs are in Label Studio and some are not annotated yet: annotate them, then rerun."""

    def __init__(self, message: str, *, round_number: int, project: str, pending: int) -> None:
        super().__init__(message)
        self.round_number, self.project, self.pending = round_number, project, pending


ANNOTATION_KINDS = ("model", "label-studio")
_MODEL_ANNOTATION_KEYS = ("kind", "annotator", "config")
_HUMAN_ANNOTATION_KEYS = ("kind", "url", "project", "seed", "rule", "min_annotations", "annotators_per_pair")


# ---- budgets -----------------------------------------------------------------------------------------------


def schedule_weights(schedule: str | Sequence[float], rounds: int) -> list[float]:
    """Per-round shares of the total budget (they sum to 1)."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise IterateError(f"budget.schedule: {schedule!r} is not one of {list(SCHEDULES)} or a list")
        raw = {
            "constant": [1.0] * rounds,
            "increasing": [float(r) for r in range(1, rounds + 1)],
            "decreasing": [float(r) for r in range(rounds, 0, -1)],
        }[schedule]
    else:
        raw = [float(w) for w in schedule]
        if len(raw) != rounds or any(not math.isfinite(w) or w < 0 for w in raw) or sum(raw) <= 0:
            raise IterateError(
                f"budget.schedule: a list needs {rounds} non-negative weights (one per round), got {schedule!r}"
            )
    total = sum(raw)
    return [w / total for w in raw]


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to ``weights`` that sum exactly to ``total`` (Hamilton's method)."""
    quotas = [total * w for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


@dataclasses.dataclass
class BudgetSpec:
    """Exactly one of ``fraction`` (share of all pairs over all rounds) or ``pairs`` (a total count), and
    the ``schedule`` that spreads it over the rounds."""

    fraction: float | None = None
    pairs: int | None = None
    schedule: str | list[float] = "decreasing"

    @classmethod
    def from_dict(cls, raw: Any) -> BudgetSpec:
        raw = _mapping(raw, "budget")
        _check_keys(raw, ("fraction", "pairs", "schedule"), "budget")
        spec = cls(**raw)
        if (spec.fraction is None) == (spec.pairs is None):
            raise IterateError(
                "budget: give exactly one of 'fraction' (0 < F <= 1) or 'pairs' (a total count)"
            )
        if spec.fraction is not None and not (
            isinstance(spec.fraction, (int, float)) and 0 < spec.fraction <= 1
        ):
            raise IterateError(f"budget.fraction must be in (0, 1], got {spec.fraction!r}")
        if spec.pairs is not None and not (
            isinstance(spec.pairs, int) and not isinstance(spec.pairs, bool) and spec.pairs >= 1
        ):
            raise IterateError(f"budget.pairs must be a positive int, got {spec.pairs!r}")
        return spec

    def per_round(self, rounds: int, warmup: float | None = None) -> list[dict[str, Any]]:
        """Each round's budget as ``AnnotationSelectionConfig`` fields: ``{"fraction": f}`` or ``{"count": n}``.

        With a ``warmup`` share s, the list starts with round 0's budget (s of the total) and the rounds
        share the rest by the schedule.
        """
        weights = schedule_weights(self.schedule, rounds)
        first = 1
        if warmup is not None:
            weights = [warmup] + [(1 - warmup) * w for w in weights]
            first = 0
        if self.pairs is not None:
            counts = largest_remainder(self.pairs, weights)
            if warmup is not None and counts[0] == 0:
                raise IterateError(
                    f"warmup: fraction {warmup} of budget.pairs {self.pairs} is no pair; raise either"
                )
            return [{"count": n} for n in counts]
        fractions = [self.fraction * rounds * w for w in weights]
        too_big = [(r + first, f) for r, f in enumerate(fractions) if f > 1 + 1e-12]
        if too_big:
            raise IterateError(
                f"budget: fraction {self.fraction} over {rounds} rounds with schedule {self.schedule!r}"
                + (f" and warm-up share {warmup}" if warmup is not None else "")
                + f" asks round(s) {[r for r, _ in too_big]} to annotate more than all their pairs "
                f"({', '.join(f'{f:.3g}' for _, f in too_big)}); lower the fraction or flatten the schedule"
            )
        return [{"fraction": min(f, 1.0)} for f in fractions]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            {"fraction": self.fraction} if self.fraction is not None else {"pairs": self.pairs}
        )
        out["schedule"] = self.schedule if isinstance(self.schedule, str) else list(self.schedule)
        return out


# ---- the recipe ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as a Hub id (with an optional revision) or a local folder."""

    model: str
    revision: str | None = None

    def label(self) -> str:
        return self.model if self.revision is None else f"{self.model}@{self.revision}"


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise IterateError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _model_ref(value: Any, where: str) -> ModelRef:
    model = _mapping(value, where)
    _check_keys(model, ("model", "revision"), where)
    if not isinstance(model.get("model"), str) or not model["model"]:
        raise IterateError(f"{where}: 'model' must name a Hub model id or a local folder")
    return ModelRef(model["model"], model.get("revision"))


def _check_keys(mapping: Mapping, allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise IterateError(f"{where}: unknown field(s) {unknown}; allowed: {list(allowed)}")


def _check_reserved(section: str, values: Mapping[str, Any]) -> None:
    taken = [k for k in values if k in _RESERVED.get(section, ())]
    if taken:
        raise IterateError(
            f"{section}: {taken} are set by the loop itself (see hfpref.pipeline.iterate), remove them"
        )


def _annotation_section(value: Any) -> dict[str, Any]:
    """The ``annotation`` mapping: a model annotator (``kind: model``, the default) or Label Studio."""
    annotation = _mapping(value, "annotation")
    if "api_key" in annotation:
        # a recipe is copied into every release's manifest and card: a key there would be published
        raise IterateError(
            "annotation.api_key: a recipe must not hold the Label Studio key (it is published with every "
            "release); remove the field and `export LABEL_STUDIO_API_KEY=...` instead"
        )
    kind = annotation.get("kind", "model")
    if kind not in ANNOTATION_KINDS:
        raise IterateError(f"annotation.kind must be one of {list(ANNOTATION_KINDS)}, got {kind!r}")
    allowed = _HUMAN_ANNOTATION_KEYS if kind == "label-studio" else _MODEL_ANNOTATION_KEYS
    _check_keys(annotation, allowed, f"annotation (kind {kind})")
    return annotation


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
            raw = _mapping(raw, "recipe")
            _check_keys(raw, _TOP_LEVEL_KEYS, "recipe")
            for required in ("input", "policy", "rounds", "budget", "annotation"):
                if required not in raw:
                    raise IterateError(f"recipe: missing '{required}'")
            policy = _model_ref(raw["policy"], "policy")
            reference = _model_ref(raw["reference"], "reference") if raw.get("reference") else None
            warmup = _mapping(raw.get("warmup"), "warmup")
            _check_keys(warmup, ("fraction",), "warmup")
            share = warmup.get("fraction")
            if warmup and not (
                isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share < 1
            ):
                raise IterateError(
                    f"warmup.fraction is the warm-up round's share of the total budget, in (0, 1); got {share!r}"
                )
            rounds = raw["rounds"]
            if not (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1):
                raise IterateError(f"rounds must be a positive int, got {rounds!r}")
            annotation = _annotation_section(raw["annotation"])
            output = OutputSpec.from_dict(raw.get("output"))
            if output.push_to_hub is not None:
                raise IterateError(
                    "output.push_to_hub: rounds are not pushed by the loop; push each round's release "
                    "folder with `hfpref push`"
                )
            chat_format = raw.get("chat_format", "auto")
            if chat_format not in CHAT_FORMATS:
                raise IterateError(f"chat_format must be one of {list(CHAT_FORMATS)}, got {chat_format!r}")
            sections = {}
            for section in ("sampling", "logprobs", "margins", "selection", "training"):
                sections[section] = _mapping(raw.get(section), section)
                _check_reserved(section, sections[section])
            recipe = cls(
                input=InputSpec.from_dict(raw["input"]),
                policy=policy,
                reference=reference,
                warmup=float(share) if warmup else None,
                rounds=rounds,
                budget=BudgetSpec.from_dict(raw["budget"]),
                annotation=annotation,
                output=output,
                chat_format=chat_format,
                description=str(raw.get("description") or ""),
                source=source,
                **sections,
            )
            if validate:
                recipe.validate()
        except RecipeError as err:
            if source:
                raise IterateError(f"recipe {source}: {err}") from None
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

    # ---- what each round runs ---------------------------------------------------------------------
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

    def sampler_config(self, policy: ModelRef, generator_name: str):
        from hfpref.steps.sampling import SamplerConfig

        return SamplerConfig(
            model=policy.model, revision=policy.revision, generator_name=generator_name, **self.sampling
        )

    def logprob_config(self, model: ModelRef, prefix: str):
        from hfpref.steps.logprobs import LogProbConfig

        return LogProbConfig(
            model=model.model, revision=model.revision, output_prefix=prefix, **self.logprobs
        )

    def margin_config(self) -> MarginConfig:
        return MarginConfig(beta=self.beta, **self.margins)

    def selection_config(self, round_number: int) -> AnnotationSelectionConfig:
        fields = {"strategy": "smallest_margin", "level": "instance", "seed": 0, **self.selection}
        step = round_number - self.first_round
        fields["seed"] = int(fields["seed"]) + step  # fresh tie-breaks each round
        if round_number == 0:
            fields["strategy"] = "random"  # the warm-up: the policy has no margins worth ranking yet
        return AnnotationSelectionConfig(**fields, **self.round_budgets()[step])

    @property
    def human_labels(self) -> bool:
        """True when people label the selected pairs in Label Studio (``annotation.kind: label-studio``)."""
        return self.annotation.get("kind") == "label-studio"

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

    def _check_label_studio(self) -> None:
        from hfpref.human.labelstudio import RULES

        settings = self.label_studio_settings(self.first_round)
        for field in ("seed", "min_annotations", "annotators_per_pair"):
            value = settings[field]
            low = 0 if field == "seed" else 1
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise IterateError(f"annotation.{field} must be an int >= {low}, got {value!r}")
        if settings["rule"] not in RULES:
            raise IterateError(f"annotation.rule must be one of {list(RULES)}, got {settings['rule']!r}")
        project = self.annotation.get("project")
        if project is not None and (not isinstance(project, str) or len(project.strip()) < 3):
            raise IterateError(
                f"annotation.project must be a title of at least 3 characters, got {project!r}"
            )
        url = settings["url"]
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise IterateError(
                f"annotation.url must be an http(s) URL of the Label Studio server, got {url!r}"
            )

    def annotate_config(self) -> AnnotateSelectedConfig:
        return AnnotateSelectedConfig(
            annotator=self.annotation.get("annotator", "RewardAnnotator"),
            annotator_config=dict(self.annotation.get("config") or {}),
        )

    def training_overrides(self) -> dict[str, Any]:
        return {**TRAINING_DEFAULTS, **self.training}

    def validate(self) -> None:
        """Build every config (no model is loaded, nothing is downloaded) and check the DPOConfig fields."""

        def build(where: str, make):
            try:
                return make()
            except (TypeError, ValueError) as err:
                raise IterateError(f"{where}: {err}") from err

        build("sampling", lambda: self.sampler_config(self.policy, "policy"))
        build("logprobs", lambda: self.logprob_config(self.policy, "ref"))
        build("margins", self.margin_config)
        for r in self.round_numbers():
            build("selection", lambda r=r: self.selection_config(r))
        first = self.selection_config(1)
        if (
            self.warmup is None
            and self.initial_reference() == self.policy
            and first.strategy != "random"
            and first.on_equal_margins == "error"
        ):
            raise IterateError(
                f"round 1: the policy {self.policy.label()!r} is its own reference, so every implicit margin "
                f"is 0 and {first.strategy} selection would be random selection. Set `reference: {{model: "
                "SFT_MODEL}` with a policy DPO-trained from it, or `warmup: {fraction: 0.1}` (a random warm-up "
                "round trains the policy first), or `selection: {on_equal_margins: random}` to accept random "
                "selection in round 1"
            )
        if self.chat_format == "text":
            _check_text_format(self)  # loads the policy's tokenizer only (text recipes only)
        if self.human_labels:
            self._check_label_studio()
        else:
            build("annotation", lambda: AnnotateSelected(self.annotate_config()))
        from trl import DPOConfig

        known = {f.name for f in dataclasses.fields(DPOConfig)}
        unknown = [k for k in self.training if k not in known]
        if unknown:
            raise IterateError(f"training: unknown trl.DPOConfig field(s) {unknown}")


# ---- steps the loop adds ------------------------------------------------------------------------------------


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


# ---- state ----------------------------------------------------------------------------------------------------


def _round_dir(folder: Path, round_number: int) -> Path:
    return folder / f"round-{round_number}"


def release_dir(folder: Path, round_number: int) -> Path:
    return _round_dir(folder, round_number) / "release"


def checkpoint_dir(folder: Path, round_number: int) -> Path:
    return _round_dir(folder, round_number) / "policy"


def _comparable(recipe_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe without the fields that do not change what a round computes."""
    out = copy.deepcopy(dict(recipe_dict))
    out.get("output", {}).pop("folder", None)
    out.pop("description", None)
    return out


class LoopState:
    """``iterate_state.json``: the recipe that owns the folder and what each round has written."""

    def __init__(self, folder: Path, recipe: IterateRecipe) -> None:
        self.folder = folder
        self.path = folder / STATE_FILE
        self.recipe = recipe
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
            if _comparable(self.data.get("recipe", {})) != _comparable(recipe.to_dict()):
                raise IterateError(
                    f"{folder} holds rounds of a different recipe ({STATE_FILE}); use another output "
                    "folder, or delete this one to start over"
                )
        else:
            self.data = {"format": STATE_FORMAT, "recipe": recipe.to_dict(), "rounds": {}}

    def round(self, round_number: int) -> dict[str, Any]:
        return self.data["rounds"].setdefault(str(round_number), {"round": round_number})

    def release_ready(self, round_number: int) -> bool:
        entry = self.data["rounds"].get(str(round_number), {})
        return (
            bool(entry.get("release")) and (self.folder / entry["release"] / "hfpref_manifest.json").exists()
        )

    def finished(self, round_number: int) -> bool:
        entry = self.data["rounds"].get(str(round_number), {})
        return (
            entry.get("status") == "finished"
            and self.release_ready(round_number)
            and (self.folder / entry.get("checkpoint", "") / "config.json").exists()
        )

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: an interruption leaves the old state or the new, never half


# ---- the loop -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RoundResult:
    round: int
    policy: ModelRef  # the policy that sampled (π_r)
    reference: ModelRef  # its DPO reference
    release: Path
    checkpoint: Path  # π_{r+1}
    config_name: str
    pairs: int
    reused: bool  # True when the round was finished before this run


def models_of_round(recipe: IterateRecipe, folder: Path, round_number: int) -> tuple[ModelRef, ModelRef]:
    """(π_r, its reference). The first round (0 with a warm-up, else 1) samples from the initial policy
    against the recipe's reference (default: the policy); π_r = round r−1's checkpoint, whose reference is
    π_{r−1}, the policy it was DPO-trained from."""
    first = recipe.first_round

    def policy(r: int) -> ModelRef:
        return recipe.policy if r <= first else ModelRef(str(checkpoint_dir(folder, r - 1)))

    if round_number <= first:
        return recipe.policy, recipe.initial_reference()
    return policy(round_number), policy(round_number - 1)


def run_iterations(
    recipe: IterateRecipe,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_proc: int | None = None,
    progress: bool = True,
) -> list[RoundResult]:
    """Run (or resume) every round of ``recipe``; returns what each round produced."""
    import datasets

    folder = Path(recipe.output.folder)
    state = LoopState(folder, recipe)
    state.save()
    cache = Path(cache_dir) if cache_dir is not None else folder / "cache"
    prompts, input_info = None, {}
    results = []
    quiet = contextlib.nullcontext() if progress else _progress_off(datasets)
    with quiet:
        for r in recipe.round_numbers():
            policy, reference = models_of_round(recipe, folder, r)
            config_name = recipe.selection_config(r).name
            reused = state.finished(r)
            entry = state.round(r)
            if reused:
                logger.info("round %d: finished before, reusing %s", r, entry["release"])
            else:
                if not state.release_ready(r):
                    if prompts is None:
                        prompts, input_info = _load_prompts(recipe, cache)
                    try:
                        pairs = _build_round(
                            recipe, r, policy, reference, prompts, input_info, folder, batch_size, num_proc
                        )
                    except LabelsPendingError as err:
                        # recorded, so a look at the state says what the loop waits for; a rerun resumes
                        entry.update(
                            status="awaiting_labels",
                            project=err.project,
                            pending=err.pending,
                            policy=policy.label(),
                            reference=reference.label(),
                        )
                        state.save()
                        raise
                    entry.update(
                        release=str(release_dir(folder, r).relative_to(folder)),
                        config=config_name,
                        pairs=pairs,
                        policy=policy.label(),
                        reference=reference.label(),
                        status="released",
                    )
                    state.save()
                _train_round(
                    recipe, r, policy, folder, folder / entry["release"], config_name, entry["pairs"]
                )
                entry.update(checkpoint=str(checkpoint_dir(folder, r).relative_to(folder)), status="finished")
                state.save()
            results.append(
                RoundResult(
                    r,
                    policy,
                    reference,
                    folder / entry["release"],
                    folder / entry["checkpoint"],
                    config_name,
                    entry["pairs"],
                    reused,
                )
            )
    return results


def _train_round(
    recipe: IterateRecipe, r: int, policy: ModelRef, folder: Path, release: Path, config_name: str, pairs: int
) -> None:
    """DPO from π_r on round r's release into ``round-r/policy`` (TRL's reference: a frozen π_r)."""
    _free_memory()
    if not pairs:
        raise IterateError(
            f"round {r}: no annotated pair to train on (see {release}/hfpref_manifest.json for the drop "
            "reasons); raise the budget or sample more diverse responses"
        )
    train_dpo(
        str(release),
        policy.model,
        checkpoint_dir(folder, r),
        config=config_name,
        model_revision=policy.revision,
        **recipe.training_overrides(),
    )
    _free_memory()


def _load_prompts(recipe: IterateRecipe, cache: Path):
    """The recipe's prompts (other input columns come along into every row), chat-formatted if asked."""
    prompts, info = load_input(recipe.input, cache_dir=cache)
    if C.PROMPT not in prompts.column_names:
        raise IterateError(f"input: no 'prompt' column; the input has {prompts.column_names}")
    stale = [c for c in prompts.column_names if c in (C.RESPONSES, C.GENERATORS, C.REWARDS)]
    if stale:
        raise IterateError(
            f"input: columns {stale} would clash with what each round writes; drop them with input.columns"
        )
    if _wants_messages(recipe):
        prompts = ChatPrompts().apply(prompts)
    return prompts, info


def _wants_messages(recipe: IterateRecipe) -> bool:
    if recipe.chat_format == "text":
        _check_text_format(recipe)  # the sampler would write messages back: refused before any round
        return False
    if recipe.chat_format == "messages":
        return True
    return _policy_has_chat_template(recipe)


def _policy_has_chat_template(recipe: IterateRecipe) -> bool:
    from hfpref.models.loading import load_tokenizer

    tokenizer = load_tokenizer(recipe.policy.model, recipe.policy.revision)
    return getattr(tokenizer, "chat_template", None) is not None


def _check_text_format(recipe: IterateRecipe) -> None:
    """``chat_format: text`` needs a policy without a chat template (see the module notes, Prompts)."""
    if _policy_has_chat_template(recipe):
        raise IterateError(
            f"chat_format: text: the policy {recipe.policy.label()!r} has a chat template, so ResponseSampler "
            "samples string prompts through it and writes them back as one user message: the prompts would not "
            "stay text. Use chat_format: auto (or messages), or a policy without a chat template"
        )


def round_steps(recipe: IterateRecipe, r: int, policy: ModelRef, reference: ModelRef) -> list[Step]:
    """Round ``r``'s steps: sample from ``policy``, score under ``reference`` and ``policy``, margins,
    selection, annotation (the last step is the ``AnnotateSelected``; with Label Studio labels the
    ``AnnotationSelector``, and people annotate after it)."""
    from hfpref.steps.logprobs import LogProbAnnotator
    from hfpref.steps.sampling import ResponseSampler

    generator = (
        recipe.policy.model if r == recipe.first_round else f"{recipe.output.name}/round-{r - 1}/policy"
    )
    steps: list[Step] = [
        ResponseSampler(recipe.sampler_config(policy, generator)),
        LogProbAnnotator(recipe.logprob_config(reference, "ref")),
    ]
    if policy == reference:
        steps.append(
            CopyColumns(
                columns={C.REF_LOGPS: C.POLICY_LOGPS, C.REF_TOKEN_COUNTS: "policy_token_counts"},
                reason=f"round {r}: the policy is its own reference, so its log-probs are the reference's",
            )
        )
    else:
        steps.append(LogProbAnnotator(recipe.logprob_config(policy, "policy")))
    steps += [ImplicitMargins(recipe.margin_config()), AnnotationSelector(recipe.selection_config(r))]
    if not recipe.human_labels:
        steps.append(AnnotateSelected(recipe.annotate_config()))
    return steps


def _build_round(
    recipe: IterateRecipe,
    r: int,
    policy: ModelRef,
    reference: ModelRef,
    prompts,
    input_info: dict[str, Any],
    folder: Path,
    batch_size: int,
    num_proc: int | None,
) -> int:
    """Sample, score, select, annotate and write round ``r``'s release; returns its number of pairs."""
    from hfpref.release.writer import read_manifest, write_manifest_and_card, write_release
    from hfpref.steps.selection import split_dropped

    steps = round_steps(recipe, r, policy, reference)
    selection_config = recipe.selection_config(r)
    name = selection_config.name
    annotate = steps[-1] if isinstance(steps[-1], AnnotateSelected) else None

    candidates = prompts
    step_rows = []
    for step in steps:
        rows_in = len(candidates)
        try:
            candidates = step.apply(
                candidates, batch_size=batch_size, num_proc=num_proc if _is_model(step) else None
            )
        except EqualMarginsError as err:
            raise IterateError(
                f"round {r}: {err}. In the loop, start from a policy that differs from its reference "
                "(`reference: {model: SFT_MODEL}` with a DPO-trained policy, or `warmup: {fraction: 0.1}`), or "
                "set `selection: {on_equal_margins: random}`"
            ) from None
        step_rows.append({"rows_in": rows_in, "rows_out": len(candidates)})
        _unload(step)
    labels = None
    if annotate is None:  # people label the selected pairs in Label Studio
        from hfpref.human.labelstudio import label_round

        settings = recipe.label_studio_settings(r)
        labels = label_round(candidates, **settings, source=f"{recipe.output.name}/round-{r}")
        if labels.pending:
            raise LabelsPendingError(
                labels.pending_message(r), round_number=r, project=settings["project"], pending=labels.pending
            )
        pair_maker: Any = LabelStudioLabels(settings)
        kept, dropped = human_pairs(labels.pull, candidates, name)
    else:
        pair_maker = AnnotatedPairs(preferences_column=annotate.preferences_column())
        kept, dropped = split_dropped(pair_maker.apply(candidates, batch_size=batch_size))

    description = (
        f"Round {r} of {recipe.rounds} of iterative DPO with annotation by implicit-margin selection "
        f"({selection_config.strategy}, {selection_config.level} level)."
        + (f" {recipe.description}" if recipe.description else "")
    )
    round_recipe = Recipe(
        input=recipe.input,
        steps=[StepSpec(step=type(s).__name__, config=s.describe()["config"]) for s in steps],
        pairs=PairsSpec(strategies=[name], config={}),
        output=OutputSpec(
            folder=str(release_dir(folder, r)),
            name=recipe.output.name,
            version=round_version(recipe.output.version, r),
            license=recipe.output.license,
            candidate_matrices=recipe.output.candidate_matrices,
        ),
        description=description,
        source=recipe.source,
    )
    result = RecipeResult(
        recipe=round_recipe,
        candidates=candidates,
        steps=steps,
        pairs={name: kept},
        dropped={name: Counter(dropped)},
        selectors={name: pair_maker},
        input_info=input_info,
        step_rows=step_rows,
    )
    target = release_dir(folder, r)
    write_release(result, target)
    manifest = read_manifest(target)
    manifest["iteration"] = iteration_record(
        recipe, r, policy, reference, candidates, kept, dropped, annotate, labels
    )
    if annotate is not None:
        manifest["models"] = manifest.get("models", []) + _annotator_models(annotate)
    # rendered by the card template, so a later re-render (hfpref push sets the version) keeps it
    manifest["extra_sections"] = [iteration_card_section(manifest["iteration"])]
    write_manifest_and_card(target, manifest)
    return len(kept)


@dataclasses.dataclass
class LabelStudioLabels:
    """What made a round's pairs when people label them, described like a step for ``pair_selection``."""

    settings: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"step": "LabelStudio", "version": "1", "config": dict(self.settings), "revision": None}


def human_pairs(pull, candidates, strategy: str):
    """The round's TRL preference rows from a Label Studio pull, and the drop reasons of the other pairs.

    Input: ``pull.rows`` (``hfpref.human.labelstudio.collect_labels``: prompt, chosen, rejected, label_source,
    pair_id, annotators, votes, ``source_row``, ``chosen_index``, ``rejected_index``) and the round's
    candidates (``responses``, ``generators``, ``implicit_rewards`` when present). Output columns: the pulled
    columns, with ``chosen`` / ``rejected`` as one assistant message for a conversational prompt (as
    ``AnnotatedPairs`` writes them, so TRL sees one format), ``chosen_generator`` / ``rejected_generator``,
    ``implicit_reward_chosen`` / ``implicit_reward_rejected`` / ``implicit_margin`` (the margin TRL logs),
    and ``pair_strategy``. Drop reasons: ``human_<outcome>`` for ties, skips, no majority, disagreements.
    """
    import datasets

    from hfpref.core.columns import IMPLICIT_REWARDS

    names = candidates.column_names
    rows = []
    for pulled in pull.rows:
        row = dict(pulled)
        conversational = isinstance(row[C.PROMPT], list)
        for column in (C.CHOSEN, C.REJECTED):
            if conversational and isinstance(row[column], str):
                row[column] = [{"role": "assistant", "content": row[column]}]
        source, i, j = row.get("source_row"), row.get(C.CHOSEN_INDEX), row.get(C.REJECTED_INDEX)
        known = source is not None and i is not None and j is not None
        generators = candidates[source][C.GENERATORS] if known and C.GENERATORS in names else None
        row[C.CHOSEN_GENERATOR] = generators[i] if generators else None
        row[C.REJECTED_GENERATOR] = generators[j] if generators else None
        implicit = candidates[source][IMPLICIT_REWARDS] if known and IMPLICIT_REWARDS in names else None
        chosen_r, rejected_r = (implicit[i], implicit[j]) if implicit else (None, None)
        row["implicit_reward_chosen"], row["implicit_reward_rejected"] = chosen_r, rejected_r
        row["implicit_margin"] = (
            chosen_r - rejected_r if chosen_r is not None and rejected_r is not None else None
        )
        row[C.PAIR_STRATEGY] = strategy
        rows.append(row)
    empty = {C.PROMPT: [], C.CHOSEN: [], C.REJECTED: [], C.PAIR_STRATEGY: []}
    kept = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(empty)
    dropped = Counter(
        {
            f"human_{outcome}": n
            for outcome, n in pull.counts["outcomes"].items()
            if outcome not in ("response_1", "response_2", "pending")
        }
    )
    return kept, dropped


def _unload(step: Step) -> None:
    """Drop a finished step's loaded models, so the next step (or training) has the accelerator's memory.

    Written by hand: ``Step`` has no public way to unload; its lazy cache (``_loaded``) is emptied, as
    pickling does, and the next use would load again.
    """
    for owner in (step, getattr(step, "annotator", None)):
        if owner is not None:
            owner._loaded.clear()
    _free_memory()


def _is_model(step: Step) -> bool:
    from hfpref.models.step import ModelStep

    return isinstance(step, (ModelStep, AnnotateSelected))


def round_version(version: str, round_number: int) -> str:
    """The version of round r's release, e.g. ``0.1.0-round.2`` (a valid tag ``v0.1.0-round.2``)."""
    return check_version(f"{version}-round.{round_number}")


def _annotator_models(annotate: AnnotateSelected) -> list[dict[str, Any]]:
    from hfpref.release.writer import model_references

    return model_references([annotate.annotator.describe()])


def iteration_record(
    recipe: IterateRecipe,
    r: int,
    policy: ModelRef,
    reference: ModelRef,
    candidates,
    kept,
    dropped: Mapping[str, int],
    annotate: AnnotateSelected | None,
    labels: Any = None,
) -> dict[str, Any]:
    """What the manifest records about the round: models, budget, selection, annotation, training.

    ``annotate`` is the model annotator's step, or None when people labelled the pairs (``labels``: what
    ``hfpref.human.labelstudio.label_round`` found)."""
    selection_config = recipe.selection_config(r)
    if annotate is None:
        pull = labels.pull
        annotation = {
            "annotator": "label-studio",
            "project": pull.project,
            "url": pull.url,
            "rule": pull.rule,
            "min_annotations": pull.min_annotations,
            "pairs_pushed": pull.counts["pairs"],
            "annotations": pull.counts["annotations"],
            "annotators": pull.counts["annotators"],
            "outcomes": pull.counts["outcomes"],
            "agreement": pull.agreement,
            "pairs_kept": len(kept),
            "dropped": dict(sorted(dropped.items())),
        }
    else:
        annotated = candidates[RESPONSE_ANNOTATED]
        annotation = {
            "annotator": annotate.config.annotator,
            "responses": sum(len(row) for row in annotated),
            "responses_annotated": sum(sum(row) for row in annotated),
            "pairs_kept": len(kept),
            "dropped": dict(sorted(dropped.items())),
            **({"pairwise": _pairwise_counts(annotate, candidates)} if annotate.pairwise else {}),
        }
    return {
        "round": r,
        "rounds": recipe.rounds,
        "policy": policy.label(),
        "reference": reference.label(),
        "reference_rule": (
            "the policy the sampling policy was DPO-trained from; in the first round the recipe's reference "
            "(default: the initial policy itself)"
        ),
        "warmup": r == 0,
        "margins": dataclasses.asdict(recipe.margin_config()),
        "budget": {
            **recipe.budget.to_dict(),
            "weights": schedule_weights(recipe.budget.schedule, recipe.rounds),
            "warmup": recipe.warmup,
            "per_round": dict(zip(map(str, recipe.round_numbers()), recipe.round_budgets(), strict=True)),
            "this_round": recipe.round_budgets()[r - recipe.first_round],
        },
        "selection": {**dataclasses.asdict(selection_config), **selection_summary(candidates)},
        "annotation": annotation,
        "training": recipe.training_overrides(),
        "next_policy": f"round-{r}/policy",
    }


def _pairwise_counts(annotate: AnnotateSelected, candidates) -> dict[str, int]:
    """A pairwise annotator's verdicts (ties and order disagreements) and failures over the round."""
    from hfpref.steps.judges.pairwise import pairwise_summary

    prefix = annotate.annotator.config.column_prefix
    counts = pairwise_summary(candidates, prefix)
    for name in ("parse_failures", "request_failures"):
        counts[name] = sum(candidates[f"{prefix}pairwise_{name}"])
    return counts


def iteration_card_section(record: Mapping[str, Any]) -> str:
    """A markdown section for the round's card, from the manifest's ``iteration`` record."""
    selection, budget, annotation = record["selection"], record["budget"], record["annotation"]
    this = budget["this_round"]
    share = f"{100 * this['fraction']:.4g}% of the pairs" if "fraction" in this else f"{this['count']} pairs"
    total = (
        f"{100 * budget['fraction']:.4g}% of all pairs"
        if budget.get("fraction")
        else f"{budget['pairs']} pairs"
    )
    schedule = budget["schedule"] if isinstance(budget["schedule"], str) else f"weights {budget['schedule']}"

    def stat(name: str) -> str:
        s = selection.get(name)
        return (
            "n/a"
            if not s
            else f"mean {s['mean']:.4g}, median {s['median']:.4g}, range {s['min']:.4g}–{s['max']:.4g}"
        )

    excluded = ", ".join(f"{k}: {v}" for k, v in selection["excluded"].items()) or "none"
    dropped = ", ".join(f"{k}: {v}" for k, v in annotation["dropped"].items()) or "none"
    margins = record["margins"]
    if record.get("warmup"):
        title = (
            f"## Warm-up round (round 0 before {record['rounds']} rounds of annotation by implicit margins)"
        )
        how = (
            f"- Warm-up: {100 * budget['warmup']:.4g}% of the total budget annotated at random, to train a policy "
            "that differs from its reference before pairs are selected by margin."
        )
    else:
        title = f"## Iterative round {record['round']} of {record['rounds']} (annotation by implicit margins)"
        how = None
    equal = selection.get("margins_all_equal") and selection["strategy"] != "random"
    lines = [
        title,
        "",
        *([how] if how else []),
        f"- Policy that sampled the responses: `{record['policy']}`; its DPO reference: `{record['reference']}`"
        + (" (the same model)" if record["policy"] == record["reference"] else "")
        + ".",
        *(
            [
                f"- **All eligible margins were equal**, so `{selection['strategy']}` selected at random by the "
                "seed (`selection.on_equal_margins: random`)."
            ]
            if equal
            else []
        ),
        f"- Implicit reward r̂(y) = β·(log π(y|x) − log π_ref(y|x)), β = {margins['beta']}"
        + (", per-token (length-normalised)" if margins["length_normalize"] else ", summed over tokens")
        + "; a pair's margin is r̂(y_i) − r̂(y_j).",
        f"- Selection: `{selection['strategy']}` at {selection['level']} level, seed {selection['seed']}; "
        f"this round's budget: {share} (total {total} over {record['rounds']} rounds, schedule {schedule}).",
        f"- Pairs: {selection['pairs']} in all, {selection['eligible']} eligible (excluded: {excluded}), "
        f"{selection['selected']} selected in {selection['rows_with_selection']} of {selection['rows']} prompts.",
        f"- |margin| of the selected pairs: {stat('abs_margin_selected')}; of the eligible unselected pairs: "
        f"{stat('abs_margin_unselected')}.",
        (
            f"- Annotation by people in Label Studio project `{annotation['project']}` (rule "
            f"{annotation['rule']}, at least {annotation['min_annotations']} annotation(s) a pair): "
            f"{annotation['pairs_pushed']} pairs, {annotation['annotations']} annotations by "
            f"{annotation['annotators']} annotator(s); {annotation['pairs_kept']} pairs kept, dropped: {dropped}."
            if annotation["annotator"] == "label-studio"
            else f"- Annotation by `{annotation['annotator']}`: {annotation['responses_annotated']} of "
            f"{annotation['responses']} responses scored; {annotation['pairs_kept']} pairs kept, dropped: {dropped}."
        ),
        *(
            [
                f"- Pairwise judge, both orders per pair: {pw['judged_pairs']} pairs judged; "
                f"{pw['tie']} ties and {pw['order_disagreement']} order disagreements (both counted as ties); "
                f"{pw['parse_failure']} unreadable and {pw['request_failure']} failed."
            ]
            if (pw := annotation.get("pairwise"))
            else []
        ),
        f"- Unselected pairs stay in the `candidates` config (`selected_for_annotation` is false); the trained "
        f"policy is in `{record['next_policy']}` next to this release.",
        "",
    ]
    return "\n".join(lines)


def _free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def _progress_off(datasets_module) -> Iterator[None]:
    was_enabled = datasets_module.is_progress_bar_enabled()
    datasets_module.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets_module.enable_progress_bars()


__all__ = [
    "BudgetSpec",
    "ChatPrompts",
    "CopyColumns",
    "IterateError",
    "IterateRecipe",
    "LabelsPendingError",
    "LoopState",
    "ModelRef",
    "RoundResult",
    "largest_remainder",
    "models_of_round",
    "round_steps",
    "round_version",
    "run_iterations",
    "schedule_weights",
]
