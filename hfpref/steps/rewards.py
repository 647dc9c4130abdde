"""Reward-model scores of candidate responses (models loaded by ``AutoModelForSequenceClassification``).

``RewardAnnotator`` scores each (prompt, response) conversation with the reward model's own
tokenizer and chat template, never the policy's. Two kinds of head, as reward models are published:

* **sequence-classification** heads (transformers' ``*ForSequenceClassification``: Skywork-Reward with
  one label, multi-objective models with k labels): batched as log-probs are
  (``hfpref.models.utils.HiddenStateRunner``: token budget, each prompt computed once for its
  responses), the linear head applied only to the pooled position of each sequence;
* **custom** heads (a ``trust_remote_code`` model whose config maps ``AutoModelForSequenceClassification``
  to its own class in ``auto_map``, e.g. ArmoRM's ``LlamaForRewardModelWithGating``): the head may read
  several positions (ArmoRM gates its objectives on a prompt token) and transform its outputs, so it
  cannot be split off the backbone. These run the model's own forward on length-sorted, right-padded
  batches of at most ``token_budget`` token slots (``CustomHeadScores``); the reward is the output's
  ``score`` (or its 1-D ``logits``), and its per-objective ``rewards`` can be kept as a column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from hfpref.core import columns
from hfpref.core.errors import UserError
from hfpref.core.step import Batch, RowError, row_label
from hfpref.models.utils import (
    HiddenStateRunner,
    ModelStep,
    ModelStepConfig,
    Prompt,
    SequenceQuery,
    check_candidates_row,
    is_local_model,
    load_tokenizer,
    max_length_of,
)
from hfpref.steps.chat_prompts import MESSAGES, PromptFormError
from hfpref.steps.logprobs import real_responses, realign

REWARD_OUTPUTS = columns.REWARD_OUTPUTS
REWARD_TRUNCATED_TOKENS = columns.REWARD_TRUNCATED_TOKENS
REWARD_OBJECTIVES = columns.REWARD_OBJECTIVES

CLASSIFICATION_HEAD = "sequence-classification"
CUSTOM_HEAD = "custom"
_AUTO_CLASS = "AutoModelForSequenceClassification"


class RewardModelError(UserError):
    """A reward model that cannot be scored as configured (custom code not trusted, outputs it lacks)."""


@dataclasses.dataclass(frozen=True)
class HeadInfo:
    """What kind of head a reward model has, read from its config alone (no weights loaded)."""

    kind: str  # CLASSIFICATION_HEAD or CUSTOM_HEAD
    model_class: str  # "LlamaForSequenceClassification" or the auto_map entry "modeling_x.Class"
    num_labels: int


def head_info(model_config: Any) -> HeadInfo:
    """The head a config declares: custom when ``auto_map`` maps ``AutoModelForSequenceClassification``."""
    custom = (getattr(model_config, "auto_map", None) or {}).get(_AUTO_CLASS)
    if isinstance(custom, list | tuple):  # auto_map may list (slow, fast) pairs for tokenizers; models: a str
        custom = custom[0]
    if custom:
        return HeadInfo(CUSTOM_HEAD, custom.split("--")[-1], model_config.num_labels)
    architectures = getattr(model_config, "architectures", None) or ["?"]
    return HeadInfo(CLASSIFICATION_HEAD, architectures[0], model_config.num_labels)


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


def pooled_position(tokens: Sequence[int], pad_token_id: int | None) -> int:
    """Where transformers' sequence-classification heads read an unpadded sequence.

    The last token when the model has no pad token; otherwise the last token that is not the pad
    token (so a trailing EOS that doubles as pad is skipped, as the model itself does).
    """
    if pad_token_id is None:
        return len(tokens) - 1
    for position in range(len(tokens) - 1, -1, -1):
        if tokens[position] != pad_token_id:
            return position
    return 0


class SequenceScores:
    """Raw reward-head outputs of token sequences under a loaded sequence-classification model.

    ``scores(groups)`` takes ``groups[g][k]`` = token ids and returns ``outputs[g][k]`` = the list of
    ``num_labels`` floats the model returns for that sequence alone. Models whose head is a linear
    ``score`` layer over the base model's final hidden states (Llama, Qwen2, Mistral, Gemma, ...)
    run packed; others run one sequence at a time through their own forward.
    """

    def __init__(
        self, model: Any, *, token_budget: int = 16384, packing: str = "auto", compile: bool = False
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.pad_token_id = model.config.get_text_config().pad_token_id
        score = getattr(model, "score", None)
        self.packed = isinstance(score, torch.nn.Linear) and model.base_model is not model
        self.runner = (
            HiddenStateRunner(model, token_budget=token_budget, packing=packing, compile=compile)
            if self.packed
            else None
        )
        if compile and not self.packed:
            warnings.warn(
                f"compile applies to packed reward models only; {type(model).__name__} runs eagerly",
                stacklevel=2,
            )

    def __call__(self, groups: Sequence[Sequence[Sequence[int]]]) -> list[list[list[float]]]:
        if not self.packed:
            return [[self._alone(tokens) for tokens in group] for group in groups]
        queries = [
            [SequenceQuery(tokens, [pooled_position(tokens, self.pad_token_id)]) for tokens in group]
            for group in groups
        ]
        outputs = {}
        for rows in self.runner.run(queries):
            with torch.inference_mode():
                values = self.model.score(rows.hidden).float()  # one row per sequence
            outputs.update(zip(rows.keys, values.tolist(), strict=True))
        return [[outputs[(g, k)] for k in range(len(group))] for g, group in enumerate(groups)]

    def _alone(self, tokens: Sequence[int]) -> list[float]:
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.tensor([list(tokens)], device=self.device), use_cache=False
            ).logits
        return logits[0].float().tolist()


@dataclasses.dataclass
class HeadOutputs:
    """A custom head's outputs for one sequence: ``values`` (its ``score``, or its logits row) and the
    per-objective ``objectives`` (its ``rewards`` output; None when it has none)."""

    values: list[float]
    objectives: list[float] | None


def _field(output: Any, name: str) -> Any:
    if isinstance(output, Mapping):  # ModelOutput is an OrderedDict without its None fields
        return output.get(name)
    return getattr(output, name, None)


def read_custom_outputs(output: Any, count: int, model_name: str) -> list[HeadOutputs]:
    """Split a custom head's batched output into one ``HeadOutputs`` per sequence.

    ``score`` ([batch] or [batch, 1], ArmoRM's preference score) is the value when present, else
    ``logits`` ([batch], [batch, 1] or [batch, k]); ``rewards`` ([batch, objectives]) are the objectives.
    """
    score = _field(output, "score")
    if not isinstance(score, torch.Tensor):
        score = _field(output, "logits")
    if not isinstance(score, torch.Tensor):
        fields = list(output.keys()) if isinstance(output, Mapping) else type(output).__name__
        raise RewardModelError(
            f"reward model {model_name!r}: its forward returned neither `score` nor `logits` "
            f"(it returned {fields}); hfpref reads one of those as the reward"
        )
    values = score.detach().float().reshape(count, -1).tolist()
    objectives = _field(output, "rewards")
    rows = (
        objectives.detach().float().reshape(count, -1).tolist()
        if isinstance(objectives, torch.Tensor)
        else [None] * count
    )
    return [HeadOutputs(v, o) for v, o in zip(values, rows, strict=True)]


class CustomHeadScores:
    """Outputs of a custom-code reward model's own forward on token sequences.

    ``scores(groups)`` takes ``groups[g][k]`` = token ids and returns ``outputs[g][k]`` = the
    ``HeadOutputs`` the model gives that sequence alone. Sequences run length-sorted (longest first) in
    right-padded batches of at most ``token_budget`` token slots, padded with the model's pad token and an
    attention mask, so a head that finds each sequence's end from the first pad token (ArmoRM) or from the
    mask reads the right positions. A head that pools at a fixed position would not: the first padded
    batch is checked once against its shortest member run alone, and on a mismatch (or without a pad
    token) every sequence runs alone, with a warning.
    """

    def __init__(self, model: Any, *, token_budget: int = 16384, name: str = "") -> None:
        self.model = model
        self.name = name
        self.device = next(model.parameters()).device
        self.pad_token_id = model.config.get_text_config().pad_token_id
        self.token_budget = token_budget
        self.padded = self.pad_token_id is not None
        self.checked = False
        self.dtype = next(model.parameters()).dtype
        parameters = inspect.signature(model.forward).parameters
        takes_cache = "use_cache" in parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        )
        self._extra = {"use_cache": False} if takes_cache else {}  # no KV cache for a single forward

    def __call__(self, groups: Sequence[Sequence[Sequence[int]]]) -> list[list[HeadOutputs]]:
        flat = [(g, k, list(tokens)) for g, group in enumerate(groups) for k, tokens in enumerate(group)]
        results: dict[tuple[int, int], HeadOutputs] = {}
        for batch in self._batches(flat):
            outputs = self._forward([tokens for _, _, tokens in batch])
            if self.padded and not self.checked and len({len(t) for _, _, t in batch}) > 1:
                self.checked = True
                if not self._agrees(outputs[-1], self._forward([batch[-1][2]])[0]):
                    warnings.warn(
                        f"reward model {self.name!r}: its head reads padded batches differently from single "
                        "sequences, so every sequence runs alone (slower)",
                        stacklevel=2,
                    )
                    self.padded = False
                    return self(groups)
            results.update(((g, k), out) for (g, k, _), out in zip(batch, outputs, strict=True))
        return [[results[(g, k)] for k in range(len(group))] for g, group in enumerate(groups)]

    def _batches(self, flat: list[tuple[int, int, list[int]]]) -> list[list[tuple[int, int, list[int]]]]:
        if not self.padded:
            return [[item] for item in flat]
        batches: list[list[tuple[int, int, list[int]]]] = []
        for item in sorted(
            flat, key=lambda item: -len(item[2])
        ):  # longest first: a batch's first is its width
            if batches and len(batches[-1][0][2]) * (len(batches[-1]) + 1) <= self.token_budget:
                batches[-1].append(item)
            else:
                batches.append([item])
        return batches

    def _forward(self, sequences: list[list[int]]) -> list[HeadOutputs]:
        width = max(len(tokens) for tokens in sequences)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in sequences], device=self.device)
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in sequences], device=self.device)
        with torch.inference_mode():
            output = self.model(input_ids=ids, attention_mask=mask, **self._extra)
        return read_custom_outputs(output, len(sequences), self.name)

    def _agrees(self, a: HeadOutputs, b: HeadOutputs) -> bool:
        # float32 padded and single runs agree to rounding; half precision kernels differ more
        tolerance = 1e-4 if self.dtype == torch.float32 else 3e-2
        pairs = [(a.values, b.values), (a.objectives or [], b.objectives or [])]
        return all(
            len(x) == len(y)
            and all(abs(u - v) <= tolerance * max(1.0, abs(v)) for u, v in zip(x, y, strict=True))
            for x, y in pairs
        )


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
            kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
            if not is_local_model(config.model):
                kwargs["revision"] = self.resolved_revision()
            info = head_info(AutoConfig.from_pretrained(config.model, **kwargs))
            if info.kind == CUSTOM_HEAD and not config.trust_remote_code:
                raise RewardModelError(
                    f"reward model {config.model!r} is a custom-code model: its config.json maps "
                    f"{_AUTO_CLASS} to {info.model_class!r} (auto_map), which runs code from the model's "
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
        groups, truncated, positions = [], [], []
        for i, (prompt, all_responses) in enumerate(
            zip(batch[columns.PROMPT], batch[columns.RESPONSES], strict=True)
        ):
            label = row_label(batch, i, indices)
            # a missing response (None) is not scored: only the real ones are, and None is written for it
            present, responses = real_responses(all_responses)
            check_candidates_row(prompt, responses, label)
            sequences, cuts = [], []
            for k, response in zip(present, responses, strict=True):
                where = f"{label} response {k} ({response[:80]!r})"
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
                sequences.append(ids[: loaded.max_length] if excess > 0 else ids)
                cuts.append(max(excess, 0))
            groups.append(sequences)
            truncated.append(cuts)
            positions.append((present, len(all_responses)))
        outputs = loaded.scorer(groups)
        if loaded.head.kind == CUSTOM_HEAD:
            sources, rewards, objectives = self.custom_columns(outputs)
        else:
            sources, objectives = outputs, outputs
            rewards = [[self.reward_of(o) for o in row] for row in outputs]
        source = f"{self.config.model}@{self.resolved_revision()}"

        def aligned(rows: list) -> list:
            return [realign(row, *where) for row, where in zip(rows, positions, strict=True)]

        out: Batch = {columns.REWARDS: aligned(rewards), columns.REWARD_SOURCE: [source] * len(groups)}
        if self.config.multi_objective:
            out[REWARD_OUTPUTS] = aligned(sources)
        if self.config.objectives:
            out[REWARD_OBJECTIVES] = aligned(objectives)
        if self.config.overflow == "truncate":
            out[REWARD_TRUNCATED_TOKENS] = aligned(truncated)
        return out

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
