"""MCTS preference pairs whose chosen and rejected responses share a prefix (arXiv 2412.15282).

``MCTSPairGenerator`` is a :class:`hfpref.core.step.Step` that turns prompts with IFEval constraints into
pairs rows. For each prompt it grows a search tree over chunks of the policy's response
(``hfpref.steps.mcts_tree``: PUCT selection, expansion, evaluation, mean backup, sibling pairs) and reads pairs
off sibling nodes, so chosen and rejected continue the same parent prefix and differ only after it.

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

The models behind the search:

* **Chunks.** A node's children are ``n_children`` continuations sampled from the policy at
  ``temperature``. A chunk ends after the first token that ends a sentence (decodes to text ending in
  ``.``, ``!`` or ``?``, optionally followed by closing quotes or brackets, or ending in a newline once the
  chunk holds some text: a simple rule checked per token, written here because a sentence splitter such
  as Punkt needs the text after the boundary), at EOS, after ``chunk_max_tokens`` tokens, or when the
  response reaches ``max_new_tokens``. Chunk tokens are the generated ids themselves, never re-tokenized,
  so a child's context is exactly its parent's plus its chunk.
* **Prior.** exp(mean token log-prob of the chunk) under the policy (temperature 1, computed in a separate
  teacher-forced pass by ``hfpref.steps.logprobs.ResponseLogProbs``), normalised over the siblings.
* **Self-evaluation.** The policy's probability of answering "Yes" rather than "No" (the first token of
  each) to ``self_eval_template``, which quotes the instruction (the last user message) and the partial
  response, the node's own text (``p = σ(log p(Yes) − log p(No))``).
* **Verifier.** Each new node is completed by a greedy rollout to EOS or ``max_new_tokens``, and IFEval's
  strict fraction of constraints met is computed on that completed response (``hfpref.steps.ifeval``). The
  paper's correctness is defined on complete responses; grading a partial one would fail constraints
  such as minimum lengths or end phrases that the rest of the response may still meet. The same
  completed response is what the node contributes to a pair, so the verifier score belongs to the text
  that is written out.
* **Value** = λ · self-evaluation + (1 − λ) · verifier, λ = ``lambda_self_eval`` (0.2 in the paper; the
  other defaults of ``MCTSConfig`` are ours, sized for 7-8B policies on one GPU).

Pairs: at every node with at least two children, chosen = the child with the highest backed-up value,
rejected = the lowest (``rejected="lowest"``), the second highest, or a seeded random other child; pairs
whose completed texts are equal or whose values tie are not eligible; the eligible pairs with the largest
value gaps are kept (``max_pairs_per_prompt``, ties: shallower branching node first).

Determinism. A prompt's tree is seeded by ``seed`` and a stable hash of the model's resolved revision and
the prompt (``hfpref.steps.sampling.prompt_seed``); each sampled chunk draws Gumbel noise from its own generator,
seeded from the tree seed, the node's id and the sample's index, so a prompt's tree does not depend on
the other prompts of its batch (up to the float rounding of padded batches, as ``ResponseSampler``).

Batching. The trees of a batch are searched in lockstep: each simulation samples the chunks of every
tree's selected node in one set of ``generate`` calls, rolls out all new nodes together, and scores priors
and self-evaluations in packed forward passes (prefixes shared), all within ``token_budget``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import string
from collections.abc import Sequence
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
)

from hfpref.core import columns as C
from hfpref.core.columns import PAIR_COLUMNS
from hfpref.core.step import Batch, RowError, StepConfig, row_label
from hfpref.models.utils import ModelStep, ModelStepConfig, Prompt, common_prefix, max_length_of
from hfpref.steps.chat_prompts import MESSAGES
from hfpref.steps.ifeval import IFEvalConfig, IFEvalVerifier, checker_versions, prompt_text
from hfpref.steps.logprobs import ResponseLogProbs
from hfpref.steps.mcts_tree import (
    REJECTED_RULES,
    Chunk,
    Evaluation,
    Node,
    SearchSettings,
    Tree,
    best_pairs,
    run_search,
    sibling_pairs,
)
from hfpref.steps.pair_rows import pairs_features
from hfpref.steps.sampling import (
    ResponseSampler,
    gumbel_noise_processor,
    length_groups,
    plain_generation_config,
    prompt_seed,
    sampled_prompt,
)

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
YES, NO = "Yes", "No"

# a token ends a sentence when its text ends with . ! or ? (closing quotes/brackets allowed) or a newline
_SENTENCE_END = re.compile(r"(?:[.!?][\"'\u201d\u2019)\]]*|\n)\s*$")


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


@dataclasses.dataclass
class LoadedPolicy:
    """The policy with what the search derives from it once."""

    model: Any
    tokenizer: Any
    scorer: ResponseLogProbs
    verifier: IFEvalVerifier
    eos_ids: list[int]
    sentence_end: torch.Tensor  # [vocab] bool: the token ends a sentence
    blank: torch.Tensor  # [vocab] bool: the token is special or whitespace only
    yes_id: int
    no_id: int
    max_length: int | None


@dataclasses.dataclass
class PromptContext:
    """The model side's view of one prompt's tree."""

    row: int
    label: str
    prompt: Prompt
    prompt_ids: list[int]
    instruction: str
    instruction_id_list: list[str]
    kwargs: list[Any]


def child_seed(tree_seed: int, node_id: int, sample: int) -> int:
    """The noise seed of the ``sample``-th chunk sampled below node ``node_id`` (stable, 63 bits)."""
    digest = hashlib.sha256(f"{tree_seed}\x00{node_id}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def yes_probability(logp_yes: float, logp_no: float) -> float:
    """P(Yes) renormalised over {Yes, No}: σ(log p(Yes) − log p(No)), as 0.5·(1 + tanh(d/2)) (no overflow)."""
    return 0.5 * (1.0 + math.tanh(0.5 * (logp_yes - logp_no)))


class ChunkEnd(StoppingCriteria):
    """Per-row stop rule of a ``generate`` call; records where each row stopped.

    A row stops at an EOS token, after ``limits[row]`` new tokens, or (when ``sentence_end`` is given) after
    a token that ends a sentence once the row holds non-blank text. ``lengths[row]`` is the number of new
    tokens the row kept (written the first time it stops; rows ``generate`` pads afterwards are ignored).
    """

    def __init__(
        self,
        width: int,
        limits: torch.Tensor,
        eos_ids: torch.Tensor,
        sentence_end: torch.Tensor | None = None,
        blank: torch.Tensor | None = None,
    ) -> None:
        self.width = width
        self.limits = limits
        self.eos_ids = eos_ids
        self.sentence_end = sentence_end
        self.blank = blank
        rows = limits.shape[0]
        self.done = torch.zeros(rows, dtype=torch.bool, device=limits.device)
        self.has_text = torch.zeros(rows, dtype=torch.bool, device=limits.device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=limits.device)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1]
        generated = input_ids.shape[1] - self.width
        stop = torch.isin(last, self.eos_ids) | (generated >= self.limits)
        if self.sentence_end is not None and self.blank is not None:
            self.has_text |= ~self.blank[last]
            stop |= self.sentence_end[last] & self.has_text
        first = stop & ~self.done
        self.lengths[first] = generated
        self.done |= stop
        return self.done.clone()


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
        excluded = {*self.output_columns(), *C.PER_RESPONSE_COLUMNS}
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
        config = self.config
        model, tokenizer = self.load_model_and_tokenizer(AutoModelForCausalLM, rank)
        tokenizer.padding_side = "left"  # generation continues from the right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not eos_ids and tokenizer.eos_token_id is not None:
            eos_ids = [tokenizer.eos_token_id]
        if not eos_ids:
            raise ValueError(f"{config.model!r} names no EOS token: responses would never end")
        vocab = max(len(tokenizer), model.get_input_embeddings().num_embeddings)
        sentence_end, blank = token_tables(tokenizer, vocab)
        yes_id, no_id = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (YES, NO))
        if yes_id == no_id:
            raise ValueError(
                f"the tokenizer of {config.model!r} starts {YES!r} and {NO!r} with the same token"
            )
        device = next(model.parameters()).device
        return LoadedPolicy(
            model=model,
            tokenizer=tokenizer,
            scorer=ResponseLogProbs(model, token_budget=config.token_budget, packing=config.packing),
            verifier=IFEvalVerifier(IFEvalConfig(reward=None)),
            eos_ids=eos_ids,
            sentence_end=sentence_end.to(device),
            blank=blank.to(device),
            yes_id=yes_id,
            no_id=no_id,
            max_length=config.max_length or max_length_of(model),
        )

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        trees = self.search(batch, rank, indices)
        return self.pair_rows(batch, trees)

    def search(self, batch: Batch, rank: int | None = None, indices: list[int] | None = None) -> list[Tree]:
        """The searched tree of every row (nodes carry evaluations; ``context`` is a ``PromptContext``)."""
        loaded = self.resources(rank)
        contexts = [self._context(loaded, batch, i, indices) for i in range(len(batch[C.PROMPT]))]
        # build every row's checks before any generation, so a bad constraint fails fast, naming its row
        self._grade(loaded, [(ctx, []) for ctx in contexts], batch, indices)
        revision = self.resolved_revision()
        trees = [
            Tree(seed=prompt_seed(self.config.seed, revision, ctx.prompt), context=ctx) for ctx in contexts
        ]
        run_search(trees, _PolicySearch(self, loaded, batch, indices), self.config.search_settings())
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
            pairs, reason = sibling_pairs(tree, self.config.rejected, rng, _same_text)
            kept = best_pairs(pairs, self.config.max_pairs_per_prompt)
            if not kept:
                emit(i, {}, reason)
                continue
            conversational = isinstance(tree.context.prompt, list)
            for pair in kept:
                chosen, rejected = _text(pair.chosen), _text(pair.rejected)
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
        if not contexts:
            return []
        model, tokenizer = loaded.model, loaded.tokenizer
        device = model.device
        eos = torch.tensor(loaded.eos_ids, device=device)
        results: list[list[int]] = [[] for _ in contexts]
        for group in length_groups(contexts, 1, max(limits), self.config.token_budget):
            padded = tokenizer.pad({"input_ids": [list(contexts[k]) for k in group]}, return_tensors="pt")
            padded = {name: tensor.to(device) for name, tensor in padded.items()}
            width = padded["input_ids"].shape[1]
            row_limits = torch.tensor([limits[k] for k in group], device=device)
            stop = ChunkEnd(
                width,
                row_limits,
                eos,
                loaded.sentence_end if stop_at_sentence_end else None,
                loaded.blank if stop_at_sentence_end else None,
            )
            processors = LogitsProcessorList()
            if seeds is not None:
                generators = [torch.Generator(device=device).manual_seed(seeds[k]) for k in group]
                if self.config.temperature != 1.0:
                    processors.append(TemperatureLogitsWarper(self.config.temperature))
                processors.append(gumbel_noise_processor(generators, 1))  # one generator per row
            with torch.inference_mode():
                output = model.generate(
                    **padded,
                    generation_config=plain_generation_config(
                        model, tokenizer, loaded.eos_ids, int(row_limits.max())
                    ),
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([stop]),
                )
            lengths = torch.where(stop.done, stop.lengths, output.shape[1] - width).tolist()
            for position, k in enumerate(group):
                results[k] = output[position, width : width + lengths[position]].tolist()
        return results

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
        by_row: dict[int, list[int]] = {}
        for position, (ctx, _) in enumerate(items):
            by_row.setdefault(ctx.row, []).append(position)
        groups, order = [], []
        for positions in by_row.values():  # one group per prompt: its questions share a long prefix
            group = []
            for position in positions:
                ctx, partial = items[position]
                question = self.config.self_eval_template.format(
                    instruction=ctx.instruction, response=partial
                )
                ids = self._prompt_ids(loaded.tokenizer, question, {C.PROMPT: [question]}, 0, None)
                if loaded.max_length is not None and len(ids) + 1 > loaded.max_length:
                    raise RowError(
                        f"{ctx.label}: the self-evaluation prompt ({len(ids)} tokens) exceeds the model's "
                        f"max_length={loaded.max_length}"
                    )
                group += [(ids + [loaded.yes_id], len(ids)), (ids + [loaded.no_id], len(ids))]
                order.append(position)
            groups.append(group)
        sums = loaded.scorer(groups)
        flat = [pair for row in sums for pair in zip(row[0::2], row[1::2], strict=True)]
        probabilities = [0.0] * len(items)
        for position, (yes, no) in zip(order, flat, strict=True):
            probabilities[position] = yes_probability(yes, no)
        return probabilities

    def verify(
        self,
        loaded: LoadedPolicy,
        items: Sequence[tuple[PromptContext, str]],
        batch: Batch,
        indices: list[int] | None,
    ) -> list[float]:
        """IFEval strict fraction of constraints met by each (prompt, completed response)."""
        by_row: dict[int, list[int]] = {}
        for position, (ctx, _) in enumerate(items):
            by_row.setdefault(ctx.row, []).append(position)
        graded = self._grade(
            loaded,
            [(items[ps[0]][0], [items[p][1] for p in ps]) for ps in by_row.values()],
            batch,
            indices,
        )
        scores = [0.0] * len(items)
        for positions, row in zip(by_row.values(), graded, strict=True):
            for position, score in zip(positions, row, strict=True):
                scores[position] = score
        return scores

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

    def _grade(
        self,
        loaded: LoadedPolicy,
        rows: Sequence[tuple[PromptContext, list[str]]],
        batch: Batch,
        indices: list[int] | None,
    ) -> list[list[float]]:
        """IFEval correctness of each row's texts, through ``IFEvalVerifier`` on the rows' own constraints."""
        keyed = [name for name in ("key", "id", "prompt_id") if name in batch][:1]  # row labels in errors
        graded = loaded.verifier.process(
            {
                C.PROMPT: [ctx.prompt for ctx, _ in rows],
                C.RESPONSES: [texts for _, texts in rows],
                C.INSTRUCTION_ID_LIST: [ctx.instruction_id_list for ctx, _ in rows],
                C.KWARGS: [ctx.kwargs for ctx, _ in rows],
                **{name: [batch[name][ctx.row] for ctx, _ in rows] for name in keyed},
            },
            None,
            [indices[ctx.row] for ctx, _ in rows] if indices is not None else None,
        )
        return graded[C.CORRECTNESS]

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


class _PolicySearch:
    """``mcts_tree.SearchModel`` over the step's model calls, for the trees of one batch."""

    def __init__(
        self, step: MCTSPairGenerator, loaded: LoadedPolicy, batch: Batch, indices: list[int] | None
    ) -> None:
        self.step, self.loaded, self.batch, self.indices = step, loaded, batch, indices
        self.config = step.config

    def propose(self, requests: Sequence[tuple[Tree, Node]], n: int) -> list[list[Chunk]]:
        config = self.config
        contexts, limits, seeds = [], [], []
        for tree, node in requests:
            for k in range(n):
                contexts.append(tree.context.prompt_ids + list(node.tokens))
                limits.append(min(config.chunk_max_tokens, config.max_new_tokens - len(node.tokens)))
                seeds.append(child_seed(tree.seed, node.id, k))
        sampled = self.step.generate(self.loaded, contexts, limits, seeds, stop_at_sentence_end=True)
        groups = []
        for r, (tree, node) in enumerate(requests):
            unique = list(dict.fromkeys(tuple(t) for t in sampled[r * n : (r + 1) * n]))  # score each once
            groups.append((tree.context.prompt_ids + list(node.tokens), unique))
        means = self.step.chunk_logprob_means(self.loaded, groups)
        eos = set(self.loaded.eos_ids)
        proposals = []
        for r, ((_, node), (_, unique), row) in enumerate(zip(requests, groups, means, strict=True)):
            mean_of = dict(zip(unique, row, strict=True))
            chunks = []
            for tokens in sampled[r * n : (r + 1) * n]:
                ended = tokens[-1] in eos or len(node.tokens) + len(tokens) >= config.max_new_tokens
                chunks.append(Chunk(tuple(tokens), mean_of[tuple(tokens)], ended))
            proposals.append(chunks)
        return proposals

    def evaluate(self, requests: Sequence[tuple[Tree, Node]]) -> list[Evaluation]:
        config, tokenizer = self.config, self.loaded.tokenizer
        open_rows = [r for r, (_, node) in enumerate(requests) if not node.terminal]
        rollouts = self.step.generate(
            self.loaded,
            [requests[r][0].context.prompt_ids + list(requests[r][1].tokens) for r in open_rows],
            [config.max_new_tokens - len(requests[r][1].tokens) for r in open_rows],
            None,
            stop_at_sentence_end=False,
        )
        completions: list[list[int]] = [[] for _ in requests]
        for r, tokens in zip(open_rows, rollouts, strict=True):
            completions[r] = tokens
        partial = [tokenizer.decode(list(node.tokens), skip_special_tokens=True) for _, node in requests]
        full = [
            tokenizer.decode(list(node.tokens) + completion, skip_special_tokens=True)
            for (_, node), completion in zip(requests, completions, strict=True)
        ]
        contexts = [tree.context for tree, _ in requests]
        self_evals = self.step.self_evaluate(self.loaded, list(zip(contexts, partial, strict=True)))
        verdicts = self.step.verify(
            self.loaded, list(zip(contexts, full, strict=True)), self.batch, self.indices
        )
        return [
            Evaluation(self_eval=s, verifier=v, completion=tuple(c), text=t)
            for s, v, c, t in zip(self_evals, verdicts, completions, full, strict=True)
        ]


def token_tables(tokenizer: Any, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token id: does its text end a sentence, and is it blank (special, or whitespace only)?"""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    sentence_end = torch.zeros(vocab, dtype=torch.bool)
    blank = torch.ones(vocab, dtype=torch.bool)  # ids the tokenizer cannot decode are never text
    for i, text in enumerate(texts):
        if i in special:
            continue
        sentence_end[i] = _SENTENCE_END.search(text) is not None
        blank[i] = not text.strip()
    return sentence_end, blank


def response_ids(node: Node) -> list[int]:
    """The token ids of a node's completed response, as the policy generated them (EOS kept if reached)."""
    if node.evaluation is None:
        raise ValueError(f"node {node.id} was never evaluated")
    return [*node.tokens, *node.evaluation.completion]


def _text(node: Node) -> str:
    if node.evaluation is None or node.evaluation.text is None:
        raise ValueError(f"node {node.id} was never evaluated")
    return node.evaluation.text


def _same_text(a: Node, b: Node) -> bool:
    return _text(a) == _text(b)


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
    "child_seed",
    "yes_probability",
]
