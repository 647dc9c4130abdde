"""The instruction-following recipe (dataset_scripts/instruction_following.py), CPU-sized, on the tiny model.

The tiny model's responses are gibberish that meets few constraints, so a step registered for the test
appends two hand-written responses to every prompt: one built to meet all of the prompt's constraints and
one that meets only a title constraint. Their correctness is known by hand (and checked against lm-eval's
own grading); the pairs are then checked against expectations computed from the candidates.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from hfpref import recipe as recipe_module
from hfpref.release import load_release, read_manifest, write_release
from hfpref.transform import Batch, Step, StepConfig

SCRIPT = Path(__file__).resolve().parents[1] / "dataset_scripts" / "instruction_following.py"
KINDS = [
    "punctuation:no_comma",
    "detectable_format:title",
    "detectable_content:postscript",
    "startend:end_checker",
    "detectable_format:number_highlighted_sections",
]
SEEDS = [
    "Write a short note to a neighbour about a lost cat.",
    "Describe the water cycle for a school newsletter.",
    "Give advice to someone starting to run.",
    "Summarise the plot of a fairy tale you like.",
    "Explain what a library card is good for.",
    "Write a product description for a wooden chair.",
]
PARTIAL = "<<A title>>, with a comma"  # meets a title constraint and nothing else of KINDS
LOW_MAX_GAP = 0.34  # with k = 3, one constraint apart (1/3) is low contrast; 2/3 and 1 are high


def oracle_response(ids: list[str], kwargs: list[dict]) -> str:
    """A response meeting every constraint of KINDS the prompt carries (end phrase last, no commas)."""
    args = dict(zip(ids, kwargs, strict=True))
    lines = []
    if "detectable_format:title" in args:
        lines.append("<<An answer>>")
    lines.append("Here is my answer.")
    if "detectable_format:number_highlighted_sections" in args:
        lines += [
            f"*point {i}*"
            for i in range(args["detectable_format:number_highlighted_sections"]["num_highlights"])
        ]
    if "detectable_content:postscript" in args:
        lines.append(f"{args['detectable_content:postscript']['postscript_marker']} This is a postscript.")
    if "startend:end_checker" in args:
        lines.append(args["startend:end_checker"]["end_phrase"])
    return "\n".join(lines)


@dataclasses.dataclass
class HandWrittenConfig(StepConfig):
    pass


class AppendHandWritten(Step):
    """Appends the oracle and the partial response (and their generator names) to every row."""

    config_class: ClassVar[type[StepConfig]] = HandWrittenConfig

    def input_columns(self) -> list[str]:
        return ["responses", "generators", "instruction_id_list", "kwargs"]

    def output_columns(self) -> list[str]:
        return ["responses", "generators"]

    def process(self, batch: Batch, rank, indices) -> Batch:
        rows = zip(
            batch["responses"],
            batch["generators"],
            batch["instruction_id_list"],
            batch["kwargs"],
            strict=True,
        )
        out: Batch = {"responses": [], "generators": []}
        for responses, generators, ids, kwargs in rows:
            out["responses"].append([*responses, oracle_response(ids, kwargs), PARTIAL])
            out["generators"].append([*generators, "hand-written-oracle", "hand-written-partial"])
        return out


def load_script():
    spec = importlib.util.spec_from_file_location("instruction_following_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def run(script, tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("instruction-following")
    seeds_file = folder / "seeds.jsonl"
    seeds_file.write_text("".join(json.dumps({"id": i, "prompt": s}) + "\n" for i, s in enumerate(SEEDS)))
    settings = dataclasses.replace(
        script.CPU,
        input={"path": str(seeds_file)},
        policy=str(tiny_models["policy"]),
        constraints={"k_choices": [2, 3], "seed": 0, "kinds": KINDS},
        extra_steps=[{"step": "AppendHandWritten", "config": {}}],
        contrast={"high_min_gap": 0.5, "low_max_gap": LOW_MAX_GAP, "max_pairs_per_prompt": 1, "seed": 0},
        mcts=None,  # MCTS pairs are hfpref.mcts's, tested there
        output={"folder": str(folder / "release"), "name": "if-test", "version": "0.0.1"},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(recipe_module.STEP_REGISTRY, "AppendHandWritten", f"{__name__}:AppendHandWritten")
        result = script.run(settings, cache_dir=folder / "cache", progress=False)
    release = write_release(result, created_at="2026-01-01T00:00:00+00:00")
    return result, release


def usable_correctness(row: dict) -> dict[str, float]:
    """text -> correctness of the row's non-empty responses (equal texts score alike)."""
    return {t: c for t, c in zip(row["responses"], row["correctness"], strict=True) if t.strip()}


def test_candidates_have_the_prompts_samples_and_known_correctness(run, tiny_models):
    result, _ = run
    candidates = result.candidates
    assert len(candidates) == len(SEEDS)
    assert candidates["seed_prompt"] == SEEDS and candidates["id"] == list(range(len(SEEDS)))
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval.utils import process_results

    for row in candidates:
        ids = row["instruction_id_list"]
        assert row["difficulty"] == len(ids) and len(ids) in (2, 3) and set(ids) <= set(KINDS)
        assert row["generators"] == [str(tiny_models["policy"])] * 4 + [
            "hand-written-oracle",
            "hand-written-partial",
        ]
        assert len(row["correctness"]) == 6
        assert row["correctness"][4] == 1.0
        assert row["correctness"][5] == ("detectable_format:title" in ids) / len(ids)
        assert row["rewards"] == row["correctness"]  # strict IFEval rewards
        saved, DetectorFactory.seed = DetectorFactory.seed, 0
        try:  # lm-eval's own grading agrees on the hand-written responses
            for j in (4, 5):
                doc = {"key": row["id"], **{k: row[k] for k in ("prompt", "instruction_id_list", "kwargs")}}
                verdicts = process_results(doc, [row["responses"][j]])["inst_level_strict_acc"]
                assert sum(verdicts) / len(verdicts) == row["correctness"][j]
        finally:
            DetectorFactory.seed = saved
    assert set(candidates["difficulty"]) == {2, 3}


def test_high_contrast_pairs_are_oracle_versus_worst(run):
    result, _ = run
    pairs = result.pairs["rs_high_contrast"]
    assert result.dropped["rs_high_contrast"] == collections.Counter()
    assert len(pairs) == len(SEEDS)
    by_prompt = {row["prompt"]: row for row in result.candidates}
    for pair in pairs:
        scores = usable_correctness(by_prompt[pair["prompt"]])
        worst = min(scores.values())
        assert (pair["chosen_correctness"], pair["rejected_correctness"]) == (1.0, worst)
        assert pair["contrast"] == pytest.approx(1.0 - worst) and pair["contrast_level"] == "high"
        assert scores[pair["chosen"]] == 1.0 and scores[pair["rejected"]] == worst
        assert pair["pair_strategy"] == "rs_high_contrast"
        assert pair["difficulty"] == len(pair["instruction_id_list"])
        assert pair["reward_margin"] == pytest.approx(pair["contrast"])


def test_low_contrast_pairs_and_drop_reasons_match_a_brute_force_count(run):
    result, _ = run
    expected_pairs, expected_drops = {}, collections.Counter()
    for row in result.candidates:
        scores = usable_correctness(row)
        low = [(a, b) for a in scores.values() for b in scores.values() if 0 < a - b <= LOW_MAX_GAP + 1e-9]
        if low:
            best = max(a for a, _ in low)
            expected_pairs[row["prompt"]] = (best, max(b for a, b in low if a == best))  # smallest gap
        else:
            expected_drops["no_low_contrast_pair"] += 1
    pairs = result.pairs["rs_low_contrast"]
    assert result.dropped["rs_low_contrast"] == expected_drops
    got = {p["prompt"]: (p["chosen_correctness"], p["rejected_correctness"]) for p in pairs}
    assert got == expected_pairs
    assert set(pairs["contrast_level"]) <= {"low"}
    # k = 2 prompts cannot have a gap of 1/3 or less: every one of them is dropped
    k2 = sum(1 for d in result.candidates["difficulty"] if d == 2)
    assert expected_drops["no_low_contrast_pair"] >= k2 >= 1
    assert len(pairs) >= 1, "the seeds were picked so that some prompt has a low-contrast pair"


def test_max_margin_config_and_the_mix(run):
    result, _ = run
    by_prompt = {row["prompt"]: row for row in result.candidates}
    for pair in result.pairs["max_margin"]:
        rewards = by_prompt[pair["prompt"]]["rewards"]
        assert pair["reward_chosen"] == max(rewards) == 1.0
    high, low = len(result.pairs["rs_high_contrast"]), len(result.pairs["rs_low_contrast"])
    mixed = result.pairs["rs_mixed_contrast"]
    # ratio 1/2 at the largest size the levels allow: every low pair, and as many high (one more if any)
    expected_high = min(high, low + 1)
    assert collections.Counter(mixed["contrast_level"]) == {"high": expected_high, "low": low}
    assert len(mixed) == expected_high + low


def test_release_holds_every_config_with_its_counts(run):
    result, release = run
    manifest = read_manifest(release)
    assert set(manifest["configs"]) == {
        "max_margin",
        "rs_high_contrast",
        "rs_low_contrast",
        "rs_mixed_contrast",
        "candidates",
    }
    for name, pairs in result.pairs.items():
        loaded = load_release(release, name)
        assert len(loaded) == len(pairs) == manifest["configs"][name]["rows"]
        assert loaded["chosen"] == pairs["chosen"]
    assert manifest["configs"]["rs_low_contrast"]["dropped"] == dict(result.dropped["rs_low_contrast"])
    assert manifest["pair_selection"]["rs_mixed_contrast"]["config"]["size"] == len(
        result.pairs["rs_mixed_contrast"]
    )
    candidates = load_release(release, "candidates")
    assert candidates["kwargs"] == result.candidates["kwargs"]
    assert "ConstrainedPrompts" in {s["step"].rsplit(".", 1)[-1] for s in manifest["steps"]}


def test_paper_settings_build_every_config(script):
    recipe = recipe_module.Recipe.from_dict(script.candidate_recipe(script.PAPER))  # validates every step
    assert [s.step for s in recipe.steps] == [
        "ConstrainedPrompts",
        "ResponseSampler",
        "IFEvalVerifier",
        "PairMetrics",
    ]
    assert recipe.steps[1].config["model"] == "meta-llama/Llama-2-7b-chat-hf"
    from hfpref.contrast import ContrastConfig

    ContrastConfig(mode="high", **script.PAPER.contrast)
    mcts = pytest.importorskip("hfpref.mcts")  # built in parallel; its own tests cover the search
    assert mcts.MCTSConfig(model=script.PAPER.policy, **script.PAPER.mcts).lambda_self_eval == 0.2


def test_command_line_settings(script):
    args = script.build_parser().parse_args(
        ["--size", "cpu", "--model", "m", "--input", "s.jsonl", "--no-mcts"]
    )
    settings = script.settings_from_args(args)
    assert (settings.policy, settings.input, settings.mcts) == ("m", {"path": "s.jsonl"}, None)
    with pytest.raises(SystemExit, match="--model is required"):
        script.settings_from_args(script.build_parser().parse_args(["--size", "cpu"]))
