"""MCTS shared-prefix pairs: tree arithmetic by hand with a fake policy, then the step on the tiny model."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.ifeval import IFEvalConfig, IFEvalVerifier
from hfpref.steps.mcts import DEFAULT_SELF_EVAL_TEMPLATE, MCTSConfig, MCTSPairGenerator
from hfpref.steps.mcts_policy import PromptContext, child_seed, yes_probability
from hfpref.steps.mcts_tree import (
    IDENTICAL_RESPONSES,
    NO_SIBLING_PAIR,
    VALUES_TIED,
    Chunk,
    Evaluation,
    Node,
    SearchSettings,
    Tree,
    backup,
    best_pairs,
    node_value,
    normalised_priors,
    puct_score,
    response_ids,
    run_search,
    select_child,
    select_leaf,
    sibling_pairs,
)

# ---- the tree arithmetic, by hand ---------------------------------------------------------------


def test_formulas_by_hand():
    # Q + c·P·sqrt(N_parent)/(1 + N_child) = 0.5 + 1.5·0.25·3/3
    assert puct_score(0.5, 0.25, 9, 2, 1.5) == pytest.approx(0.875)
    assert puct_score(0.5, 0.25, 0, 0, 1.5) == 0.5
    # exp(mean log-prob) normalised: 0.2 and 0.4 -> 1/3 and 2/3; a common shift changes nothing
    assert normalised_priors([math.log(0.2), math.log(0.4)]) == pytest.approx([1 / 3, 2 / 3])
    assert normalised_priors([-1000.0, -1000.0 + math.log(3)]) == pytest.approx([0.25, 0.75])
    assert node_value(0.9, 0.5, 0.2) == pytest.approx(0.2 * 0.9 + 0.8 * 0.5)
    assert node_value(0.9, 0.5, 1.0) == 0.9 and node_value(0.9, 0.5, 0.0) == 0.5
    assert yes_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert yes_probability(0.0, 2000.0) == 0.0 and yes_probability(2000.0, 0.0) == 1.0  # no overflow


def _node(tree: Tree, parent: Node, visits: int, value_sum: float, prior: float) -> Node:
    node = Node(id=len(tree.nodes), depth=parent.depth + 1, parent=parent, prior=prior)
    node.visits, node.value_sum = visits, value_sum
    parent.children.append(node)
    tree.nodes.append(node)
    return node


def test_selection_and_backup_by_hand():
    tree = Tree(seed=0)
    root = tree.root
    root.visits = 4
    a = _node(tree, root, visits=3, value_sum=1.5, prior=0.2)  # Q 0.5
    b = _node(tree, root, visits=1, value_sum=0.4, prior=0.8)  # Q 0.4
    # a: 0.5 + 1·0.2·2/4 = 0.6; b: 0.4 + 1·0.8·2/2 = 1.2
    assert select_child(root, 1.0) is b
    assert select_child(root, 0.0) is a  # pure exploitation
    b.value_sum = b.prior = 0.0
    a.value_sum, a.prior = 0.0, 0.0
    assert select_child(root, 1.0) is a  # all scores 0: the earliest child
    grandchild = _node(tree, a, visits=0, value_sum=0.0, prior=1.0)
    assert select_leaf(root, 0.0) is grandchild
    backup(grandchild, 0.6)
    assert (grandchild.visits, grandchild.value_sum) == (1, 0.6)
    assert (a.visits, a.value_sum) == (4, 0.6)
    assert (root.visits, root.value_sum) == (5, 0.6)
    assert (b.visits, b.value_sum) == (1, 0.0)


class ScriptedModel:
    """A fake policy: chunks and their mean log-probs, self-evaluations and verifier scores from tables."""

    def __init__(self, chunks: dict, scores: dict) -> None:
        self.chunks, self.scores = chunks, scores
        self.propose_calls: list[list[tuple[int, tuple]]] = []
        self.evaluate_calls: list[list[tuple[int, tuple]]] = []

    def propose(self, requests: Sequence[tuple[Tree, Node]], n: int) -> list[list[Chunk]]:
        self.propose_calls.append([(tree.seed, node.tokens) for tree, node in requests])
        out = []
        for _, node in requests:
            table = self.chunks[node.tokens]
            assert len(table) == n
            out.append([Chunk(tokens, math.log(p), terminal) for tokens, p, terminal in table])
        return out

    def evaluate(self, requests: Sequence[tuple[Tree, Node]]) -> list[Evaluation]:
        self.evaluate_calls.append([(tree.seed, node.tokens) for tree, node in requests])
        return [Evaluation(*self.scores[node.tokens], completion=(99,)) for _, node in requests]


# the worked example: n_children 2, c_puct 1, λ 0.2, max_depth 2 (numbers in the comments of the test)
CHUNKS = {
    (): [((1,), 0.3, False), ((2,), 0.1, False)],
    (1,): [((3,), 0.2, False), ((4,), 0.2, False)],  # chunks: the new tokens after the node
    (2,): [((5,), 0.5, False), ((5,), 0.5, False)],  # the same chunk twice: merged
}
SCORES = {  # (self_eval, verifier) -> value 0.2·s + 0.8·v
    (1,): (1.0, 0.5),  # 0.6
    (2,): (0.0, 1.0),  # 0.8
    (1, 3): (0.5, 0.0),  # 0.1
    (1, 4): (0.5, 0.5),  # 0.5
    (2, 5): (1.0, 1.0),  # 1.0
}
SETTINGS = SearchSettings(n_simulations=4, n_children=2, max_depth=2, c_puct=1.0, lambda_self_eval=0.2)


def by_tokens(tree: Tree) -> dict[tuple, Node]:
    return {node.tokens: node for node in tree.nodes}


def test_search_worked_example():
    model = ScriptedModel(CHUNKS, SCORES)
    tree = Tree(seed=7)
    run_search([tree], model, SETTINGS)
    nodes = by_tokens(tree)
    # sim 1 expands the root: priors 0.3/(0.3+0.1), 0.1/0.4; values 0.6 and 0.8
    assert nodes[(1,)].prior == pytest.approx(0.75) and nodes[(2,)].prior == pytest.approx(0.25)
    assert nodes[(1,)].value == pytest.approx(0.6) and nodes[(2,)].value == pytest.approx(0.8)
    # sim 2 at the root (N 2): a = 0.6 + 0.75·√2/2 = 1.130 beats b = 0.8 + 0.25·√2/2 = 0.977 -> expand (1,)
    # sim 3 (N 4): a = (0.6+0.1+0.5)/3 + 0.75·2/4 = 0.775, b = 0.8 + 0.25·2/2 = 1.05 -> expand (2,)
    # sim 4 (N 5): a = 0.4 + 0.75·√5/4 = 0.819, b = 0.9 + 0.25·√5/3 = 1.086 -> (2,) -> (2, 5) at max_depth:
    # a revisit, which backs up its own value 1.0 again
    assert model.propose_calls == [[(7, ())], [(7, (1,))], [(7, (2,))]]
    assert model.evaluate_calls == [[(7, (1,)), (7, (2,))], [(7, (1, 3)), (7, (1, 4))], [(7, (2, 5))]]
    assert [c.tokens for c in nodes[(2,)].children] == [(2, 5)]  # duplicates merged
    assert nodes[(2, 5)].prior == 1.0
    expected = {  # (visits, value sum)
        (): (6, 0.6 + 0.8 + 0.1 + 0.5 + 1.0 + 1.0),
        (1,): (3, 0.6 + 0.1 + 0.5),
        (2,): (3, 0.8 + 1.0 + 1.0),
        (1, 3): (1, 0.1),
        (1, 4): (1, 0.5),
        (2, 5): (2, 2.0),
    }
    assert {t: (n.visits, n.value_sum) for t, n in nodes.items()} == {
        t: (v, pytest.approx(w)) for t, (v, w) in expected.items()
    }
    # pairs: at the root (2,) Q 0.933 over (1,) Q 0.4, gap 0.533; at (1,): (1,4) 0.5 over (1,3) 0.1, gap 0.4
    pairs, reason = sibling_pairs(tree)
    assert reason is None
    assert [(p.parent.tokens, p.chosen.tokens, p.rejected.tokens) for p in pairs] == [
        ((), (2,), (1,)),
        ((1,), (1, 4), (1, 3)),
    ]
    assert [p.gap for p in pairs] == [pytest.approx(2.8 / 3 - 0.4), pytest.approx(0.4)]
    assert [p.parent.tokens for p in best_pairs(pairs, 1)] == [()]
    assert [p.parent.tokens for p in best_pairs(pairs, 5)] == [(), (1,)]


def test_lambda_changes_values_and_the_search():
    tree = Tree(seed=1)
    settings = SearchSettings(n_simulations=1, n_children=2, max_depth=2, c_puct=1.0, lambda_self_eval=1.0)
    run_search([tree], ScriptedModel(CHUNKS, SCORES), settings)
    nodes = by_tokens(tree)
    assert (nodes[(1,)].value, nodes[(2,)].value) == (1.0, 0.0)  # self-evaluation only
    pairs, _ = sibling_pairs(tree)
    assert (pairs[0].chosen.tokens, pairs[0].rejected.tokens) == ((1,), (2,))


def test_lockstep_trees_do_not_interact_and_terminal_nodes_are_not_expanded():
    chunks = {**CHUNKS, (): [((1,), 0.3, True), ((2,), 0.1, False)]}  # (1,) ends its response
    model = ScriptedModel(chunks, SCORES)
    first, second = Tree(seed=1), Tree(seed=2)
    run_search([first, second], model, SETTINGS)
    assert model.propose_calls[0] == [(1, ()), (2, ())]  # one batched call per simulation
    alone = Tree(seed=1)
    run_search([alone], ScriptedModel(chunks, SCORES), SETTINGS)
    for tree in (first, second):
        assert {t: (n.visits, n.value_sum) for t, n in by_tokens(tree).items()} == {
            t: (n.visits, n.value_sum) for t, n in by_tokens(alone).items()
        }
        assert not by_tokens(tree)[(1,)].children  # terminal: revisited, never expanded
    assert by_tokens(alone)[(1,)].visits > 1


def _siblings(values: Sequence[float], completions: Sequence[tuple] | None = None) -> Tree:
    tree = Tree(seed=0)
    for k, value in enumerate(values):
        child = _node(tree, tree.root, visits=1, value_sum=value, prior=1 / len(values))
        child.tokens = (k,)
        child.evaluation = Evaluation(0.0, 0.0, completion=(completions or [()] * len(values))[k])
    return tree


def test_rejected_rules_and_drop_reasons():
    tree = _siblings([0.3, 0.9, 0.5, 0.2])
    (pair,), _ = sibling_pairs(tree, "lowest")
    assert (pair.chosen.value_sum, pair.rejected.value_sum) == (0.9, 0.2)
    (pair,), _ = sibling_pairs(tree, "second_highest")
    assert (pair.chosen.value_sum, pair.rejected.value_sum) == (0.9, 0.5)
    picks = set()
    for seed in range(30):
        (pair,), _ = sibling_pairs(tree, "random", np.random.default_rng(seed))
        assert pair.chosen.value_sum == 0.9
        picks.add(pair.rejected.value_sum)
    assert picks == {0.3, 0.5, 0.2}  # any other child, never the chosen one
    with pytest.raises(ValueError, match="rng"):
        sibling_pairs(tree, "random")
    with pytest.raises(ValueError, match="worst"):
        sibling_pairs(tree, "worst")
    # ties: the earliest-created child ranks first, and a tied pair is no pair
    assert sibling_pairs(_siblings([0.9, 0.9, 0.1]), "second_highest") == ([], VALUES_TIED)
    assert sibling_pairs(_siblings([0.5, 0.5]), "lowest") == ([], VALUES_TIED)
    assert sibling_pairs(_siblings([0.5]), "lowest") == ([], NO_SIBLING_PAIR)
    assert sibling_pairs(Tree(seed=0)) == ([], NO_SIBLING_PAIR)
    # chunks (0,) and (0, 1) completed by (1, 5) and (5,): the same tokens, so the same response
    same = _siblings([0.9, 0.1], completions=[(1, 5), (5,)])
    same.nodes[2].tokens = (0, 1)
    assert sibling_pairs(same) == ([], IDENTICAL_RESPONSES)
    # a caller's own notion of "the same response" (e.g. decoded text) is used when given
    assert sibling_pairs(_siblings([0.9, 0.1]), same_response=lambda a, b: True) == ([], IDENTICAL_RESPONSES)


def test_best_pairs_prefers_largest_gap_then_shallower():
    tree = _siblings([0.9, 0.1])  # gap 0.8 at depth 0
    for parent, values in ((tree.nodes[2], (0.7, 0.1)), (tree.nodes[1], (0.85, 0.05))):  # gaps 0.6, 0.8
        for k, value in enumerate(values):
            child = _node(tree, parent, visits=1, value_sum=value, prior=0.5)
            child.tokens, child.evaluation = (*parent.tokens, k), Evaluation(0.0, 0.0)
    pairs, _ = sibling_pairs(tree)
    assert [(round(p.gap, 6), p.parent.depth) for p in best_pairs(pairs, 3)] == [(0.8, 0), (0.8, 1), (0.6, 1)]
    assert [p.parent.id for p in best_pairs(pairs, 1)] == [0]


def test_search_settings_are_validated():
    with pytest.raises(ValueError, match="at least 1"):
        SearchSettings(n_simulations=0, n_children=2, max_depth=2, c_puct=1.0, lambda_self_eval=0.2)
    with pytest.raises(ValueError, match="lambda"):
        SearchSettings(n_simulations=1, n_children=2, max_depth=2, c_puct=1.0, lambda_self_eval=1.5)
    with pytest.raises(ValueError, match="compile is not supported"):
        MCTSConfig(model="some/policy", compile=True)


# ---- the step on the tiny model ------------------------------------------------------------------

PROMPTS = [
    "Write a short poem about the sea.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List the planets."}],
    "Explain why the sky is blue.",
]
CONSTRAINTS = [
    (["punctuation:no_comma"], [{}]),
    (
        ["length_constraints:number_words", "detectable_format:title"],
        [{"relation": "less than", "num_words": 3}, {}],
    ),
    (["keywords:existence"], [{"keywords": ["in", "the"]}]),
]
SMALL = dict(n_simulations=3, n_children=3, chunk_max_tokens=4, max_depth=2, max_new_tokens=12)


def rows(indices: Sequence[int] = (0, 1, 2)) -> dict[str, list]:
    return {
        "key": [100 + i for i in indices],
        "prompt": [PROMPTS[i] for i in indices],
        "instruction_id_list": [CONSTRAINTS[i][0] for i in indices],
        "kwargs": [CONSTRAINTS[i][1] for i in indices],
    }


@pytest.fixture(scope="module")
def step(policy) -> MCTSPairGenerator:
    return MCTSPairGenerator(MCTSConfig(model=policy, max_pairs_per_prompt=3, **SMALL))


@pytest.fixture(scope="module")
def searched(step):
    batch = rows()
    trees = step.search(batch)
    return batch, trees, step.pair_rows(batch, trees)


@pytest.fixture(scope="module")
def tokenizer(policy):
    return AutoTokenizer.from_pretrained(policy)


@pytest.fixture(scope="module")
def lm(policy):
    return AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()


def test_pairs_share_a_prefix_and_carry_their_tree_values(step, searched, tokenizer):
    batch, trees, out = searched
    assert out["pair_strategy"] == ["mcts_shared_prefix"] * len(out["prompt"])
    kept = [k for k, reason in enumerate(out["drop_reason"]) if reason is None]
    assert len(kept) >= 3  # every prompt gives pairs: at least the root's children
    grader = IFEvalVerifier(IFEvalConfig(reward=None))
    for k in kept:
        i = batch["key"].index(out["key"][k])
        assert out["prompt"][k] == _as_messages(
            batch["prompt"][i]
        )  # as sampled: the tiny model has a template
        assert out["instruction_id_list"][k] == batch["instruction_id_list"][i]  # passed through
        chosen, rejected = out["chosen"][k], out["rejected"][k]
        # TRL's conversational format for every prompt, strings included (they were sampled as messages)
        assert chosen[0]["role"] == rejected[0]["role"] == "assistant"
        chosen, rejected = chosen[0]["content"], rejected[0]["content"]
        texts = {id(n): n.evaluation.text for n in trees[i].nodes if n.evaluation is not None}
        (a,) = [n for n in trees[i].nodes if texts.get(id(n)) == chosen]
        (b,) = [n for n in trees[i].nodes if texts.get(id(n)) == rejected]
        # siblings, chosen the highest-valued child and rejected the lowest
        assert a.parent is b.parent and a is not b
        values = [c.value_sum / c.visits for c in a.parent.children]
        assert out["chosen_value"][k] == a.q == max(values)
        assert out["rejected_value"][k] == b.q == min(values) < max(values)
        assert out["tree_depth"][k] == a.parent.depth
        # the texts are the generated tokens, which share exactly shared_prefix_tokens leading tokens
        ids_a, ids_b = response_ids(a), response_ids(b)
        assert tokenizer.decode(ids_a, skip_special_tokens=True) == chosen
        assert tokenizer.decode(ids_b, skip_special_tokens=True) == rejected
        shared = out["shared_prefix_tokens"][k]
        assert ids_a[:shared] == ids_b[:shared]
        assert shared == min(len(ids_a), len(ids_b)) or ids_a[shared] != ids_b[shared]
        assert shared >= len(a.parent.tokens) and ids_a[: len(a.parent.tokens)] == list(a.parent.tokens)
        # rewards: the completed texts graded by the IFEval step itself
        graded = grader(
            {
                "prompt": [batch["prompt"][i]],
                "responses": [[chosen, rejected]],
                "instruction_id_list": [batch["instruction_id_list"][i]],
                "kwargs": [batch["kwargs"][i]],
            }
        )["correctness"][0]
        assert [out["reward_chosen"][k], out["reward_rejected"][k]] == graded
        assert out["reward_margin"][k] == pytest.approx(graded[0] - graded[1])
        assert out["chosen_generator"][k] == out["rejected_generator"][k] == step.config.model
    # at most max_pairs_per_prompt per prompt, largest value gap first
    for key in batch["key"]:
        gaps = [out["chosen_value"][k] - out["rejected_value"][k] for k in kept if out["key"][k] == key]
        assert 1 <= len(gaps) <= 3 and gaps == sorted(gaps, reverse=True)


def _as_messages(prompt) -> list[dict]:
    """What a string prompt becomes under a chat template (written out here, not hfpref's helper)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def test_prompts_come_back_as_they_were_sampled_in(step, searched, tokenizer):
    from trl.data_utils import is_conversational

    batch, _, out = searched
    assert tokenizer.chat_template is not None
    for k, key in enumerate(out["key"]):
        i = batch["key"].index(key)
        assert out["prompt"][k] == _as_messages(batch["prompt"][i])
        if out["drop_reason"][k] is None:
            row = {name: out[name][k] for name in ("prompt", "chosen", "rejected")}
            assert is_conversational(row)  # TRL reads the row as one conversation
            assert [m["role"] for m in row["chosen"]] == ["assistant"]
    # a string and its one-user-message form are the same context: the same tree, the same rows
    one_message = rows([0])
    one_message["prompt"] = [_as_messages(PROMPTS[0])]
    assert step(one_message) == step(rows([0]))
    # through datasets, string prompts become messages in the features too
    dataset = datasets.Dataset.from_dict(rows([0, 2]))
    applied = step.apply(dataset, batch_size=1)
    assert applied["prompt"] == [_as_messages(PROMPTS[key - 100]) for key in applied["key"]]
    assert set(applied["key"]) == {100, 102}
    assert step.describe()["chat_template_sha256"] is not None


def test_without_a_chat_template_prompts_stay_text(tiny_models, tmp_path):
    import shutil

    from hfpref.steps.chat_prompts import MESSAGES, TEXT, PromptFormError

    bare = tmp_path / "tiny-llama-no-template"
    shutil.copytree(tiny_models["policy"], bare)
    (bare / "chat_template.jinja").unlink()
    step = MCTSPairGenerator(MCTSConfig(model=str(bare), **SMALL))
    out = step(rows([0]))
    assert out["prompt"] == [PROMPTS[0]] * len(out["prompt"])
    assert all(isinstance(c, str) for c in out["chosen"] if c is not None)
    assert step.prompt_form_after(TEXT) == TEXT
    with pytest.raises(PromptFormError, match="no chat template"):
        step.prompt_form_after(MESSAGES)
    assert (
        MCTSPairGenerator(MCTSConfig(model=str(tiny_models["policy"]), **SMALL)).prompt_form_after(TEXT)
        == MESSAGES
    )


def _ends_sentence(text: str) -> bool:
    stripped = text.rstrip(" \t")
    return stripped.endswith(("\n", ".", "!", "?")) or re.search(r"[.!?][\"')\]]+\s*$", text) is not None


def test_tree_shape_chunks_priors_and_lambda(searched, step, tokenizer, lm):
    _, trees, _ = searched
    eos = tokenizer.eos_token_id
    for tree in trees:
        assert tree.root.visits == sum(c.visits for c in tree.root.children)
        for node in tree.nodes[1:]:
            chunk = node.chunk.tokens
            assert 1 <= len(chunk) <= SMALL["chunk_max_tokens"]
            assert node.depth <= SMALL["max_depth"] and len(node.tokens) <= SMALL["max_new_tokens"]
            pieces = [tokenizer.decode([t]) for t in chunk]
            # a chunk stops at EOS, at the length limit or after the first sentence end that follows text
            ended = chunk[-1] == eos or len(chunk) == SMALL["chunk_max_tokens"] or _ends_sentence(pieces[-1])
            assert ended, pieces
            for j in range(len(chunk) - 1):
                has_text = any(p.strip() and t != eos for p, t in zip(pieces[: j + 1], chunk, strict=False))
                assert chunk[j] != eos and not (has_text and _ends_sentence(pieces[j]))
            assert node.terminal == (chunk[-1] == eos or len(node.tokens) == SMALL["max_new_tokens"])
            # value = λ·self_eval + (1 − λ)·verifier, λ = 0.2
            ev = node.evaluation
            assert 0 < ev.self_eval < 1 and 0 <= ev.verifier <= 1
            assert node.value == pytest.approx(0.2 * ev.self_eval + 0.8 * ev.verifier)
            assert len(node.tokens) + len(ev.completion) <= SMALL["max_new_tokens"]
        for node in tree.nodes:
            if node.children:
                assert sum(c.prior for c in node.children) == pytest.approx(1.0)
                assert len({c.chunk.tokens for c in node.children}) == len(node.children)

    # priors against a plain forward pass: exp(mean log-prob of each chunk), normalised over siblings
    tree = trees[0]
    parent = tree.root
    context = tree.context.prompt_ids
    means = []
    for child in parent.children:
        ids = torch.tensor([context + list(child.chunk.tokens)])
        with torch.no_grad():
            logps = torch.log_softmax(lm(ids).logits[0].float(), -1)
        targets = ids[0, len(context) :]
        means.append(float(logps[len(context) - 1 : -1].gather(1, targets[:, None]).mean()))
        assert child.chunk.logprob_mean == pytest.approx(means[-1], abs=1e-4)
    weights = np.exp(means)
    assert [c.prior for c in parent.children] == pytest.approx(list(weights / weights.sum()), abs=1e-5)

    # self-evaluation against a plain forward pass on the question, chat template applied
    node = tree.root.children[0]
    partial = tokenizer.decode(list(node.tokens), skip_special_tokens=True)
    question = DEFAULT_SELF_EVAL_TEMPLATE.format(instruction=PROMPTS[0], response=partial)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    with torch.no_grad():
        last = lm(torch.tensor([list(ids)])).logits[0, -1].float()
    yes, no = tokenizer.encode("Yes")[0], tokenizer.encode("No")[0]
    expected = float(torch.softmax(last[[yes, no]], 0)[0])
    assert node.evaluation.self_eval == pytest.approx(expected, abs=1e-5)


def test_deterministic_and_independent_of_the_batch(policy, step, searched):
    _, _, reference = searched
    fresh = MCTSPairGenerator(MCTSConfig(model=policy, max_pairs_per_prompt=3, **SMALL))
    assert fresh(rows()) == reference

    def for_key(out: dict, key: int) -> dict:
        return {
            name: [v for v, k in zip(values, out["key"], strict=True) if k == key]
            for name, values in out.items()
        }

    alone = step(rows([2]))
    reordered = step(rows([2, 0]))
    assert alone == for_key(reference, 102) == for_key(reordered, 102)
    assert for_key(reordered, 100) == for_key(reference, 100)
    other_seed = MCTSPairGenerator(MCTSConfig(model=policy, max_pairs_per_prompt=3, seed=1, **SMALL))
    assert other_seed(rows())["chosen"] != reference["chosen"]
    assert child_seed(5, 0, 0) != child_seed(5, 0, 1) != child_seed(5, 1, 0)


class FakeScores(MCTSPairGenerator):
    """The tiny model's chunks and rollouts, a constant self-evaluation and a verifier read off the text."""

    def self_evaluate(self, loaded, items: Sequence[tuple[PromptContext, str]]) -> list[float]:
        return [0.9] * len(items)

    def verify(self, loaded, items, batch, indices) -> list[float]:
        return [fake_verifier(text) for _, text in items]


def fake_verifier(text: str) -> float:
    return (len(text) % 5) / 4


@pytest.mark.parametrize("lam", [0.2, 0.0, 1.0])
def test_values_follow_lambda_by_hand(policy, lam):
    # one simulation: the root's children only, so each value is that child's own λ-combination
    config = MCTSConfig(model=policy, **{**SMALL, "n_simulations": 1, "n_children": 4}, lambda_self_eval=lam)
    out = FakeScores(config)(rows([0]))
    if lam == 1.0:  # every value is the constant self-evaluation: no ordered pair
        assert out["drop_reason"] == ["values_tied"] and out["chosen"] == [None]
        return
    assert out["drop_reason"] == [None]
    for column, response in (("chosen_value", out["chosen"][0]), ("rejected_value", out["rejected"][0])):
        (message,) = response  # one assistant message: the string prompt was sampled through the template
        text = message["content"]
        assert out[column][0] == pytest.approx(lam * 0.9 + (1 - lam) * fake_verifier(text))
    assert out["tree_depth"] == [0]


def test_rejected_rule_second_highest(policy, searched):
    _, trees, _ = searched
    config = MCTSConfig(model=policy, max_pairs_per_prompt=3, rejected="second_highest", **SMALL)
    out = MCTSPairGenerator(config)(rows())
    checked = 0
    for k, reason in enumerate(out["drop_reason"]):
        if reason is None:
            chosen = out["chosen"][k]
            chosen = chosen[0]["content"] if isinstance(chosen, list) else chosen
            (siblings,) = [
                n.children
                for tree in trees
                for n in tree.nodes
                if any(c.evaluation and c.evaluation.text == chosen for c in n.children)
            ]
            top = sorted((c.q for c in siblings), reverse=True)
            assert [out["chosen_value"][k], out["rejected_value"][k]] == top[:2]
            checked += 1
    assert checked >= 3


def test_one_child_per_node_gives_drop_rows_with_stable_types(policy):
    step = MCTSPairGenerator(MCTSConfig(model=policy, **{**SMALL, "n_children": 1}))
    dataset = datasets.Dataset.from_dict(rows([0, 2]))
    out = step.apply(dataset, batch_size=1)
    assert out["drop_reason"] == ["no_sibling_pair"] * 2
    assert out["chosen"] == [None] * 2 and out["shared_prefix_tokens"] == [None] * 2
    assert out.features["shared_prefix_tokens"] == datasets.Value("int64")
    assert out.features["chosen_value"] == datasets.Value("float64")


def test_responses_end_at_max_new_tokens(policy):
    # every first chunk fills the response: all nodes terminal, nothing to roll out, later simulations revisit
    config = MCTSConfig(model=policy, **{**SMALL, "chunk_max_tokens": 3, "max_new_tokens": 3})
    step = MCTSPairGenerator(config)
    (tree,) = step.search(rows([0]))
    assert all(node.terminal and not node.children for node in tree.nodes[1:])
    assert all(node.evaluation.completion == () for node in tree.nodes[1:])
    assert tree.root.visits == SMALL["n_simulations"] - 1 + len(tree.root.children)
    out = step.pair_rows(rows([0]), [tree])
    assert out["drop_reason"] == [None] and out["tree_depth"] == [0]


def test_apply_through_datasets_on_real_ifeval_prompts(step):
    from hfpref.pipeline import default_data

    path = default_data.data_dir() / default_data.PROMPTS_FILE  # the copy shipped in the package
    real = datasets.load_dataset("json", data_files=str(path), split="train")
    shortest = sorted(range(len(real)), key=lambda i: len(real[i]["prompt"]))[:2]  # the tiny context fits
    dataset = real.select(shortest)
    direct = step(dataset[:])
    for batch_size in (1, 2):
        out = step.apply(dataset, batch_size=batch_size)
        assert out.to_dict() == direct
    assert sum(reason is None for reason in out["drop_reason"]) >= 2
    assert out.features["tree_depth"] == datasets.Value("int64")
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    assert out.features["chosen"] == out.features["prompt"] == datasets.List(message)
    assert out.features["kwargs"] == dataset.features["kwargs"]
    assert set(out.column_names) == set(step.output_columns()) | {"key", "instruction_id_list", "kwargs"}


def test_bad_input_is_named(policy, step):
    with pytest.raises(MissingColumnError, match="instruction_id_list"):
        step({"prompt": ["x"], "kwargs": [[{}]]})
    bad = rows([0])
    bad["instruction_id_list"] = [["no:such_check"]]
    with pytest.raises(RowError, match=r"row 7 key=100.*no:such_check"):
        step(bad, indices=[7])
    short = MCTSPairGenerator(MCTSConfig(model=policy, **SMALL, max_length=20))
    with pytest.raises(RowError, match="max_length=20"):
        short(rows([0]))
    for wrong in (
        {"rejected": "worst"},
        {"lambda_self_eval": 2.0},
        {"temperature": 0.0},
        {"self_eval_template": "Is {response} good?"},
        {"overflow": "truncate"},
    ):
        with pytest.raises(ValueError):
            MCTSConfig(model=policy, **wrong)
