"""Reward-model heads, as reward models are published, and how their outputs are computed.

* **sequence-classification** heads (transformers' ``*ForSequenceClassification``: Skywork-Reward with
  one label, multi-objective models with k labels): ``SequenceScores`` batches them as log-probs are
  (``hfpref.models.runner.HiddenStateRunner``: token budget, each prompt computed once for its
  responses), the linear head applied only to the pooled position of each sequence;
* **custom** heads (a ``trust_remote_code`` model whose config maps ``AutoModelForSequenceClassification``
  to its own class in ``auto_map``, e.g. ArmoRM's ``LlamaForRewardModelWithGating``): the head may read
  several positions (ArmoRM gates its objectives on a prompt token) and transform its outputs, so it
  cannot be split off the backbone. ``CustomHeadScores`` runs the model's own forward on length-sorted,
  right-padded batches of at most ``token_budget`` token slots; the reward is the output's ``score`` (or
  its 1-D ``logits``), and its per-objective ``rewards`` can be kept as a column.

``head_info`` tells the two apart from the model's config alone.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hfpref.core.errors import UserError
from hfpref.models.packing import SequenceQuery, plan_padded_batches
from hfpref.models.runner import HiddenStateRunner

CLASSIFICATION_HEAD = "sequence-classification"
CUSTOM_HEAD = "custom"
AUTO_CLASS = "AutoModelForSequenceClassification"


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
    custom = (getattr(model_config, "auto_map", None) or {}).get(AUTO_CLASS)
    if isinstance(custom, list | tuple):  # auto_map may list (slow, fast) pairs for tokenizers; models: a str
        custom = custom[0]
    if custom:
        return HeadInfo(CUSTOM_HEAD, custom.split("--")[-1], model_config.num_labels)
    architectures = getattr(model_config, "architectures", None) or ["?"]
    return HeadInfo(CLASSIFICATION_HEAD, architectures[0], model_config.num_labels)


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
        lengths = [len(tokens) for _, _, tokens in flat]
        return [[flat[i] for i in batch] for batch in plan_padded_batches(lengths, self.token_budget)]

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
