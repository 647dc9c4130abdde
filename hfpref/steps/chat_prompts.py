"""One prompt context for sampling and scoring: the prompt's form is a fact of the data.

A prompt is either *text* (a string, tokenized as it is) or *messages* (a list of ``{"role", "content"}``
chat messages, tokenized through the model's chat template, as TRL does for conversational prompts).
Whatever formats a prompt with a chat template writes it back as messages, so every later model step
(log-probs under π_ref or the policy, rewards, TRL's trainer) sees the conversation the responses were
generated in, never the raw string:

* ``ChatPrompts`` (a registered step) turns string prompts into one user message;
* ``ResponseSampler`` samples a string prompt through the chat template when its tokenizer has one and
  then writes the prompt back as that one user message (without a template a string stays text);
* ``LogProbAnnotator`` scores messages through its own tokenizer's chat template and text as text, and
  refuses messages when its model has no chat template.

Recipes check this before running anything (``check_prompt_forms``): a step may declare
``prompt_form_after(form) -> form`` (``"text"``, ``"messages"`` or None when not known); it raises
``PromptFormError`` when it cannot take prompts of that form (e.g. a scorer without a chat template after a
sampler that used one), and returns the form of ``prompt`` after it. A step without the method that writes
``prompt`` makes the form unknown; one that does not write it leaves it unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label

TEXT = "text"
MESSAGES = "messages"


class PromptFormError(UserError):
    """Prompts of a form (text or chat messages) that a step cannot take; the message names the fix."""


def is_messages(value: Any) -> bool:
    """True for a non-empty list of ``{"role": str, "content": str}`` dicts (TRL's conversational prompt)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    )


def chat_template_sha256(tokenizer: Any) -> str | None:
    """sha256 of the tokenizer's chat template (named templates hashed as sorted JSON), None without one.

    Recorded in the manifest by the steps that format prompts with it, so a card says which template
    made the conversations its log-probs were computed in.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_form_of_feature(feature: Any) -> str | None:
    """The form of a dataset's ``prompt`` column from its ``datasets`` feature (None when not one of the two)."""
    import datasets

    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return TEXT
    if isinstance(feature, (list, datasets.List, datasets.LargeList, datasets.Sequence)):
        return MESSAGES
    return None


def check_prompt_forms(steps: Sequence[Any], wheres: Sequence[str], form: str | None) -> str | None:
    """Walk the steps' declared prompt forms from the input's ``form``; raise ``PromptFormError`` at the
    first step that cannot take what reaches it (its message prefixed with ``wheres[i]``). Returns the
    form after the last step."""
    for step, where in zip(steps, wheres, strict=True):
        hook = getattr(step, "prompt_form_after", None)
        if hook is not None:
            try:
                form = hook(form)
            except PromptFormError as error:
                raise PromptFormError(f"{where}: {error}") from error
        elif C.PROMPT in step.output_columns():
            form = None  # rewritten by a step that does not say how
    return form


@dataclasses.dataclass
class ChatPromptsConfig(StepConfig):
    """``role``: the role of the one message a string prompt becomes (TRL's conversational format)."""

    role: str = "user"

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not self.role:
            raise ValueError(
                f"ChatPromptsConfig.role must be a non-empty string such as 'user', got {self.role!r}"
            )


class ChatPrompts(Step):
    """String prompts become one chat message (``[{"role": "user", "content": prompt}]``).

    Input column: ``prompt`` (str or list of messages); output column: ``prompt`` (list of messages; message
    lists pass unchanged). Put it before the model steps of a recipe whose prompts are plain text to make
    every model see the conversation: a sampler with a chat template does the same to string prompts itself.
    """

    config_class = ChatPromptsConfig
    version = "1"
    config: ChatPromptsConfig

    def input_columns(self) -> list[str]:
        return [C.PROMPT]

    def output_columns(self) -> list[str]:
        return [C.PROMPT]

    def prompt_form_after(self, form: str | None) -> str:
        return MESSAGES

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        out = []
        for i, prompt in enumerate(batch[C.PROMPT]):
            if isinstance(prompt, str):
                out.append([{"role": self.config.role, "content": prompt}])
            elif is_messages(prompt):
                out.append(prompt)
            else:
                raise RowError(
                    f"{self.name}: {row_label(batch, i, indices)} column 'prompt' must be a string or a list "
                    f"of {{'role', 'content'}} messages, got {prompt!r:.200}"
                )
        return {C.PROMPT: out}


__all__ = [
    "MESSAGES",
    "TEXT",
    "ChatPrompts",
    "ChatPromptsConfig",
    "PromptFormError",
    "chat_template_sha256",
    "check_prompt_forms",
    "is_messages",
    "prompt_form_of_feature",
]
