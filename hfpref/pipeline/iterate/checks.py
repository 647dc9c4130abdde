"""Checks of an iterate recipe before any round runs, and the prompts' format (chat messages or text).

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

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfpref.core import columns as C
from hfpref.pipeline.inputs import load_input
from hfpref.pipeline.iterate.errors import IterateError

if TYPE_CHECKING:
    from hfpref.pipeline.iterate.spec import IterateRecipe


def check_recipe(recipe: IterateRecipe) -> None:
    """Build every config (no model is loaded, nothing is downloaded) and check the DPOConfig fields."""
    from hfpref.steps.annotate import AnnotateSelected

    def build(where: str, make):
        try:
            return make()
        except (TypeError, ValueError) as err:
            raise IterateError(f"{where}: {err}") from err

    build("sampling", lambda: recipe.sampler_config(recipe.policy, "policy"))
    build("logprobs", lambda: recipe.logprob_config(recipe.policy, "ref"))
    build("margins", recipe.margin_config)
    for r in recipe.round_numbers():
        build("selection", lambda r=r: recipe.selection_config(r))
    _check_first_round(recipe)
    if recipe.chat_format == "text":
        check_text_format(recipe)  # loads the policy's tokenizer only (text recipes only)
    if recipe.human_labels:
        check_label_studio(recipe)
    else:
        build("annotation", lambda: AnnotateSelected(recipe.annotate_config()))
    from trl import DPOConfig

    known = {f.name for f in dataclasses.fields(DPOConfig)}
    unknown = [k for k in recipe.training if k not in known]
    if unknown:
        raise IterateError(f"training: unknown trl.DPOConfig field(s) {unknown}")


def _check_first_round(recipe: IterateRecipe) -> None:
    """A policy that is its own reference has no margins to rank in round 1 (see the package notes)."""
    first = recipe.selection_config(1)
    if (
        recipe.warmup is None
        and recipe.initial_reference() == recipe.policy
        and first.strategy != "random"
        and first.on_equal_margins == "error"
    ):
        raise IterateError(
            f"round 1: the policy {recipe.policy.label()!r} is its own reference, so every implicit margin "
            f"is 0 and {first.strategy} selection would be random selection. Set `reference: {{model: "
            "SFT_MODEL}` with a policy DPO-trained from it, or `warmup: {fraction: 0.1}` (a random warm-up "
            "round trains the policy first), or `selection: {on_equal_margins: random}` to accept random "
            "selection in round 1"
        )


def check_label_studio(recipe: IterateRecipe) -> None:
    """The ``annotation`` fields of a Label Studio recipe (the key comes from the environment only)."""
    from hfpref.human.labelstudio import RULES

    settings = recipe.label_studio_settings(recipe.first_round)
    for field in ("seed", "min_annotations", "annotators_per_pair"):
        value = settings[field]
        low = 0 if field == "seed" else 1
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise IterateError(f"annotation.{field} must be an int >= {low}, got {value!r}")
    if settings["rule"] not in RULES:
        raise IterateError(f"annotation.rule must be one of {list(RULES)}, got {settings['rule']!r}")
    project = recipe.annotation.get("project")
    if project is not None and (not isinstance(project, str) or len(project.strip()) < 3):
        raise IterateError(f"annotation.project must be a title of at least 3 characters, got {project!r}")
    url = settings["url"]
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        raise IterateError(f"annotation.url must be an http(s) URL of the Label Studio server, got {url!r}")


# ---- prompts ------------------------------------------------------------------------------------------


def check_input(recipe: IterateRecipe, cache: Path) -> tuple[Any, dict[str, Any]]:
    """The recipe's input rows and their description, after checking they hold prompts and nothing a
    round writes."""
    prompts, info = load_input(recipe.input, cache_dir=cache)
    if C.PROMPT not in prompts.column_names:
        raise IterateError(f"input: no 'prompt' column; the input has {prompts.column_names}")
    stale = [c for c in prompts.column_names if c in (C.RESPONSES, C.GENERATORS, C.REWARDS)]
    if stale:
        raise IterateError(
            f"input: columns {stale} would clash with what each round writes; drop them with input.columns"
        )
    return prompts, info


def load_prompts(recipe: IterateRecipe, cache: Path) -> tuple[Any, dict[str, Any]]:
    """The prompts a round starts from (other input columns come along into every row), chat-formatted if
    asked: what a round's ``ChatPrompts`` step writes."""
    from hfpref.steps.chat_prompts import ChatPrompts

    prompts, info = check_input(recipe, cache)
    if wants_messages(recipe):
        prompts = ChatPrompts().apply(prompts)
    return prompts, info


def wants_messages(recipe: IterateRecipe) -> bool:
    """Whether string prompts become chat messages (a ``ChatPrompts`` step first in every round)."""
    if recipe.chat_format == "text":
        check_text_format(recipe)  # the sampler would write messages back: refused before any round
        return False
    if recipe.chat_format == "messages":
        return True
    return _policy_has_chat_template(recipe)


def _policy_has_chat_template(recipe: IterateRecipe) -> bool:
    from hfpref.models.loading import load_tokenizer

    tokenizer = load_tokenizer(recipe.policy.model, recipe.policy.revision)
    return getattr(tokenizer, "chat_template", None) is not None


def check_text_format(recipe: IterateRecipe) -> None:
    """``chat_format: text`` needs a policy without a chat template (see the module notes)."""
    if _policy_has_chat_template(recipe):
        raise IterateError(
            f"chat_format: text: the policy {recipe.policy.label()!r} has a chat template, so ResponseSampler "
            "samples string prompts through it and writes them back as one user message: the prompts would not "
            "stay text. Use chat_format: auto (or messages), or a policy without a chat template"
        )
