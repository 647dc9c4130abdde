"""The model-free half of MCTS preference pairs: the search tree, PUCT selection, backup and pair extraction.

A tree grows over chunks of one response (a node is the response so far; its children are chunk
continuations sampled from the policy). ``run_search`` drives the search for many prompts in lockstep, so a
caller can batch model calls across prompts; everything that needs a model goes through a ``SearchModel``
(``hfpref.steps.mcts`` implements it with a causal LM and IFEval; tests use a fake), so the logic here is plain
arithmetic that can be checked by hand.

The search (in the style of Xie et al. 2024, arXiv 2405.00451: PUCT with length-normalised priors,
values mixing a verifier with the policy's self-evaluation, pairs from siblings):

* **Selection.** From the root, repeatedly move to the child with the highest PUCT score
  ``Q(child) + c_puct · P(child) · sqrt(N(node)) / (1 + N(child))`` (ties: the earliest-created child) until a
  node without children is reached. ``P`` is the policy's length-normalised probability of the child's
  chunk, exp(mean token log-prob), normalised over the siblings (so ``P`` = softmax of the mean log-probs).
* **Expansion.** A reached node that is not terminal (its response ended) and lies above ``max_depth`` gets
  ``n_children`` sampled chunks; identical chunks are merged (sampling the same chunk twice adds no
  branch), so a node may get fewer children.
* **Evaluation.** Each new child gets value ``λ · self_eval + (1 − λ) · verifier``.
* **Backup.** Each new child's value is added to the child and to every ancestor (``N += 1``,
  ``W += value``), so ``Q = W / N`` is the mean of all evaluations in a node's subtree (its own included;
  the root has none of its own). A reached node that cannot be expanded backs up its own value again (a
  revisit), which raises its visit count and so steers later simulations elsewhere.

Pairs come from sibling nodes: at every node with at least two children, the children are ranked by ``Q``
(ties: earliest-created first); chosen = the first, rejected = the last (``"lowest"``), the second
(``"second_highest"``) or a seeded random one of the others (``"random"``). Both continue the same parent
prefix. A sibling pair is eligible when the two responses differ and ``Q(chosen) > Q(rejected)``; eligible
pairs are ranked by value gap (largest first; ties: shallower parent, then earlier parent) and the first
``max_pairs`` are kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

REJECTED_RULES = ("lowest", "second_highest", "random")

# drop reasons of a prompt whose tree yields no pair, in the order they are checked
NO_SIBLING_PAIR = "no_sibling_pair"  # no node got two distinct children
IDENTICAL_RESPONSES = "identical_responses"  # every sibling pair completes to the same text
VALUES_TIED = "values_tied"  # every remaining sibling pair has equal values


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A continuation proposed by the policy: tokens, mean token log-prob, whether it ends the response."""

    tokens: tuple[int, ...]
    logprob_mean: float
    terminal: bool


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the models say about a node: self-evaluation, verifier score, the completion that was graded."""

    self_eval: float
    verifier: float
    completion: tuple[
        int, ...
    ] = ()  # tokens completing the response after the node (empty at a terminal node)
    text: str | None = None  # the completed response as text, when the model side decoded it


@dataclasses.dataclass(eq=False)
class Node:
    """One response prefix in the tree. ``tokens`` is the whole response so far (all chunks on the path)."""

    id: int
    depth: int
    tokens: tuple[int, ...] = ()
    parent: Node | None = None
    chunk: Chunk | None = None
    prior: float = 1.0
    terminal: bool = False
    children: list[Node] = dataclasses.field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    evaluation: Evaluation | None = None
    value: float | None = None  # this node's own λ-combined value (None for the root)

    @property
    def q(self) -> float:
        """Mean backed-up value (0 before the first visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    def path(self) -> list[Node]:
        """The nodes from the root down to this one."""
        nodes: list[Node] = []
        node: Node | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]


@dataclasses.dataclass(eq=False)
class Tree:
    """The search tree of one prompt; ``seed`` seeds all its randomness, ``context`` is the model side's."""

    seed: int
    context: Any = None
    root: Node = dataclasses.field(default_factory=lambda: Node(id=0, depth=0))
    nodes: list[Node] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [self.root]

    def add_children(self, node: Node, chunks: Sequence[Chunk]) -> list[Node]:
        """New children of ``node`` from ``chunks`` (duplicates merged, first kept), priors normalised."""
        if node.children:
            raise ValueError(f"node {node.id} is already expanded")
        unique: dict[tuple[int, ...], Chunk] = {}
        for chunk in chunks:
            unique.setdefault(tuple(chunk.tokens), chunk)
        priors = normalised_priors([c.logprob_mean for c in unique.values()])
        for chunk, prior in zip(unique.values(), priors, strict=True):
            child = Node(
                id=len(self.nodes),
                depth=node.depth + 1,
                tokens=node.tokens + tuple(chunk.tokens),
                parent=node,
                chunk=chunk,
                prior=prior,
                terminal=chunk.terminal,
            )
            node.children.append(child)
            self.nodes.append(child)
        return list(node.children)


class SearchModel(Protocol):
    """What the search needs from models; ``requests`` are (tree, node) pairs from any number of trees."""

    def propose(self, requests: Sequence[tuple[Tree, Node]], n: int) -> list[list[Chunk]]:
        """``n`` sampled chunk continuations of each requested node."""
        ...

    def evaluate(self, requests: Sequence[tuple[Tree, Node]]) -> list[Evaluation]:
        """Self-evaluation and verifier score of each requested node."""
        ...


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    n_simulations: int
    n_children: int
    max_depth: int
    c_puct: float
    lambda_self_eval: float

    def __post_init__(self) -> None:
        if self.n_simulations < 1 or self.n_children < 1 or self.max_depth < 1:
            raise ValueError(
                f"n_simulations, n_children and max_depth must be at least 1, got {self.n_simulations}, "
                f"{self.n_children}, {self.max_depth}"
            )
        if not self.c_puct >= 0:
            raise ValueError(f"c_puct must be non-negative, got {self.c_puct}")
        if not 0 <= self.lambda_self_eval <= 1:
            raise ValueError(f"lambda_self_eval must lie in [0, 1], got {self.lambda_self_eval}")


# ---- the arithmetic ----------------------------------------------------------------------------


def node_value(self_eval: float, verifier: float, lambda_self_eval: float) -> float:
    """λ · self_eval + (1 − λ) · verifier."""
    return lambda_self_eval * self_eval + (1.0 - lambda_self_eval) * verifier


def normalised_priors(logprob_means: Sequence[float]) -> list[float]:
    """exp(mean log-prob) of each sibling chunk, normalised to sum to 1 (a softmax, computed stably)."""
    means = np.asarray(logprob_means, dtype=np.float64)
    if means.size == 0:
        return []
    weights = np.exp(means - means.max())
    return (weights / weights.sum()).tolist()


def puct_score(q: float, prior: float, parent_visits: int, visits: int, c_puct: float) -> float:
    """Q + c_puct · P · sqrt(N(parent)) / (1 + N(child))."""
    return q + c_puct * prior * math.sqrt(parent_visits) / (1 + visits)


def select_child(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score; the earliest-created one among equals."""
    scores = [puct_score(c.q, c.prior, node.visits, c.visits, c_puct) for c in node.children]
    return node.children[int(np.argmax(scores))]


def select_leaf(root: Node, c_puct: float) -> Node:
    """Follow PUCT from ``root`` down to a node without children."""
    node = root
    while node.children:
        node = select_child(node, c_puct)
    return node


def can_expand(node: Node, max_depth: int) -> bool:
    return not node.terminal and not node.children and node.depth < max_depth


def backup(node: Node, value: float) -> None:
    """Add one visit with ``value`` to ``node`` and every ancestor."""
    current: Node | None = node
    while current is not None:
        current.visits += 1
        current.value_sum += value
        current = current.parent


def run_search(trees: Sequence[Tree], model: SearchModel, settings: SearchSettings) -> None:
    """``n_simulations`` rounds of select / expand / evaluate / backup over all trees, model calls batched."""
    for _ in range(settings.n_simulations):
        to_expand: list[tuple[Tree, Node]] = []
        for tree in trees:
            leaf = select_leaf(tree.root, settings.c_puct)
            if can_expand(leaf, settings.max_depth):
                to_expand.append((tree, leaf))
            elif leaf.value is not None:
                backup(leaf, leaf.value)  # a revisit: terminal, or at max_depth
        if not to_expand:
            continue
        proposals = model.propose(to_expand, settings.n_children)
        new: list[tuple[Tree, Node]] = []
        for (tree, leaf), chunks in zip(to_expand, proposals, strict=True):
            if not chunks:
                raise ValueError(f"the model proposed no chunk for node {leaf.id}")
            new += [(tree, child) for child in tree.add_children(leaf, chunks)]
        evaluations = model.evaluate(new)
        for (_, child), evaluation in zip(new, evaluations, strict=True):
            child.evaluation = evaluation
            child.value = node_value(evaluation.self_eval, evaluation.verifier, settings.lambda_self_eval)
            backup(child, child.value)


# ---- pairs -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SiblingPair:
    parent: Node
    chosen: Node
    rejected: Node

    @property
    def gap(self) -> float:
        return self.chosen.q - self.rejected.q


def ranked_children(node: Node) -> list[Node]:
    """Children by backed-up value, highest first; ties keep creation order."""
    return sorted(node.children, key=lambda c: (-c.q, c.id))


def sibling_pairs(
    tree: Tree,
    rejected: str = "lowest",
    rng: np.random.Generator | None = None,
    same_response: Callable[[Node, Node], bool] | None = None,
) -> tuple[list[SiblingPair], str | None]:
    """Every eligible sibling pair of ``tree`` (nodes in creation order), or [] and the drop reason.

    ``same_response(a, b)`` says whether two nodes complete to the same response (default: the same
    tokens, node plus completion); ``rng`` is needed by the ``"random"`` rule.
    """
    if rejected not in REJECTED_RULES:
        raise ValueError(f"rejected rule {rejected!r} is not one of {REJECTED_RULES}")
    if rejected == "random" and rng is None:
        raise ValueError("the 'random' rejected rule needs an rng")
    same = same_response or _same_tokens
    candidates = []
    for node in tree.nodes:
        if len(node.children) < 2:
            continue
        ranking = ranked_children(node)
        if rejected == "lowest":
            other = ranking[-1]
        elif rejected == "second_highest":
            other = ranking[1]
        else:
            other = ranking[1 + int(rng.integers(len(ranking) - 1))]
        candidates.append(SiblingPair(node, ranking[0], other))
    if not candidates:
        return [], NO_SIBLING_PAIR
    distinct = [p for p in candidates if not same(p.chosen, p.rejected)]
    if not distinct:
        return [], IDENTICAL_RESPONSES
    ordered = [p for p in distinct if p.chosen.q > p.rejected.q]
    if not ordered:
        return [], VALUES_TIED
    return ordered, None


def best_pairs(pairs: Sequence[SiblingPair], max_pairs: int) -> list[SiblingPair]:
    """The ``max_pairs`` pairs with the largest value gap (ties: shallower parent, then earlier parent)."""
    return sorted(pairs, key=lambda p: (-p.gap, p.parent.depth, p.parent.id))[:max_pairs]


def response_ids(node: Node) -> list[int]:
    """The token ids of a node's completed response, as the policy generated them (EOS kept if reached)."""
    if node.evaluation is None:
        raise ValueError(f"node {node.id} was never evaluated")
    return [*node.tokens, *node.evaluation.completion]


def response_text(node: Node) -> str:
    """The decoded text of a node's completed response."""
    if node.evaluation is None or node.evaluation.text is None:
        raise ValueError(f"node {node.id} was never evaluated")
    return node.evaluation.text


def same_text(a: Node, b: Node) -> bool:
    """Whether two nodes complete to the same text (``sibling_pairs``' ``same_response`` for decoded trees)."""
    return response_text(a) == response_text(b)


def _same_tokens(a: Node, b: Node) -> bool:
    def full(node: Node) -> tuple[int, ...]:
        completion = node.evaluation.completion if node.evaluation is not None else ()
        return node.tokens + tuple(completion)

    return full(a) == full(b)


__all__ = [
    "IDENTICAL_RESPONSES",
    "NO_SIBLING_PAIR",
    "REJECTED_RULES",
    "VALUES_TIED",
    "Chunk",
    "Evaluation",
    "Node",
    "SearchModel",
    "SearchSettings",
    "SiblingPair",
    "Tree",
    "backup",
    "best_pairs",
    "can_expand",
    "node_value",
    "normalised_priors",
    "puct_score",
    "ranked_children",
    "response_ids",
    "response_text",
    "run_search",
    "same_text",
    "select_child",
    "select_leaf",
    "sibling_pairs",
]
