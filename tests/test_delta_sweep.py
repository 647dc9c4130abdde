"""Generator-delta sweeps, measured capabilities and sample-delta filters, against hand-computed values."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import pytest
import yaml

from hfpref.core.errors import UserError
from hfpref.pipeline.recipe import Recipe, RecipeError
from hfpref.release import read_manifest
from hfpref.release.writer import write_release
from hfpref.steps.delta_sweep import SweepError, level_pairs, plan_sweep, sweep_analysis
from hfpref.steps.generator_delta import GeneratorDeltaTagger, measure_capabilities
from hfpref.steps.judges.backends import Completion, JudgeBackend

# Three generators over six prompts. Row 2 lost mid's response (None: a failed call), row 3 lost small's
# (screened out: gone from the row), row 5 has no response of big (the chosen generator).
ROWS = [
    {"prompt": "p0", "responses": ["big0", "mid0", "small0"], "generators": ["big", "mid", "small"], "rewards": [1.0, 0.5, 0.0]},
    {"prompt": "p1", "responses": ["big1", "mid1", "small1"], "generators": ["big", "mid", "small"], "rewards": [0.5, 0.5, 1.0]},
    {"prompt": "p2", "responses": ["big2", None, "small2"], "generators": ["big", "mid", "small"], "rewards": [1.0, None, 0.0]},
    {"prompt": "p3", "responses": ["big3", "mid3"], "generators": ["big", "mid"], "rewards": [1.0, 0.0]},
    {"prompt": "p4", "responses": ["big4", "mid4", "small4"], "generators": ["big", "mid", "small"], "rewards": [1.0, 0.5, 0.0]},
    {"prompt": "p5", "responses": [None, "mid5", "small5"], "generators": ["big", "mid", "small"], "rewards": [None, 1.0, 0.5]},
]  # fmt: skip
# by hand: mean reward of big (1 + .5 + 1 + 1 + 1) / 5, mid (.5 + .5 + 0 + .5 + 1) / 5, small (0 + 1 + 0 + 0 + .5) / 5
MEAN_REWARD = {"big": 0.9, "mid": 0.5, "small": 0.3}
# judge: every dimension of a response gets this score, so its overall score is the same number
SCORES = {
    "big0": 8,
    "big1": 6,
    "big4": 9,
    "mid0": 5,
    "mid1": 6,
    "mid4": 7,
    "small0": 2,
    "small1": 7,
    "small4": 1,
}


class ScoreJudge(JudgeBackend):
    """Replies with the score SCORES gives the judged response, on every dimension."""

    def generate(self, conversations):
        for i, messages in enumerate(conversations):
            response = re.search(r"<response>\n(.*)\n</response>", messages[-1]["content"], re.DOTALL).group(
                1
            )
            s = SCORES[response]
            yield (
                i,
                Completion(
                    f'{{"correctness": {s}, "logical_soundness": {s}, "clarity": {s}, "completeness": {s}}}'
                ),
            )


def candidates() -> datasets.Dataset:
    return datasets.Dataset.from_list(ROWS)


def test_plan_intersects_prompts_and_draws_one_seeded_subset():
    plan = plan_sweep(candidates(), name="s", chosen="big", rejected=["mid", "small"])
    assert plan.rows == [0, 1, 4] and plan.common == 3  # every generator answered only p0, p1, p4
    assert plan.excluded == {"missing_prompt": 0, "missing_chosen": 1, "missing_rejected": 2}
    assert [level.name for level in plan.levels] == ["s-vs-mid", "s-vs-small"]
    drawn = plan_sweep(candidates(), name="s", chosen="big", rejected=["mid", "small"], size=2, seed=3)
    assert len(drawn.rows) == 2 and set(drawn.rows) <= {0, 1, 4} and drawn.rows == sorted(drawn.rows)
    again = plan_sweep(candidates(), name="s", chosen="big", rejected=["mid", "small"], size=2, seed=3)
    assert again.rows == drawn.rows  # seeded
    seeds = {
        tuple(plan_sweep(candidates(), name="s", chosen="big", rejected=["mid"], size=1, seed=k).rows)
        for k in range(20)
    }
    assert len(seeds) > 1  # the seed decides the draw
    with pytest.raises(SweepError, match="size 4 is more than the 3 prompts"):
        plan_sweep(candidates(), name="s", chosen="big", rejected=["mid", "small"], size=4)
    with pytest.raises(SweepError, match=r"generator\(s\) \['huge'\] wrote no response"):
        plan_sweep(candidates(), name="s", chosen="huge", rejected=["mid"])


def test_level_pairs_keep_the_generator_direction_with_ties_and_inversions():
    plan = plan_sweep(candidates(), name="s", chosen="big", rejected=["mid", "small"])
    mid, small = (level_pairs(candidates(), plan, level, MEAN_REWARD) for level in plan.levels)
    assert mid["prompt"] == small["prompt"] == ["p0", "p1", "p4"]  # the same prompts at every level
    assert mid["chosen"] == small["chosen"] == ["big0", "big1", "big4"]
    assert mid["rejected"] == ["mid0", "mid1", "mid4"] and small["rejected"] == ["small0", "small1", "small4"]
    assert mid["reward_margin"] == [0.5, 0.0, 0.5]  # p1 is a tie, kept
    assert small["reward_margin"] == [1.0, -0.5, 1.0]  # p1 is an inversion, kept
    assert mid["chosen_index"] == [0, 0, 0] and small["rejected_index"] == [2, 2, 2]
    assert all(math.isclose(d, 0.4) for d in mid["generator_delta"])
    assert all(math.isclose(d, 0.6) for d in small["generator_delta"])
    assert small["sweep_level"] == ["s-vs-small"] * 3 and small["same_source"] == [False] * 3
    # a level's fingerprint follows its content (so a judge step after it is cached), not the call
    again = level_pairs(candidates(), plan, plan.levels[1], MEAN_REWARD)
    assert again._fingerprint == small._fingerprint != mid._fingerprint
    assert (
        level_pairs(candidates(), plan, plan.levels[1], {"big": 1.0, "small": 0.0})._fingerprint
        != small._fingerprint
    )

    analysis = sweep_analysis({"s-vs-mid": mid, "s-vs-small": small})
    rows = {r["config"]: r for r in analysis["levels"]}
    assert math.isclose(rows["s-vs-mid"]["reward_margin_mean"], 1 / 3)
    assert (rows["s-vs-mid"]["reward_ties"], rows["s-vs-mid"]["reward_inversions"]) == (1, 0)
    assert math.isclose(rows["s-vs-small"]["reward_margin_mean"], 0.5)
    assert (rows["s-vs-small"]["reward_ties"], rows["s-vs-small"]["reward_inversions"]) == (0, 1)
    assert analysis["spearman_reward_margin_mean"] is None  # two levels: no correlation


def test_spearman_across_levels():
    def level(delta, margin):
        return datasets.Dataset.from_dict({"generator_delta": [delta], "reward_margin": [margin]})

    up = sweep_analysis({"a": level(0.1, 0.0), "b": level(0.2, 0.3), "c": level(0.5, 0.4)})
    down = sweep_analysis({"a": level(0.1, 0.9), "b": level(0.2, 0.3), "c": level(0.5, 0.1)})
    assert up["spearman_reward_margin_mean"] == pytest.approx(1.0)
    assert down["spearman_reward_margin_mean"] == pytest.approx(-1.0)


def test_measured_capabilities_by_hand():
    table = measure_capabilities(candidates())  # no IFEval verdicts: the mean reward
    assert table["source"] == "measured" and table["measure"] == "mean_reward"
    assert table["capabilities"] == pytest.approx(MEAN_REWARD)
    assert table["responses"] == {"big": 5, "mid": 5, "small": 5}
    for g, (low, high) in table["intervals"].items():
        assert low <= MEAN_REWARD[g] <= high
    # IFEval verdicts: prompt-level accuracy = share of responses meeting every instruction
    verdicts = datasets.Dataset.from_dict(
        {
            "generators": [["a", "b"], ["a", "b"], ["a", "b"]],
            "ifeval_strict": [[[True, True], [True, False]], [[True], [False]], [[False, True], None]],
        }
    )
    table = measure_capabilities(verdicts)
    assert table["measure"] == "ifeval_prompt_level"
    assert table["capabilities"] == pytest.approx({"a": 2 / 3, "b": 0.0})  # b's None is not graded
    assert table["responses"] == {"a": 3, "b": 2}
    instruction = measure_capabilities(verdicts, measure="ifeval_instruction_level")
    assert instruction["capabilities"] == pytest.approx({"a": 4 / 5, "b": 1 / 3})


def test_tagger_measured_or_given():
    tagger = GeneratorDeltaTagger.measured(candidates())
    assert tagger.config.capability_source == "measured" and tagger.config.capability_name == "mean_reward"
    out = tagger({"chosen_generator": ["big"], "rejected_generator": ["small"]})
    assert out["generator_delta"][0] == pytest.approx(0.6)
    given = GeneratorDeltaTagger(capabilities={"big": 3.0, "small": 1.0})
    assert given.config.capability_source == "given"
    with pytest.raises(UserError, match="measured on the candidates before the step runs"):
        GeneratorDeltaTagger()({"chosen_generator": ["big"], "rejected_generator": ["small"]})


def recipe_dict(tmp_path: Path) -> dict:
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    judge = {"model": "score-judge", "backend": f"{__name__}:ScoreJudge", "cache_dir": str(tmp_path / "jc")}
    return {
        "input": {"path": str(path)},
        "pairs": {
            "strategies": [],
            "sweeps": [
                {"name": "scale", "chosen": "big", "rejected": ["mid", "small"],
                 "steps": [{"step": "QualityJudge", "config": {"judge": judge}}]},
            ],
            "filters": [
                {"name": "small_top", "from": "scale-vs-small", "top_fraction": 0.34},
                {"name": "mid_at_least_2", "from": "scale-vs-mid", "threshold": 2.0},
            ],
        },
        "output": {"folder": str(tmp_path / "release"), "name": "sweep-test"},
    }  # fmt: skip


def test_recipe_sweep_with_judge_and_filters_writes_the_analysis(tmp_path):
    recipe = Recipe.from_dict(recipe_dict(tmp_path))
    result = recipe.run(cache_dir=tmp_path / "cache", progress=False)
    assert list(result.pairs) == ["scale-vs-mid", "scale-vs-small", "small_top", "mid_at_least_2"]
    assert result.pairs["scale-vs-mid"]["sample_delta"] == [3.0, 0.0, 2.0]  # 8-5, 6-6, 9-7
    assert result.pairs["scale-vs-small"]["sample_delta"] == [6.0, -1.0, 8.0]
    assert result.pairs["small_top"]["prompt"] == ["p4"]  # floor(0.34 * 3) = 1 largest delta
    assert result.pairs["mid_at_least_2"]["prompt"] == ["p0", "p4"]
    assert (
        result.filters["mid_at_least_2"]["kept"] == 2 and result.filters["mid_at_least_2"]["source_rows"] == 3
    )
    assert result.dropped["scale-vs-mid"] == {"missing_chosen": 1, "missing_rejected": 2}

    folder = write_release(result)
    manifest = read_manifest(folder)
    sweep = manifest["delta_sweeps"]["scale"]
    assert sweep["capabilities"]["source"] == "measured"
    assert sweep["capabilities"]["capabilities"] == pytest.approx(MEAN_REWARD)
    levels = {r["config"]: r for r in sweep["analysis"]["levels"]}
    assert levels["scale-vs-mid"]["sample_delta_mean"] == pytest.approx(5 / 3)
    assert levels["scale-vs-small"]["sample_delta_mean"] == pytest.approx(13 / 3)
    assert manifest["configs"]["scale-vs-small"]["made_by"] == {
        "kind": "sweep", "sweep": "scale", "chosen": "big", "rejected": "small"
    }  # fmt: skip
    assert manifest["sample_delta_stats"]["small_top"]["count"] == 1
    assert set(manifest["delta_plots"].values()) <= set(manifest["files"])
    card = (folder / "README.md").read_text()
    assert "## Generator-delta sweeps" in card and "![Distribution of the sample delta" in card
    assert "| `mid_at_least_2` | `scale-vs-mid` | `sample_delta` ≥ 2.0 | 2 of 3 (66.7%)" in card
    # the release loads level by level with the same prompts
    loaded = [
        datasets.load_dataset(str(folder), name=n, split="train") for n in ("scale-vs-mid", "scale-vs-small")
    ]
    assert loaded[0]["prompt"] == loaded[1]["prompt"]


def test_sweep_and_filter_specs_are_checked(tmp_path):
    raw = recipe_dict(tmp_path)
    raw["pairs"]["sweeps"][0]["rejected"] = ["mid", "mid"]
    with pytest.raises(
        RecipeError, match=r"pairs.sweeps\[0\] \(scale\).rejected: a generator is named twice"
    ):
        Recipe.from_dict(raw)
    raw = recipe_dict(tmp_path)
    raw["pairs"]["filters"][0] = {"name": "f", "from": "nowhere", "top_fraction": 0.5}
    with pytest.raises(RecipeError, match=r"'nowhere' is not a config made before it"):
        Recipe.from_dict(raw)
    raw = recipe_dict(tmp_path)
    raw["pairs"]["filters"][0] = {"name": "f", "from": "scale-vs-mid", "top_fraction": 0.5, "threshold": 1}
    with pytest.raises(RecipeError, match="exactly one of top_fraction"):
        Recipe.from_dict(raw)
    raw = recipe_dict(tmp_path)
    raw["pairs"]["sweeps"][0]["capabilities"] = {"big": 1.0, "mid": 0.5}
    with pytest.raises(RecipeError, match=r"no capability given for \['small'\]"):
        Recipe.from_dict(raw)


def test_embedded_delta_sweep_recipe(tmp_path):
    """dataset_scripts/delta_sweep.yaml on the embedded ladder: one config per level, matched prompts, and the
    capabilities are the measured generator accuracies the card's ranking shows."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "dataset_scripts" / "delta_sweep.yaml").read_text())
    raw["output"]["folder"] = str(tmp_path / "release")
    result = Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    scale = [n for n in result.pairs if n.startswith("qwen_scale-vs-")]
    family = [n for n in result.pairs if n.startswith("family_7b-vs-")]
    assert len(scale) == 4 and len(family) == 2 and len(result.pairs) == 6
    for group in (scale, family):
        prompts = [result.pairs[n]["key"] for n in group]
        assert all(p == prompts[0] for p in prompts) and len(prompts[0]) > 300
    accuracy = {a["generator"]: a["prompt_level"] for a in result.generator_accuracy}
    for pairs in result.pairs.values():
        row = pairs[0]
        expected = accuracy[row["chosen_generator"]] - accuracy[row["rejected_generator"]]
        assert row["generator_delta"] == pytest.approx(expected)
    margins = [r["reward_margin_mean"] for r in result.sweeps["qwen_scale"]["analysis"]["levels"]]
    assert margins == sorted(margins)  # smaller rejected model, larger mean margin on this data


def test_gpu_sweep_script_validates_and_round_trips():
    path = Path(__file__).parents[1] / "dataset_scripts" / "delta_sweep_gpu.yaml"
    recipe = Recipe.from_yaml(path)  # builds every sweep's QualityJudge config, offline
    assert [s.measure for s in recipe.pairs.sweeps] == ["mean_reward", "mean_reward"]
    assert [type(step).__name__ for step in recipe.pairs.sweeps[0].build_steps(0)] == ["QualityJudge"]
    assert {f.from_ for f in recipe.pairs.filters} <= set(recipe.pairs.sweeps[0].level_names())
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


def test_measured_ranking_tags_every_strategy_with_the_same_capabilities(tmp_path):
    """With generator_ranking: measured, strategy pairs carry generator_delta from the measured accuracies."""
    rows = [
        {"prompt": "q0", "responses": ["a0", "b0"], "generators": ["a", "b"], "rewards": [1.0, 0.0],
         "ifeval_strict": [[True, True], [True, False]]},
        {"prompt": "q1", "responses": ["a1", "b1"], "generators": ["a", "b"], "rewards": [0.0, 1.0],
         "ifeval_strict": [[False], [True]]},
        {"prompt": "q2", "responses": ["a2", "b2"], "generators": ["a", "b"], "rewards": [1.0, 0.5],
         "ifeval_strict": [[True], [False]]},
    ]  # fmt: skip
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "input": {"path": str(path)},
        "pairs": {"strategies": ["max_margin"], "config": {"generator_ranking": "measured"}},
        "output": {"folder": str(tmp_path / "rel"), "name": "tagged"},
    }
    result = Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    pairs = result.pairs["max_margin"]
    # by hand: a meets every instruction on q0 and q2 (2/3), b on q1 only (1/3)
    assert pairs["chosen_generator"] == ["a", "b", "a"]
    assert pairs["generator_delta"] == pytest.approx([1 / 3, -1 / 3, 1 / 3])
    manifest = read_manifest(write_release(result))
    assert manifest["generator_capabilities"]["source"] == "measured"
    assert manifest["generator_capabilities"]["capabilities"] == pytest.approx({"a": 2 / 3, "b": 1 / 3})
