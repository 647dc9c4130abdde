"""Reward-model scores of candidate responses (``AutoModelForSequenceClassification`` heads).

``RewardAnnotator`` scores each (prompt, response) conversation with the reward model's own
tokenizer and chat template, never the policy's. Batching is the one log-probs use
(``hfpref.model_utils.HiddenStateRunner``: token budget, each prompt computed once for its
responses); the reward head is applied only to the pooled position of each sequence.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from hfpref import columns
from hfpref.logprobs import real_responses, realign
from hfpref.model_utils import (
    HiddenStateRunner,
    ModelStep,
    ModelStepConfig,
    Prompt,
    SequenceQuery,
    check_candidates_row,
    max_length_of,
)
from hfpref.transform import Batch, RowError, row_label

REWARD_OUTPUTS = "reward_outputs"
REWARD_TRUNCATED_TOKENS = "reward_truncated_tokens"


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
class RewardConfig(ModelStepConfig):
    """Which reward model scores the responses, and how (shared fields: see ``ModelStepConfig``; a
    truncated conversation is scored on its first ``max_length`` tokens and the dropped tokens are
    counted in ``reward_truncated_tokens``).

    ``reward_index`` / ``reward_weights``: for a head with several outputs (multi-objective reward
    models), ``rewards`` is that output or the weighted sum of all; setting either also writes the
    raw outputs to ``reward_outputs``. A single-output head needs neither.
    """

    reward_index: int | None = None
    reward_weights: list[float] | None = None

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
    scorer: SequenceScores
    max_length: int | None
    num_labels: int


class RewardAnnotator(ModelStep):
    """Adds reward-model scores of each response.

    Input columns: ``prompt`` (str or list of chat messages), ``responses`` (list[str]; a None response is
    missing: not scored, None in every per-response output).
    Output columns: ``rewards`` (list[float]); ``reward_source`` (str, ``"<model>@<commit or content
    hash>"``); with ``reward_index``/``reward_weights`` also ``reward_outputs`` (list[list[float]], the
    head's raw outputs per response); with ``overflow="truncate"`` also ``reward_truncated_tokens``.
    """

    config_class = RewardConfig
    version = "1"
    config: RewardConfig

    def input_columns(self) -> list[str]:
        return [columns.PROMPT, columns.RESPONSES]

    def output_columns(self) -> list[str]:
        names = [columns.REWARDS, columns.REWARD_SOURCE]
        if self.config.multi_objective:
            names.append(REWARD_OUTPUTS)
        if self.config.overflow == "truncate":
            names.append(REWARD_TRUNCATED_TOKENS)
        return names

    def load(self, rank: int | None) -> _LoadedRM:
        config = self.config
        model, tokenizer = self.load_model_and_tokenizer(AutoModelForSequenceClassification, rank)
        num_labels = model.config.num_labels
        if num_labels > 1 and not config.multi_objective:
            raise ValueError(
                f"reward model {config.model!r} has {num_labels} outputs; set reward_index or reward_weights"
            )
        if config.reward_index is not None and not 0 <= config.reward_index < num_labels:
            raise ValueError(f"reward_index {config.reward_index} is out of range for {num_labels} outputs")
        if config.reward_weights is not None and len(config.reward_weights) != num_labels:
            raise ValueError(
                f"reward_weights has {len(config.reward_weights)} entries for {num_labels} outputs"
            )
        scorer = SequenceScores(
            model, token_budget=config.token_budget, packing=config.packing, compile=config.compile
        )
        return _LoadedRM(tokenizer, scorer, config.max_length or max_length_of(model), num_labels)

    def reward_of(self, outputs: list[float]) -> float:
        if self.config.reward_weights is not None:
            return float(sum(w * o for w, o in zip(self.config.reward_weights, outputs, strict=True)))
        return outputs[self.config.reward_index or 0]

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
        source = f"{self.config.model}@{self.resolved_revision()}"
        out: Batch = {
            columns.REWARDS: [
                realign([self.reward_of(o) for o in row], *where)
                for row, where in zip(outputs, positions, strict=True)
            ],
            columns.REWARD_SOURCE: [source] * len(groups),
        }
        if self.config.multi_objective:
            out[REWARD_OUTPUTS] = [
                realign(row, *where) for row, where in zip(outputs, positions, strict=True)
            ]
        if self.config.overflow == "truncate":
            out[REWARD_TRUNCATED_TOKENS] = [
                realign(row, *where) for row, where in zip(truncated, positions, strict=True)
            ]
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
        if self.config.overflow == "truncate":
            features[REWARD_TRUNCATED_TOKENS] = datasets.List(datasets.Value("int64"))
        return datasets.Features(features)

    def apply(self, dataset, *, batch_size: int = 64, num_proc: int | None = None, **map_kwargs: Any):
        """``Step.apply`` with the output features fixed (see ``output_features``)."""
        map_kwargs.setdefault("features", self.output_features(dataset.features))
        return super().apply(dataset, batch_size=batch_size, num_proc=num_proc, **map_kwargs)
