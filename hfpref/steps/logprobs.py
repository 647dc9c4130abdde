"""Summed log-probabilities of candidate responses under a causal LM (the reference or the policy).

``LogProbAnnotator`` adds, for every response of a candidates row, log π(y|x) summed over the
response tokens and the number of those tokens. Prompt and response are tokenized as TRL's
``DPOTrainer`` does (``tokenize_responses``), so on a pair the sums equal the ``ref_chosen_logps`` /
``ref_rejected_logps`` TRL precomputes. Forward passes are packed by a token budget with each
prompt computed once for its N responses (``hfpref.models.runner.HiddenStateRunner``), logits are
computed only at the positions that predict response tokens, in chunks, and per-token log-probs
are summed in float32 whatever the model's dtype.

The prompt's form decides its context (``hfpref.steps.chat_prompts``): chat messages go through this model's
chat template, text is tokenized as it is. A sampler that formatted a string prompt with its chat
template wrote it back as messages, so the responses are scored in the conversation they were sampled
in; a model without a chat template refuses message prompts (before a recipe runs, through
``prompt_form_after``, and on any such row). ``describe()`` records the template's sha256.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from hfpref.core import columns
from hfpref.core.step import Batch, RowError, runtime_field
from hfpref.models.loading import load_tokenizer, max_length_of
from hfpref.models.packing import SequenceQuery
from hfpref.models.runner import HiddenStateRunner
from hfpref.models.step import ModelStep, ModelStepConfig
from hfpref.steps.candidates import Prompt, candidates_rows
from hfpref.steps.chat_prompts import MESSAGES, PromptFormError, chat_template_sha256, is_messages


def tokenize_responses(
    tokenizer: Any, prompt: Prompt, responses: Sequence[str]
) -> list[tuple[list[int], int]]:
    """Token ids of prompt + response and the index of the first response token, for each response.

    As TRL 1.16's ``DPOTrainer`` tokenizes a pair: a conversational prompt (a list of messages) goes
    through the chat template with ``add_generation_prompt=True`` alone and with the response appended
    as an assistant message, so the response tokens include the end-of-turn tokens the template adds;
    a standard prompt (a string) is tokenized alone and concatenated with the response plus the EOS
    token (unless the response already ends with it). The response starts where the tokenized prompt
    and the tokenized prompt + response first differ. TRL takes the smaller of that point over chosen
    and rejected; here each response keeps its own, which is the same whenever the prompt's tokens are
    a prefix of prompt + response (TRL warns otherwise).
    """
    # imported here: trl pulls in datasets, which a GPU worker scoring pre-tokenized ids does not need
    from trl.data_utils import common_prefix_length

    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        if eos is None:
            raise ValueError(
                "the tokenizer has no eos_token, which standard (string) prompts need (TRL appends it)"
            )
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        full = [
            list(tokenizer(text=prompt + (r if r.endswith(eos) else r + eos))["input_ids"]) for r in responses
        ]
    else:
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        full = [_chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": r}]) for r in responses]
    return [(ids, common_prefix_length(prompt_ids, ids)) for ids in full]


def _chat_ids(tokenizer: Any, messages: list[dict], **kwargs: Any) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(encoded["input_ids"])


# config attributes by which some architectures transform logits after the LM head
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


class ResponseLogProbs:
    """Summed response log-probs of token sequences under a loaded causal LM (no tokenizer involved).

    ``scorer(groups)`` takes ``groups[g][k] = (token ids of prompt + response k, index of its first
    response token)`` and returns ``sums[g][k]``: the float32 sum of log π(token | preceding tokens)
    over the response tokens. Sequences of a group share their prompt in the forward pass.
    ``logit_chunk_mb`` bounds the float32 logits block computed at a time.
    """

    def __init__(
        self,
        model: Any,
        *,
        token_budget: int = 16384,
        packing: str = "auto",
        logit_chunk_mb: int = 256,
        compile: bool = False,
    ) -> None:
        self.lm_head = model.get_output_embeddings()
        self._check_head(model)
        self.runner = HiddenStateRunner(model, token_budget=token_budget, packing=packing, compile=compile)
        vocab = self.lm_head.weight.shape[0]
        self.chunk_rows = max(1, (logit_chunk_mb << 20) // (vocab * 4))

    def _check_head(self, model: Any) -> None:
        """Fail unless LM head(final hidden states) is exactly what the model returns as logits."""
        config = model.config.get_text_config()
        for name in _LOGIT_TRANSFORMS:
            if getattr(config, name, None) not in (None, 1, 1.0):
                raise NotImplementedError(
                    f"{type(model).__name__} transforms its logits ({name}={getattr(config, name)!r}); "
                    "response log-probs computed from the LM head alone would be wrong"
                )
        device = next(model.parameters()).device
        probe = torch.arange(1, 9, device=device)[None] % model.get_input_embeddings().num_embeddings
        with torch.inference_mode():
            logits = model(input_ids=probe, use_cache=False).logits[0].float()
            ours = self.lm_head(
                model.base_model(input_ids=probe, use_cache=False).last_hidden_state[0]
            ).float()
        if not torch.allclose(ours, logits, rtol=1e-3, atol=1e-3):
            raise NotImplementedError(
                f"{type(model).__name__}'s logits are not its LM head applied to its final hidden states"
            )

    def __call__(self, groups: Sequence[Sequence[tuple[Sequence[int], int]]]) -> list[list[float]]:
        queries, targets = [], {}
        for g, group in enumerate(groups):
            group_queries = []
            for k, (tokens, start) in enumerate(group):
                if not 1 <= start <= len(tokens):
                    raise ValueError(
                        f"response start {start} must lie in 1..{len(tokens)} (group {g}, sequence {k})"
                    )
                group_queries.append(SequenceQuery(tokens, range(start - 1, len(tokens) - 1)))
                targets[(g, k)] = tokens[start:]
            queries.append(group_queries)
        device = self.runner.device
        sums = {}
        for rows in self.runner.run(queries):
            wanted = torch.tensor(
                [t for key in rows.keys for t in targets[key]], dtype=torch.long, device=device
            )
            totals = torch.zeros(len(rows.keys), dtype=torch.float32, device=device)
            with torch.inference_mode():
                for start in range(0, len(wanted), self.chunk_rows):
                    stop = start + self.chunk_rows
                    logits = self.lm_head(rows.hidden[start:stop])  # in the model's dtype, as its own forward
                    # upcast inside the softmax kernel: no separate float32 copy of the logits
                    logps = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                    token_logps = logps.gather(1, wanted[start:stop, None])[:, 0]
                    del logits, logps
                    totals.index_add_(0, rows.owner[start:stop], token_logps)
            sums.update(zip(rows.keys, totals.tolist(), strict=True))
        return [[sums[(g, k)] for k in range(len(group))] for g, group in enumerate(groups)]


@dataclasses.dataclass
class LogProbConfig(ModelStepConfig):
    """Which model scores the responses, and how (shared fields: see ``ModelStepConfig``).

    ``output_prefix``: "ref" writes ``ref_logps``/``ref_token_counts``, "policy" writes
    ``policy_logps``/``policy_token_counts`` (and ``<prefix>_truncated_tokens`` when truncating);
    ``logit_chunk_mb``: the largest float32 [positions, vocab] block the log-softmax works on at once.
    """

    output_prefix: str = "ref"
    logit_chunk_mb: int = runtime_field(256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.output_prefix.isidentifier():
            raise ValueError(
                f"output_prefix {self.output_prefix!r} must be an identifier such as 'ref' or 'policy'"
            )


@dataclasses.dataclass
class _LoadedLM:
    tokenizer: Any
    scorer: ResponseLogProbs
    max_length: int | None


class LogProbAnnotator(ModelStep):
    """Adds each response's summed log-probability under a causal LM.

    Input columns: ``prompt`` (str or list of chat messages), ``responses`` (list[str]; a None response is
    missing: not scored, None in every output list).
    Output columns (prefix from ``output_prefix``, e.g. "ref"): ``ref_logps`` (list[float], summed
    log π(y|x) over the response tokens, EOS or end-of-turn tokens included), ``ref_token_counts``
    (list[int], tokens summed over) and, with ``overflow="truncate"``, ``ref_truncated_tokens``
    (list[int], response tokens dropped to fit ``max_length``; 0 for most).
    """

    config_class = LogProbConfig
    version = "1"
    config: LogProbConfig

    def input_columns(self) -> list[str]:
        return [columns.PROMPT, columns.RESPONSES]

    def output_columns(self) -> list[str]:
        prefix = self.config.output_prefix
        names = [f"{prefix}_logps", f"{prefix}_token_counts"]
        if self.config.overflow == "truncate":
            names.append(f"{prefix}_truncated_tokens")
        return names

    def chat_template_sha256(self) -> str | None:
        """sha256 of the chat template message prompts are scored through (None: the model has none)."""
        if not hasattr(self, "_chat_template_sha256"):
            tokenizer = load_tokenizer(
                self.config.model, self.resolved_revision(), self.config.trust_remote_code
            )
            self._chat_template_sha256 = chat_template_sha256(tokenizer)
        return self._chat_template_sha256

    def prompt_form_after(self, form: str | None) -> str | None:
        """Fails on chat-message prompts when the model has no chat template; the form passes unchanged."""
        if form == MESSAGES and self.chat_template_sha256() is None:
            raise PromptFormError(self._no_template_message())
        return form

    def _no_template_message(self) -> str:
        return (
            f"the prompts are chat messages (an earlier step, e.g. a sampler with a chat template, formatted "
            f"them as a conversation) but the tokenizer of {self.config.model!r} has no chat template, so "
            "the responses cannot be scored in the context they were sampled in; score with a model whose "
            "tokenizer has a chat template, or sample and score plain-text prompts with models without one"
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "chat_template_sha256": self.chat_template_sha256()}

    def load(self, rank: int | None) -> _LoadedLM:
        config = self.config
        model, tokenizer = self.load_model_and_tokenizer(AutoModelForCausalLM, rank)
        scorer = ResponseLogProbs(
            model,
            token_budget=config.token_budget,
            packing=config.packing,
            logit_chunk_mb=config.logit_chunk_mb,
            compile=config.compile,
        )
        return _LoadedLM(tokenizer, scorer, config.max_length or max_length_of(model))

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        loaded = self.resources(rank)
        rows, groups, truncated = [], [], []
        for row in candidates_rows(batch, indices):  # missing (None) responses are not scored
            if is_messages(row.prompt) and not getattr(loaded.tokenizer, "chat_template", None):
                raise PromptFormError(f"{self.name}: {row.label}: {self._no_template_message()}")
            try:
                encoded = tokenize_responses(loaded.tokenizer, row.prompt, row.responses)
            except Exception as error:
                raise RowError(
                    f"{row.label}: cannot tokenize prompt {row.prompt!r} with its responses: {error}"
                ) from error
            sequences, cuts = [], []
            for k, response, (ids, start) in zip(row.present, row.responses, encoded, strict=True):
                ids, cut = self._fit(
                    ids, start, loaded.max_length, f"{row.label} response {k} ({response[:80]!r})"
                )
                sequences.append((ids, start))
                cuts.append(cut)
            rows.append(row)
            groups.append(sequences)
            truncated.append(cuts)
        sums = loaded.scorer(groups)
        counts = [[len(ids) - start for ids, start in group] for group in groups]
        prefix = self.config.output_prefix
        columns_out = {f"{prefix}_logps": sums, f"{prefix}_token_counts": counts}
        if self.config.overflow == "truncate":
            columns_out[f"{prefix}_truncated_tokens"] = truncated
        return {
            name: [row.realign(values) for row, values in zip(rows, per_row, strict=True)]
            for name, per_row in columns_out.items()
        }

    def output_features(self, input_features: Any) -> Any:
        """The output columns' types, fixed up front: a batch whose responses are all missing holds only None."""
        import datasets

        prefix, integers = self.config.output_prefix, datasets.List(datasets.Value("int64"))
        features = {
            **input_features,
            f"{prefix}_logps": datasets.List(datasets.Value("float64")),
            f"{prefix}_token_counts": integers,
        }
        if self.config.overflow == "truncate":
            features[f"{prefix}_truncated_tokens"] = integers
        return datasets.Features(features)

    def _fit(self, ids: list[int], start: int, max_length: int | None, where: str) -> tuple[list[int], int]:
        """The sequence within ``max_length`` (or an error) and how many response tokens were dropped."""
        if start < 1:
            raise RowError(
                f"{where}: the prompt tokenizes to nothing, so the first response token has no context"
            )
        if max_length is None or len(ids) <= max_length:
            return ids, 0
        if self.config.overflow == "error" or start >= max_length:
            raise RowError(
                f"{where}: prompt ({start} tokens) + response ({len(ids) - start} tokens) exceed "
                f"max_length={max_length}"
                + (
                    "; the prompt alone fills it"
                    if start >= max_length
                    else "; set overflow='truncate' to score the response's first tokens"
                )
            )
        return ids[:max_length], len(ids) - max_length
