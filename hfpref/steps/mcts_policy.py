"""The policy side of the MCTS search (``hfpref.steps.mcts``): what it derives from the loaded policy,
chunk generation with per-row stops, and ``PolicySearch``, the ``mcts_tree.SearchModel`` over the step's
model calls.

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

Batching. The trees of a batch are searched in lockstep: each simulation samples the chunks of every
tree's selected node in one set of ``generate`` calls, rolls out all new nodes together, and scores priors
and self-evaluations in packed forward passes (prefixes shared), all within ``token_budget``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TemperatureLogitsWarper

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError
from hfpref.models.loading import max_length_of
from hfpref.steps.candidates import Prompt
from hfpref.steps.ifeval import IFEvalConfig, IFEvalVerifier
from hfpref.steps.logprobs import ResponseLogProbs
from hfpref.steps.mcts_tree import Chunk, Evaluation, Node, Tree
from hfpref.steps.sampling import gumbel_noise_processor, length_groups, plain_generation_config

if TYPE_CHECKING:  # the step imports this module; the search only calls back into it
    from hfpref.steps.mcts import MCTSConfig, MCTSPairGenerator

YES, NO = "Yes", "No"

# a token ends a sentence when its text ends with . ! or ? (closing quotes/brackets allowed) or a newline
_SENTENCE_END = re.compile(r"(?:[.!?][\"'\u201d\u2019)\]]*|\n)\s*$")


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


class PolicySearch:
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


def prepare_policy(model: Any, tokenizer: Any, config: MCTSConfig) -> LoadedPolicy:
    """The loaded policy with what the search derives from it once: left padding for generation, its EOS
    ids, the sentence-end and blank token tables, the Yes/No ids of self-evaluation, its log-prob scorer."""
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
        raise ValueError(f"the tokenizer of {config.model!r} starts {YES!r} and {NO!r} with the same token")
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


def generate_chunks(
    loaded: LoadedPolicy,
    contexts: Sequence[Sequence[int]],
    limits: Sequence[int],
    seeds: Sequence[int] | None,
    *,
    stop_at_sentence_end: bool,
    temperature: float,
    token_budget: int,
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
    for group in length_groups(contexts, 1, max(limits), token_budget):
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
            if temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
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


def _positions_by_prompt(items: Sequence[tuple[PromptContext, Any]]) -> dict[int, list[int]]:
    """Positions of ``items`` grouped by their prompt's batch row, prompts in first-seen order."""
    by_row: dict[int, list[int]] = {}
    for position, (ctx, _) in enumerate(items):
        by_row.setdefault(ctx.row, []).append(position)
    return by_row


def self_eval_probabilities(
    loaded: LoadedPolicy, questions: Sequence[tuple[PromptContext, list[int]]]
) -> list[float]:
    """P(Yes) over {Yes, No} as the next token after each self-evaluation question's token ids."""
    groups, order = [], []
    for positions in _positions_by_prompt(questions).values():  # a prompt's questions share a long prefix
        group = []
        for position in positions:
            ctx, ids = questions[position]
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
    probabilities = [0.0] * len(questions)
    for position, (yes, no) in zip(order, flat, strict=True):
        probabilities[position] = yes_probability(yes, no)
    return probabilities


def verify_completions(
    loaded: LoadedPolicy,
    items: Sequence[tuple[PromptContext, str]],
    batch: Batch,
    indices: list[int] | None,
) -> list[float]:
    """IFEval strict fraction of constraints met by each (prompt, completed response)."""
    by_row = _positions_by_prompt(items)
    graded = grade_rows(
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


def grade_rows(
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
