"""MCTS preference pairs whose chosen and rejected responses share a prefix (arXiv 2412.15282).

``MCTSPairGenerator`` is a :class:`hfpref.core.step.Step` that turns prompts with IFEval constraints into
pairs rows. For each prompt it grows a search tree over chunks of the policy's response
(``hfpref.steps.mcts_tree``: PUCT selection, expansion, evaluation, mean backup, sibling pairs; the policy's
side of it in ``hfpref.steps.mcts_policy``) and reads pairs off sibling nodes, so chosen and rejected
continue the same parent prefix and differ only after it.

* input columns: ``prompt`` (str or chat messages), ``instruction_id_list``, ``kwargs`` (IFEval's)
* output columns, one row per kept pair (at most ``max_pairs_per_prompt`` per prompt) or one row with a
  ``drop_reason`` for a prompt without a pair: ``prompt`` (as it was sampled in, like ``ResponseSampler``:
  a string prompt searched through the policy's chat template is written back as that one user message, so
  TRL trains on the conversation the responses continue); ``chosen``, ``rejected`` (the whole responses,
  shared prefix included: strings for a standard prompt, ``[{"role": "assistant", "content": text}]`` for
  a conversational one, TRL's conversational format); ``chosen_index``, ``rejected_index`` (None: there is no ``responses`` list);
  ``chosen_generator``, ``rejected_generator`` (the policy, ``generator_name`` or ``model``);
  ``reward_chosen``, ``reward_rejected``, ``reward_margin`` (the IFEval strict fraction of constraints met
  by each completed response, the correctness RS pairs carry, so contrast filters read both alike; it
  need not be ordered like the values); ``edit_distance``, ``logp_diff``, ``dcrm`` (None);
  ``chosen_value``, ``rejected_value`` (the siblings' backed-up MCTS values, chosen > rejected);
  ``shared_prefix_tokens`` (int: leading response tokens chosen and rejected have in common, as the
  policy generated them: the branching node's prefix, plus any first tokens the two sibling chunks
  happen to share); ``tree_depth`` (int: depth of the branching node, 0 = the root, i.e. no shared
  chunk); ``pair_strategy`` (``"mcts_shared_prefix"``); ``drop_reason`` (None, or ``no_sibling_pair`` /
  ``identical_responses`` / ``values_tied``); and every other input column except per-response lists.

Pairs: at every node with at least two children, chosen = the child with the highest backed-up value,
rejected = the lowest (``rejected="lowest"``), the second highest, or a seeded random other child; pairs
whose completed texts are equal or whose values tie are not eligible; the eligible pairs with the largest
value gaps are kept (``max_pairs_per_prompt``, ties: shallower branching node first).

Determinism. A prompt's tree is seeded by ``seed`` and a stable hash of the model's resolved revision and
the prompt (``hfpref.steps.sampling.prompt_seed``); each sampled chunk draws Gumbel noise from its own generator,
seeded from the tree seed, the node's id and the sample's index, so a prompt's tree does not depend on
the other prompts of its batch (up to the float rounding of padded batches, as ``ResponseSampler``).

How chunks are sampled, scored, self-evaluated and verified, and how the trees of a batch are searched
in lockstep: ``hfpref.steps.mcts_policy``.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from typing import Any, ClassVar

import datasets
import numpy as np
from transformers import AutoModelForCausalLM

from hfpref.core import columns as C
from hfpref.core.columns import PAIR_COLUMNS
from hfpref.core.step import Batch, RowError, StepConfig, row_label
from hfpref.models.packing import common_prefix
from hfpref.models.step import ModelStep, ModelStepConfig
from hfpref.steps.chat_prompts import MESSAGES
from hfpref.steps.ifeval import checker_versions, prompt_text
from hfpref.steps.mcts_policy import (
    LoadedPolicy,
    PolicySearch,
    PromptContext,
    generate_chunks,
    grade_rows,
    prepare_policy,
    self_eval_probabilities,
    verify_completions,
)
from hfpref.steps.mcts_tree import (
    REJECTED_RULES,
    SearchSettings,
    Tree,
    best_pairs,
    response_ids,
    response_text,
    run_search,
    same_text,
    sibling_pairs,
)
from hfpref.steps.pair_rows import NOT_PASSED_THROUGH, pairs_features
from hfpref.steps.sampling import ResponseSampler, prompt_seed, sampled_prompt

PAIR_STRATEGY = "mcts_shared_prefix"
CHOSEN_VALUE = "chosen_value"
REJECTED_VALUE = "rejected_value"
SHARED_PREFIX_TOKENS = "shared_prefix_tokens"
TREE_DEPTH = "tree_depth"
VALUE_COLUMNS = (CHOSEN_VALUE, REJECTED_VALUE)
INT_COLUMNS = (SHARED_PREFIX_TOKENS, TREE_DEPTH)

DEFAULT_SELF_EVAL_TEMPLATE = (
    "Below is an instruction and the beginning of a response to it.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Response so far:\n{response}\n\n"
    "Is this response on track to satisfy every requirement of the instruction? Answer Yes or No."
)


@dataclasses.dataclass
class MCTSConfig(ModelStepConfig):
    """Settings of ``MCTSPairGenerator`` (model fields: ``ModelStepConfig``; ``overflow`` must be "error").

    ``n_simulations``: select/expand/evaluate/backup rounds per prompt; ``n_children``: chunks sampled per
    expansion (duplicates merged); ``chunk_max_tokens``: longest chunk; ``max_depth``: deepest node expanded
    (the root is depth 0, so at most ``max_depth`` chunks per path; rollouts finish the response);
    ``c_puct``: exploration weight; ``lambda_self_eval``: λ in value = λ·self_eval + (1 − λ)·verifier;
    ``rejected``: "lowest", "second_highest" or "random"; ``max_pairs_per_prompt``: pairs kept per prompt,
    largest value gap first; ``max_new_tokens``: longest response; ``temperature``: chunk sampling
    temperature (> 0; rollouts are greedy); ``seed``: mixed with each prompt's hash;
    ``self_eval_template``: the self-evaluation question, with ``{instruction}`` and ``{response}``;
    ``generator_name``: written to ``chosen_generator``/``rejected_generator`` (default: ``model``).
    """

    n_simulations: int = 16
    n_children: int = 4
    chunk_max_tokens: int = 64
    max_depth: int = 4
    c_puct: float = 1.0
    lambda_self_eval: float = 0.2
    rejected: str = "lowest"
    max_pairs_per_prompt: int = 1
    max_new_tokens: int = 512
    temperature: float = 1.0
    seed: int = 0
    self_eval_template: str = DEFAULT_SELF_EVAL_TEMPLATE
    generator_name: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.search_settings()  # validates the search numbers
        if self.compile:  # the same model also generates, with a KV cache a compiled layer would retrace
            raise ValueError("MCTSConfig.compile is not supported: the policy both scores and generates")
        if self.rejected not in REJECTED_RULES:
            raise ValueError(f"MCTSConfig.rejected must be one of {REJECTED_RULES}, got {self.rejected!r}")
        for name in ("chunk_max_tokens", "max_new_tokens", "max_pairs_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"MCTSConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"MCTSConfig.temperature must be positive, got {self.temperature}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"MCTSConfig.seed must be a non-negative int, got {self.seed!r}")
        if self.overflow != "error":
            raise ValueError(
                "MCTSConfig.overflow must be 'error': a search cannot truncate what it generates"
            )
        fields = {name for _, name, _, _ in string.Formatter().parse(self.self_eval_template) if name}
        if fields != {"instruction", "response"}:
            raise ValueError(
                "MCTSConfig.self_eval_template must use exactly the fields {instruction} and {response}, "
                f"found {sorted(fields)}"
            )

    def search_settings(self) -> SearchSettings:
        return SearchSettings(
            n_simulations=self.n_simulations,
            n_children=self.n_children,
            max_depth=self.max_depth,
            c_puct=self.c_puct,
            lambda_self_eval=self.lambda_self_eval,
        )


class MCTSPairGenerator(ModelStep):
    """Preference pairs from sibling nodes of a per-prompt MCTS over response chunks (see the module notes).

    Input columns: ``prompt``, ``instruction_id_list``, ``kwargs``. Output columns: ``prompt``, TRL's
    ``chosen``/``rejected`` and the other pair columns of ``hfpref.steps.selection.PAIR_COLUMNS``,
    ``chosen_value``, ``rejected_value``, ``shared_prefix_tokens``, ``tree_depth``, ``pair_strategy``,
    ``drop_reason`` and the other input columns (per-response lists excepted).
    """

    config_class: ClassVar[type[StepConfig]] = MCTSConfig
    version: ClassVar[str] = (
        "2"  # 2: the prompt is written back as it was sampled in (messages under a template)
    )
    changes_row_count: ClassVar[bool] = True
    config: MCTSConfig

    def input_columns(self) -> list[str]:
        return [C.PROMPT, C.INSTRUCTION_ID_LIST, C.KWARGS]

    def output_columns(self) -> list[str]:
        return [C.PROMPT, *PAIR_COLUMNS, *VALUE_COLUMNS, *INT_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON]

    def passthrough_columns(self, column_names: Sequence[str]) -> list[str]:
        """The input columns copied unchanged to every pairs row of their prompt."""
        excluded = NOT_PASSED_THROUGH | set(self.output_columns())
        return [name for name in column_names if name not in excluded]

    @property
    def generator_label(self) -> str:
        return self.config.generator_name or self.config.model

    def describe(self) -> dict[str, Any]:
        # the verifier's code decides values too; the template, the conversation the responses continue
        return {
            **super().describe(),
            "verifier": checker_versions(),
            "chat_template_sha256": self.chat_template_sha256(),
        }

    def chat_template_sha256(self) -> str | None:
        """sha256 of the chat template prompts are searched through (None: prompts are raw text)."""
        return ResponseSampler.chat_template_sha256(self)  # type: ignore[arg-type]  # reads config.model only

    def prompt_form_after(self, form: str | None) -> str | None:
        """Messages after a search through a chat template (as ``ResponseSampler``); without a template,
        messages are refused (``PromptFormError``) and text stays text."""
        return ResponseSampler.prompt_form_after(self, form)  # type: ignore[arg-type]

    # ---- loading ---------------------------------------------------------------------------
    def load(self, rank: int | None) -> LoadedPolicy:
        model, tokenizer = self.load_model_and_tokenizer(AutoModelForCausalLM, rank)
        return prepare_policy(model, tokenizer, self.config)

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        trees = self.search(batch, rank, indices)
        return self.pair_rows(batch, trees)

    def search(self, batch: Batch, rank: int | None = None, indices: list[int] | None = None) -> list[Tree]:
        """The searched tree of every row (nodes carry evaluations; ``context`` is a ``PromptContext``)."""
        loaded = self.resources(rank)
        contexts = [self._context(loaded, batch, i, indices) for i in range(len(batch[C.PROMPT]))]
        # build every row's checks before any generation, so a bad constraint fails fast, naming its row
        grade_rows(loaded, [(ctx, []) for ctx in contexts], batch, indices)
        revision = self.resolved_revision()
        trees = [
            Tree(seed=prompt_seed(self.config.seed, revision, ctx.prompt), context=ctx) for ctx in contexts
        ]
        run_search(trees, PolicySearch(self, loaded, batch, indices), self.config.search_settings())
        return trees

    def pair_rows(self, batch: Batch, trees: Sequence[Tree]) -> Batch:
        """Pairs rows (or drop rows) read off searched trees, one tree per batch row."""
        passthrough = self.passthrough_columns(list(batch))
        out: Batch = {name: [] for name in [*self.output_columns(), *passthrough]}

        def emit(i: int, values: dict[str, Any], reason: str | None) -> None:
            out[C.PROMPT].append(trees[i].context.prompt)  # the prompt as sampled in
            for name in [*PAIR_COLUMNS, *VALUE_COLUMNS, *INT_COLUMNS]:
                out[name].append(values.get(name))
            out[C.PAIR_STRATEGY].append(PAIR_STRATEGY)
            out[C.DROP_REASON].append(reason)
            for name in passthrough:
                out[name].append(batch[name][i])

        for i, tree in enumerate(trees):
            rng = np.random.default_rng([tree.seed, 1])  # the "random" rule's draws, per prompt
            pairs, reason = sibling_pairs(tree, self.config.rejected, rng, same_text)
            kept = best_pairs(pairs, self.config.max_pairs_per_prompt)
            if not kept:
                emit(i, {}, reason)
                continue
            conversational = isinstance(tree.context.prompt, list)
            for pair in kept:
                chosen, rejected = response_text(pair.chosen), response_text(pair.rejected)
                verdicts = [pair.chosen.evaluation.verifier, pair.rejected.evaluation.verifier]
                emit(
                    i,
                    {
                        C.CHOSEN: _completion(chosen, conversational),
                        C.REJECTED: _completion(rejected, conversational),
                        C.CHOSEN_GENERATOR: self.generator_label,
                        C.REJECTED_GENERATOR: self.generator_label,
                        C.REWARD_CHOSEN: float(verdicts[0]),
                        C.REWARD_REJECTED: float(verdicts[1]),
                        C.REWARD_MARGIN: float(verdicts[0] - verdicts[1]),
                        CHOSEN_VALUE: pair.chosen.q,
                        REJECTED_VALUE: pair.rejected.q,
                        SHARED_PREFIX_TOKENS: common_prefix(
                            response_ids(pair.chosen), response_ids(pair.rejected)
                        ),
                        TREE_DEPTH: pair.parent.depth,
                    },
                    None,
                )
        return out

    # ---- model calls (overridable, e.g. by tests with fakes) ---------------------------------
    def generate(
        self,
        loaded: LoadedPolicy,
        contexts: Sequence[Sequence[int]],
        limits: Sequence[int],
        seeds: Sequence[int] | None,
        stop_at_sentence_end: bool,
    ) -> list[list[int]]:
        """New tokens after each context: sampled with per-row seeded noise (``seeds``) or greedy (None).

        Each row stops at EOS (kept), after ``limits[row]`` tokens or, with ``stop_at_sentence_end``, after
        a sentence-ending token (see ``ChunkEnd``).
        """
        return generate_chunks(
            loaded,
            contexts,
            limits,
            seeds,
            stop_at_sentence_end=stop_at_sentence_end,
            temperature=self.config.temperature,
            token_budget=self.config.token_budget,
        )

    def chunk_logprob_means(
        self, loaded: LoadedPolicy, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
    ) -> list[list[float]]:
        """Mean token log-prob of each chunk after its context: ``groups[g] = (context, chunks)``."""
        sums = loaded.scorer([[(list(ctx) + list(c), len(ctx)) for c in chunks] for ctx, chunks in groups])
        return [
            [total / len(chunk) for total, chunk in zip(row, chunks, strict=True)]
            for row, (_, chunks) in zip(sums, groups, strict=True)
        ]

    def self_evaluate(self, loaded: LoadedPolicy, items: Sequence[tuple[PromptContext, str]]) -> list[float]:
        """P(Yes) over {Yes, No} for each (prompt, partial response) under ``self_eval_template``."""
        questions = []
        for ctx, partial in items:
            question = self.config.self_eval_template.format(instruction=ctx.instruction, response=partial)
            ids = self._prompt_ids(loaded.tokenizer, question, {C.PROMPT: [question]}, 0, None)
            questions.append((ctx, ids))
        return self_eval_probabilities(loaded, questions)

    def verify(
        self,
        loaded: LoadedPolicy,
        items: Sequence[tuple[PromptContext, str]],
        batch: Batch,
        indices: list[int] | None,
    ) -> list[float]:
        """IFEval strict fraction of constraints met by each (prompt, completed response)."""
        return verify_completions(loaded, items, batch, indices)

    # ---- helpers -----------------------------------------------------------------------------
    def _context(
        self, loaded: LoadedPolicy, batch: Batch, i: int, indices: list[int] | None
    ) -> PromptContext:
        label = row_label(batch, i, indices)
        prompt = batch[C.PROMPT][i]
        prompt_ids = self._prompt_ids(loaded.tokenizer, prompt, batch, i, indices)
        # the prompt as the search sees it: a string under a chat template is one user message (the tree seed
        # hashes this form, so a string and its one-message form search alike, as ResponseSampler samples)
        prompt = sampled_prompt(loaded.tokenizer, prompt)
        needed = len(prompt_ids) + self.config.max_new_tokens
        if loaded.max_length is not None and needed > loaded.max_length:
            raise RowError(
                f"{label}: column {C.PROMPT!r} ({len(prompt_ids)} tokens) + max_new_tokens="
                f"{self.config.max_new_tokens} exceed the model's max_length={loaded.max_length}"
            )
        return PromptContext(
            row=i,
            label=label,
            prompt=prompt,
            prompt_ids=prompt_ids,
            instruction=prompt_text(prompt, label),
            instruction_id_list=batch[C.INSTRUCTION_ID_LIST][i],
            kwargs=batch[C.KWARGS][i],
        )

    def _prompt_ids(
        self, tokenizer: Any, prompt: Any, batch: Batch, i: int, indices: list[int] | None
    ) -> list[int]:
        # the prompt as ResponseSampler feeds it to the model (chat template when there is one); its
        # method only reads ``config.model``, which this config has too
        sampler_method = ResponseSampler.prompt_token_ids
        return sampler_method(self, tokenizer, prompt, batch, i, indices)  # type: ignore[arg-type]

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The pairs rows' features, fixed so a batch of dropped prompts keeps the same types."""
        passthrough = self.passthrough_columns(list(input_features))
        if self.prompt_form_after(None) == MESSAGES and input_features.get(C.PROMPT) == datasets.Value(
            "string"
        ):
            # string prompts come back as the one user message they were searched in
            message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
            input_features = datasets.Features({**input_features, C.PROMPT: datasets.List(message)})
        base = pairs_features(input_features, passthrough, VALUE_COLUMNS, step=self.name)
        integer = datasets.Value("int64")
        ordered = {name: (integer if name in INT_COLUMNS else base[name]) for name in self.output_columns()}
        return datasets.Features({**ordered, **{name: base[name] for name in passthrough}})


def _completion(text: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": text}] if conversational else text


__all__ = [
    "CHOSEN_VALUE",
    "DEFAULT_SELF_EVAL_TEMPLATE",
    "PAIR_STRATEGY",
    "REJECTED_VALUE",
    "SHARED_PREFIX_TOKENS",
    "TREE_DEPTH",
    "MCTSConfig",
    "MCTSPairGenerator",
]
