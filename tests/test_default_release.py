"""The eight-generator default release (`hfpref curate` with no recipe), checked against expectations computed
here, independently, from the release's own candidates rows: the measured generator ranking, the screening
counts, ds_fix's pairs, and how often best_of_n2 and max_margin pick the same pair."""

from __future__ import annotations

import json
import math
from collections import Counter

import datasets
import pytest
from rapidfuzz.distance import Levenshtein

from hfpref.pipeline.recipe import DEFAULT_STRATEGIES
from tests.helpers import EIGHT_GENERATORS, curate_quietly

EIGHT = set(EIGHT_GENERATORS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default")
    folder, stdout = curate_quietly(tmp)

    def load(name):
        return datasets.load_dataset(str(folder), name=name, split="train", cache_dir=str(tmp / "lc"))

    manifest = json.loads((folder / "hfpref_manifest.json").read_text())
    return {"folder": folder, "stdout": stdout, "load": load, "manifest": manifest}


def _eligible(row, i, j):
    texts, rewards = row["responses"], row["rewards"]
    return (
        i != j
        and texts[i] is not None
        and texts[j] is not None
        and texts[i].strip() != ""
        and texts[j].strip() != ""
        and texts[i] != texts[j]
        and rewards[i] is not None
        and rewards[j] is not None
    )


def _expected_pair(row, score):
    """Row-major argmax of score(i, j) over eligible ordered pairs with reward(i) > reward(j)."""
    best, best_score = None, -math.inf
    n = len(row["responses"])
    for i in range(n):
        for j in range(n):
            if _eligible(row, i, j) and row["rewards"][i] > row["rewards"][j]:
                value = score(i, j)
                if value > best_score:
                    best, best_score = (i, j), value
    return best


def test_eight_generators_and_screening_counts(run):
    manifest, candidates = run["manifest"], run["load"]("candidates")
    assert set(manifest["input"]["generators"]) == EIGHT and len(manifest["input"]["generators"]) == 8
    assert [s["step"].rsplit(".", 1)[1] for s in manifest["steps"]] == [
        "ScreenResponses",
        "IFEvalVerifier",
        "PairMetrics",
    ]
    removed = [entry for row in candidates["screened_out"] for entry in row]
    by_reason = Counter(entry["reason"] for entry in removed)
    screened = manifest["candidates_summary"]["screened_out"]
    assert screened["by_reason"] == dict(by_reason) and screened["removed"] == len(removed)
    # every row keeps its responses plus what screening removed: 8 per prompt (7 for key 2785: no GPT-4)
    for row in candidates:
        assert len(row["responses"]) + len(row["screened_out"]) == (7 if row["key"] == 2785 else 8)
        assert (
            len(row["generators"])
            == len(row["rewards"])
            == len(row["ifeval_strict"])
            == len(row["responses"])
        )
    # the 36 over-long Qwen2.5-0.5B answers are among the runaways; key 2785 (old prompt) lost everything
    long_small = [e for e in removed if e["generator"] == "qwen2.5-0.5b-instruct" and e["chars"] > 10_000]
    assert len(long_small) == 36 and all(e["reason"] == "runaway" for e in long_small)
    (row_2785,) = [r for r in candidates if r["key"] == 2785]
    assert row_2785["responses"] == [] and {e["reason"] for e in row_2785["screened_out"]} == {"stale_prompt"}


def test_ranking_is_measured_from_the_candidates(run):
    manifest, candidates = run["manifest"], run["load"]("candidates")
    prompts, instructions = Counter(), Counter()
    graded, met = Counter(), Counter()
    for row in candidates:
        for generator, verdicts in zip(row["generators"], row["ifeval_strict"], strict=True):
            graded[generator] += 1
            prompts[generator] += all(verdicts)
            instructions[generator] += len(verdicts)
            met[generator] += sum(verdicts)
    accuracy = {a["generator"]: a for a in manifest["generator_accuracy"]}
    assert set(accuracy) == EIGHT
    for generator, a in accuracy.items():
        assert a["responses"] == graded[generator]
        assert a["prompt_level"] == pytest.approx(prompts[generator] / graded[generator])
        assert a["instruction_level"] == pytest.approx(met[generator] / instructions[generator])
        assert a["prompt_level_ci"][0] < a["prompt_level"] < a["prompt_level_ci"][1]
    expected = sorted(EIGHT, key=lambda g: (-prompts[g] / graded[g], -met[g] / instructions[g], g))
    assert manifest["generator_ranking"] == expected and manifest["generator_ranking_source"] == "measured"
    # GPT-4 is unaffected by screening: IFEval's published 76.89 / 83.57 over 541 prompts, here 415 / 540
    assert accuracy["gpt-4-20231107"]["prompt_level"] == pytest.approx(415 / 540)
    # the Qwen2.5 sizes form a capability ladder
    qwen = [f"qwen2.5-{s}-instruct" for s in ("0.5b", "1.5b", "7b", "32b")]
    assert [expected.index(g) for g in qwen] == sorted((expected.index(g) for g in qwen), reverse=True)
    # ds_fix uses it: among pairs of different texts, the largest rank gap (chosen ranked higher), row-major
    rank = {g: i for i, g in enumerate(expected)}
    ds_fix = {r["key"]: r for r in run["load"]("ds_fix")}
    for row in candidates:
        g, n = row["generators"], len(row["responses"])
        gaps = {
            (i, j): rank[g[j]] - rank[g[i]]
            for i in range(n)
            for j in range(n)
            if _eligible(row, i, j) and rank[g[i]] < rank[g[j]]
        }
        if not gaps:
            assert row["key"] not in ds_fix
            continue
        widest = max(gaps.values())
        pair = ds_fix[row["key"]]
        assert (pair["chosen_index"], pair["rejected_index"]) == min(
            k for k, v in gaps.items() if v == widest
        )
    assert manifest["pair_selection"]["ds_fix"]["config"]["generator_ranking"] == expected


def test_best_of_n2_and_max_margin_differ_as_the_candidates_say(run):
    manifest, candidates = run["manifest"], run["load"]("candidates")
    same = shared = 0
    for row in candidates:
        r = row["rewards"]
        words = [None if t is None else t.split() for t in row["responses"]]

        def dcrm(i, j, r=r, words=words):
            return (1 / (1 + math.exp(-(r[i] - r[j]))) - 0.5) / (Levenshtein.distance(words[i], words[j]) + 1)

        best = _expected_pair(row, dcrm)
        margin = _expected_pair(row, lambda i, j, r=r: r[i] - r[j])
        if best is not None and margin is not None:
            shared += 1
            same += best == margin
    for name, expected in (("best_of_n2", None), ("max_margin", None)):
        pairs = run["load"](name)
        by_key = {row["key"]: row for row in candidates}
        for pair in pairs:
            row = by_key[pair["key"]]
            assert row["responses"][pair["chosen_index"]] == pair["chosen"]
        assert len(pairs) == shared, expected
    agreement = manifest["configs"]["max_margin"]["same_pair_as_reference"]
    assert agreement["reference"] == "best_of_n2"
    assert (agreement["shared_prompts"], agreement["same_pairs"]) == (shared, same)
    assert same < shared / 2  # visibly different strategies: they agree on a minority of prompts
    assert manifest["pair_agreement"]["max_margin"]["best_of_n2"] == pytest.approx(same / shared)
    # and the pairs themselves: best_of_n2 is closer (smaller mean e_Δ), max_margin has the larger margin
    stats = {n: manifest["configs"][n]["stats"] for n in ("best_of_n2", "max_margin")}
    assert stats["best_of_n2"]["edit_distance"]["mean"] < stats["max_margin"]["edit_distance"]["mean"]
    assert stats["best_of_n2"]["reward_margin"]["mean"] <= stats["max_margin"]["reward_margin"]["mean"]


def test_printed_summary_fits_110_columns_and_card_shows_the_method(run):
    stdout, manifest = run["stdout"], run["manifest"]
    # every line but the one naming the (temporary, arbitrarily long) release folder
    assert max(len(line) for line in stdout.splitlines() if "release written to" not in line) <= 110
    for name in DEFAULT_STRATEGIES:
        line = next(line for line in stdout.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == str(manifest["configs"][name]["rows"])
    assert "same pair as best_of_n2" in stdout and "top chosen" in stdout
    assert "generator ranking measured on these candidates" in stdout
    card = (run["folder"] / "README.md").read_text(encoding="utf-8")
    assert "## Generator ranking (measured)" in card and "## How the strategies differ" in card
    assert "Screened out by `ScreenResponses`" in card and "ranking **measured**" in card
    for a in manifest["generator_accuracy"]:
        assert f"`{a['generator']}` | {a['responses']} | {100 * a['prompt_level']:.1f} [" in card
    assert (run["folder"] / manifest["plot"]).is_file()


def test_generator_ranking_values_are_checked_before_running(tmp_path):
    from hfpref.pipeline.recipe import Recipe, RecipeError

    def recipe(ranking, steps=("IFEvalVerifier", "PairMetrics"), input_=None):
        raw = {
            "input": input_ or {"default": "ifeval"},
            "steps": [{"step": s} for s in steps],
            "pairs": {"strategies": ["ds_fix"], "config": {"generator_ranking": ranking}},
        }
        return Recipe.from_dict(raw)

    assert recipe("measured").pairs.ranking_source == "measured"
    assert recipe(["gpt-4-20231107", "text-bison-001"]).pairs.ranking_source == "given"
    with pytest.raises(RecipeError, match="expected 'measured'.*got 'best'"):
        recipe("best")
    # measured needs verdicts: rewarded candidates without IFEval verdicts fail in preflight
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0], "generators": ["x", "y"]})
    )
    without = recipe("measured", steps=(), input_={"path": str(rows)})
    with pytest.raises(RecipeError, match="'measured' ranks generators by their IFEval accuracy"):
        without.run(cache_dir=tmp_path / "cache", progress=False)
