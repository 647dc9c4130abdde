"""Reward-model scores of candidate responses (models loaded by ``AutoModelForSequenceClassification``).

``RewardAnnotator`` scores each (prompt, response) conversation with the reward model's own
tokenizer and chat template, never the policy's. The reward model's head is either a
sequence-classification head (packed like log-probs) or a custom-code head run through the model's own
forward: ``hfpref.steps.reward_heads`` computes both; this module picks the head from the model's config,
turns its outputs into the reward columns and records what was scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from typing import Any

from transformers import AutoModelForSequenceClassification

from hfpref.core import columns
from hfpref.core.step import Batch, RowError
from hfpref.models.loading import load_config, load_tokenizer, max_length_of
from hfpref.models.step import ModelStep, ModelStepConfig
from hfpref.steps.candidates import Prompt, candidates_rows
from hfpref.steps.chat_prompts import MESSAGES, PromptFormError
from hfpref.steps.reward_heads import (
    AUTO_CLASS,
    CUSTOM_HEAD,
    CustomHeadScores,
    HeadInfo,
    HeadOutputs,
    RewardModelError,
    SequenceScores,
    head_info,
)

REWARD_OUTPUTS = columns.REWARD_OUTPUTS
REWARD_TRUNCATED_TOKENS = columns.REWARD_TRUNCATED_TOKENS
REWARD_OBJECTIVES = columns.REWARD_OBJECTIVES


def chat_template_hash(tokenizer: Any) -> str | None:
    """``sha256:<hex>`` of the tokenizer's chat template (a dict of named templates as sorted JSON); None without one."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def conversation_ids(tokenizer: Any, prompt: Prompt, response: str) -> list[int]:
    """Token ids of the conversation the reward model scores.

    With a chat template: the prompt's messages (a string prompt becomes one user message) followed by
    the response as an assistant message, rendered by the reward model's template. Without one: the
    plain text ``prompt + response`` tokenized with the tokenizer's special tokens (a string prompt
    only; chat messages need a template to be rendered faithfully).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages.append({"role": "assistant", "content": response})
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    if not isinstance(prompt, str):
        raise ValueError(
            "the reward model's tokenizer has no chat template, so it cannot render chat messages"
        )
    return list(tokenizer(text=prompt + response)["input_ids"])


@dataclasses.dataclass
class RewardConfig(ModelStepConfig):
    """Which reward model scores the responses, and how (shared fields: see ``ModelStepConfig``; a
    truncated conversation is scored on its first ``max_length`` tokens and the dropped tokens are
    counted in ``reward_truncated_tokens``).

    ``reward_index`` / ``reward_weights``: for a head with several outputs, ``rewards`` is that output
    or the weighted sum of all, and the outputs are also written to ``reward_outputs``. On a
    sequence-classification head they select among its k labels; on a custom head among its
    per-objective ``rewards`` (instead of its ``score``). A single-output head needs neither.
    ``objectives``: also write ``reward_objectives``, the per-objective rewards of each response (a
    custom head's ``rewards`` output, a classification head's k outputs).
    ``trust_remote_code`` (shared field, default False) must be set for a custom-code model such as
    ArmoRM; without it transformers would silently load a plain classification head instead.
    """

    reward_index: int | None = None
    reward_weights: list[float] | None = None
    objectives: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reward_index is not None and self.reward_weights is not None:
            raise ValueError("set reward_index or reward_weights, not both")

    @property
    def multi_objective(self) -> bool:
        return self.reward_index is not None or self.reward_weights is not None


@dataclasses.dataclass
class _LoadedRM:
    tokenizer: Any
    scorer: SequenceScores | CustomHeadScores
    max_length: int | None
    num_labels: int
    head: HeadInfo


class RewardAnnotator(ModelStep):
    """Adds reward-model scores of each response.

    Input columns: ``prompt`` (str or list of chat messages), ``responses`` (list[str]; a None response is
    missing: not scored, None in every per-response output).
    Output columns: ``rewards`` (list[float]); ``reward_source`` (str, ``"<model>@<commit or content
    hash>"``); with ``reward_index``/``reward_weights`` also ``reward_outputs`` (list[list[float]], the
    outputs the reward was taken from); with ``objectives`` also ``reward_objectives``
    (list[list[float]]); with ``overflow="truncate"`` also ``reward_truncated_tokens``.
    ``describe()["scored"]`` records what was scored (model, revision, head kind and class, the output
    or objectives the reward is, the chat template's hash), so the release manifest shows it.
    """

    config_class = RewardConfig
    version = "2"  # 2: custom heads, `scored` in describe()
    config: RewardConfig

    def input_columns(self) -> list[str]:
        return [columns.PROMPT, columns.RESPONSES]

    def output_columns(self) -> list[str]:
        names = [columns.REWARDS, columns.REWARD_SOURCE]
        if self.config.multi_objective:
            names.append(REWARD_OUTPUTS)
        if self.config.objectives:
            names.append(REWARD_OBJECTIVES)
        if self.config.overflow == "truncate":
            names.append(REWARD_TRUNCATED_TOKENS)
        return names

    def head(self) -> HeadInfo:
        """The model's head, from its config; refuses custom code unless ``trust_remote_code`` is set."""
        if getattr(self, "_head", None) is None:
            config = self.config
            info = head_info(load_config(config.model, self.resolved_revision(), config.trust_remote_code))
            if info.kind == CUSTOM_HEAD and not config.trust_remote_code:
                raise RewardModelError(
                    f"reward model {config.model!r} is a custom-code model: its config.json maps "
                    f"{AUTO_CLASS} to {info.model_class!r} (auto_map), which runs code from the model's "
                    "repository; without trusting it transformers would load a plain sequence-classification "
                    "head with random weights. Read that modeling file, then set trust_remote_code: true in "
                    "the RewardAnnotator's config"
                )
            self._head = info
        return self._head

    def reward_selection(self) -> str:
        """Which output the reward is, in words (for ``describe`` and the card)."""
        config, custom = self.config, self.head().kind == CUSTOM_HEAD
        among = "objectives (the head's `rewards`)" if custom else "outputs"
        if config.reward_index is not None:
            return f"index {config.reward_index} of the {among}"
        if config.reward_weights is not None:
            return f"weights {list(config.reward_weights)} over the {among}"
        return "the head's `score` (or its single logit)" if custom else "the head's single output"

    def describe(self) -> dict[str, Any]:
        if getattr(self, "_scored", None) is None:
            head = self.head()
            tokenizer = load_tokenizer(
                self.config.model, self.resolved_revision(), self.config.trust_remote_code
            )
            self._scored = {
                "model": self.config.model,
                "revision": self.resolved_revision(),
                "head": head.kind,
                "model_class": head.model_class,
                "reward": self.reward_selection(),
                "chat_template": chat_template_hash(tokenizer),
            }
        return {**super().describe(), "scored": self._scored}

    def has_chat_template(self) -> bool:
        """Whether the reward model's tokenizer has a chat template (a tokenizer alone loads in milliseconds)."""
        if not hasattr(self, "_has_chat_template"):
            tokenizer = load_tokenizer(
                self.config.model, self.resolved_revision(), self.config.trust_remote_code
            )
            self._has_chat_template = chat_template_hash(tokenizer) is not None
        return self._has_chat_template

    def prompt_form_after(self, form: str | None) -> str | None:
        """Refuses chat-message prompts when the reward model has no chat template (``conversation_ids``
        cannot render them), so a recipe fails in preflight, before sampling; the form passes unchanged."""
        if form == MESSAGES and not self.has_chat_template():
            raise PromptFormError(
                f"the prompts are chat messages (an earlier step, e.g. a sampler with a chat template, formatted "
                f"them as a conversation) but the tokenizer of reward model {self.config.model!r} has no chat "
                "template, so it cannot score them in that conversation; use a reward model whose tokenizer has "
                "a chat template, or sample plain-text prompts with a policy without one"
            )
        return form

    def load(self, rank: int | None) -> _LoadedRM:
        config = self.config
        head = self.head()
        model, tokenizer = self.load_model_and_tokenizer(AutoModelForSequenceClassification, rank)
        num_labels = model.config.num_labels
        max_length = config.max_length or max_length_of(model)
        if head.kind == CUSTOM_HEAD:
            # the number of outputs is known only from the model's forward: checked on the first batch
            if config.compile:
                warnings.warn(
                    f"compile applies to sequence-classification heads only; {config.model!r} runs eagerly",
                    stacklevel=2,
                )
            scorer = CustomHeadScores(model, token_budget=config.token_budget, name=config.model)
            return _LoadedRM(tokenizer, scorer, max_length, num_labels, head)
        if num_labels > 1 and not config.multi_objective:
            raise RewardModelError(
                f"reward model {config.model!r} has {num_labels} outputs; set reward_index or reward_weights"
            )
        self.check_selection(num_labels, "outputs")
        scorer = SequenceScores(
            model, token_budget=config.token_budget, packing=config.packing, compile=config.compile
        )
        return _LoadedRM(tokenizer, scorer, max_length, num_labels, head)

    def check_selection(self, count: int, what: str) -> None:
        """Raise unless ``reward_index`` / ``reward_weights`` fit ``count`` outputs or objectives."""
        config = self.config
        if config.reward_index is not None and not 0 <= config.reward_index < count:
            raise RewardModelError(f"reward_index {config.reward_index} is out of range for {count} {what}")
        if config.reward_weights is not None and len(config.reward_weights) != count:
            raise RewardModelError(
                f"reward_weights has {len(config.reward_weights)} entries for {count} {what}"
            )

    def reward_of(self, outputs: list[float]) -> float:
        if self.config.reward_weights is not None:
            return float(sum(w * o for w, o in zip(self.config.reward_weights, outputs, strict=True)))
        return outputs[self.config.reward_index or 0]

    def custom_columns(self, outputs: list[list[HeadOutputs]]) -> tuple[list, list, list]:
        """(the vectors the reward is taken from, the rewards, the objectives) of a custom head's outputs."""
        config, name = self.config, self.config.model
        first = next((o for row in outputs for o in row), None)
        if first is None:  # every response of the batch is missing: nothing was scored
            return [[] for _ in outputs], [[] for _ in outputs], [[] for _ in outputs]
        if config.objectives and first.objectives is None:
            raise RewardModelError(
                f"reward model {name!r} returns no per-objective `rewards`, so objectives=true has nothing "
                "to write; drop objectives"
            )
        if config.multi_objective:
            pick = "objectives" if first.objectives is not None else "values"
            self.check_selection(
                len(getattr(first, pick)), "objectives" if pick == "objectives" else "outputs"
            )
            sources = [[getattr(o, pick) for o in row] for row in outputs]
        else:
            if len(first.values) != 1:
                raise RewardModelError(
                    f"reward model {name!r} returns {len(first.values)} logits and no `score`; set "
                    "reward_index or reward_weights"
                )
            sources = [[o.values for o in row] for row in outputs]
        rewards = [[self.reward_of(v) for v in row] for row in sources]
        objectives = [[o.objectives for o in row] for row in outputs]
        return sources, rewards, objectives

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        loaded = self.resources(rank)
        rows, groups, truncated = [], [], []
        for row in candidates_rows(batch, indices):  # missing (None) responses are not scored
            sequences, cuts = [], []
            for k, response in zip(row.present, row.responses, strict=True):
                ids, cut = self._conversation(
                    loaded, row.prompt, response, f"{row.label} response {k} ({response[:80]!r})"
                )
                sequences.append(ids)
                cuts.append(cut)
            rows.append(row)
            groups.append(sequences)
            truncated.append(cuts)
        outputs = loaded.scorer(groups)
        if loaded.head.kind == CUSTOM_HEAD:
            sources, rewards, objectives = self.custom_columns(outputs)
        else:
            sources, objectives = outputs, outputs
            rewards = [[self.reward_of(o) for o in row] for row in outputs]
        source = f"{self.config.model}@{self.resolved_revision()}"

        def aligned(per_row: list) -> list:
            return [row.realign(values) for row, values in zip(rows, per_row, strict=True)]

        out: Batch = {columns.REWARDS: aligned(rewards), columns.REWARD_SOURCE: [source] * len(groups)}
        if self.config.multi_objective:
            out[REWARD_OUTPUTS] = aligned(sources)
        if self.config.objectives:
            out[REWARD_OBJECTIVES] = aligned(objectives)
        if self.config.overflow == "truncate":
            out[REWARD_TRUNCATED_TOKENS] = aligned(truncated)
        return out

    def _conversation(
        self, loaded: _LoadedRM, prompt: Prompt, response: str, where: str
    ) -> tuple[list[int], int]:
        """The token ids the reward model scores for one response (within ``max_length``), and how many
        tokens were cut off to fit (0, or an error with ``overflow="error"``)."""
        try:
            ids = conversation_ids(loaded.tokenizer, prompt, response)
        except Exception as error:
            raise RowError(f"{where}: cannot tokenize for the reward model: {error}") from error
        if not ids:
            raise RowError(f"{where}: the conversation tokenizes to nothing")
        excess = len(ids) - loaded.max_length if loaded.max_length else 0
        if excess > 0 and self.config.overflow == "error":
            raise RowError(
                f"{where}: {len(ids)} tokens exceed max_length={loaded.max_length}; "
                "set overflow='truncate' to score its first tokens"
            )
        return (ids[: loaded.max_length] if excess > 0 else ids), max(excess, 0)

    def output_features(self, input_features: Any) -> Any:
        """The output columns' types, fixed up front: a batch whose responses are all missing holds only None."""
        import datasets

        real = datasets.Value("float64")
        features = {
            **input_features,
            columns.REWARDS: datasets.List(real),
            columns.REWARD_SOURCE: datasets.Value("string"),
        }
        if self.config.multi_objective:
            features[REWARD_OUTPUTS] = datasets.List(datasets.List(real))
        if self.config.objectives:
            features[REWARD_OBJECTIVES] = datasets.List(datasets.List(real))
        if self.config.overflow == "truncate":
            features[REWARD_TRUNCATED_TOKENS] = datasets.List(datasets.Value("int64"))
        return datasets.Features(features)
