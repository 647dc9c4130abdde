"""The instruction-following recipe (dataset_scripts/instruction_following_cpu.yaml), run by `hfpref curate`
on the tiny model.

The tiny model's responses are gibberish that meets few constraints, so a step registered for the test
appends two hand-written responses to every prompt: one built to meet all of the prompt's constraints and
one that meets only a title constraint. Their correctness is known by hand (and checked against lm-eval's
own grading); the pairs are then checked against expectations computed from the candidates, and the MCTS
pairs against MCTSPairGenerator run directly on the constrained prompts.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from hfpref.cli.main import main
from hfpref.core.step import Batch, Step, StepConfig
from hfpref.pipeline import recipe as recipe_module
from hfpref.release import load_release, read_manifest

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_scripts"
PAPER_RECIPE = SCRIPTS / "instruction_following.yaml"
CPU_RECIPE = SCRIPTS / "instruction_following_cpu.yaml"
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
MAKER_CONFIGS = ["rs_high_contrast", "rs_low_contrast", "mcts_shared_prefix"]
PAIR_CONFIGS = ["max_margin", *MAKER_CONFIGS, "rs_mixed_contrast"]


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


def cpu_recipe(seeds_file: Path, policy: str, folder: Path) -> dict:
    """instruction_following_cpu.yaml with the tiny policy, the test's seeds, constraint kinds and low
    threshold, and the hand-written responses appended after sampling."""
    raw = yaml.safe_load(CPU_RECIPE.read_text(encoding="utf-8"))
    raw["input"] = {"path": str(seeds_file)}
    steps = {s["step"]: s for s in raw["steps"]}
    steps["ConstrainedPrompts"]["config"]["kinds"] = KINDS
    steps["ResponseSampler"]["config"]["model"] = policy
    steps["PairMetrics"]["config"]["tokenizer"] = policy
    raw["steps"].insert(2, {"step": "AppendHandWritten", "config": {}})
    for maker in raw["pairs"]["makers"]:
        if maker["step"] == "ContrastPairs":
            maker["config"]["low_max_gap"] = LOW_MAX_GAP
        else:
            maker["config"]["model"] = policy
    raw["output"] = {"folder": str(folder / "release"), "name": "if-test", "version": "0.0.1"}
    return raw


def curate(*args: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["curate", *args, "--no-progress"])
    assert code == 0, err.getvalue()


@pytest.fixture(scope="module")
def patch_registry():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(recipe_module.STEP_REGISTRY, "AppendHandWritten", f"{__name__}:AppendHandWritten")
        yield


@dataclasses.dataclass
class Run:
    folder: Path
    release: Path
    seeds_file: Path
    raw: dict
    manifest: dict
    candidates: object

    def pairs(self, name: str):
        return load_release(self.release, name)

    def dropped(self, name: str) -> collections.Counter:
        return collections.Counter(self.manifest["configs"][name]["dropped"])


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory, patch_registry) -> Run:
    folder = tmp_path_factory.mktemp("instruction-following")
    seeds_file = folder / "seeds.jsonl"
    seeds_file.write_text("".join(json.dumps({"id": i, "prompt": s}) + "\n" for i, s in enumerate(SEEDS)))
    raw = cpu_recipe(seeds_file, str(tiny_models["policy"]), folder)
    recipe_file = folder / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    curate(str(recipe_file), "--cache-dir", str(folder / "cache"))
    release = folder / "release"
    return Run(folder, release, seeds_file, raw, read_manifest(release), load_release(release, "candidates"))


def key(prompt) -> str:
    """A hashable key of a prompt: the sampler writes back a chat-templated prompt as messages."""
    return json.dumps(prompt, sort_keys=True)


def text(completion) -> str:
    """A pair's chosen/rejected text (conversational pairs hold one assistant message)."""
    return completion if isinstance(completion, str) else completion[0]["content"]


def usable_correctness(row: dict) -> dict[str, float]:
    """text -> correctness of the row's non-empty responses (equal texts score alike)."""
    return {t: c for t, c in zip(row["responses"], row["correctness"], strict=True) if t.strip()}


def test_candidates_have_the_prompts_samples_and_known_correctness(run, tiny_models):
    candidates = run.candidates
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
    pairs = run.pairs("rs_high_contrast")
    assert run.dropped("rs_high_contrast") == collections.Counter()
    assert len(pairs) == len(SEEDS)
    by_prompt = {key(row["prompt"]): row for row in run.candidates}
    for pair in pairs:
        scores = usable_correctness(by_prompt[key(pair["prompt"])])
        worst = min(scores.values())
        assert (pair["chosen_correctness"], pair["rejected_correctness"]) == (1.0, worst)
        assert pair["contrast"] == pytest.approx(1.0 - worst) and pair["contrast_level"] == "high"
        assert scores[text(pair["chosen"])] == 1.0 and scores[text(pair["rejected"])] == worst
        assert pair["pair_strategy"] == "rs_high_contrast"
        assert pair["difficulty"] == len(pair["instruction_id_list"])
        assert pair["reward_margin"] == pytest.approx(pair["contrast"])


def test_low_contrast_pairs_and_drop_reasons_match_a_brute_force_count(run):
    expected_pairs, expected_drops = {}, collections.Counter()
    for row in run.candidates:
        scores = usable_correctness(row)
        low = [(a, b) for a in scores.values() for b in scores.values() if 0 < a - b <= LOW_MAX_GAP + 1e-9]
        if low:
            best = max(a for a, _ in low)
            expected_pairs[key(row["prompt"])] = (best, max(b for a, b in low if a == best))  # smallest gap
        else:
            expected_drops["no_low_contrast_pair"] += 1
    pairs = run.pairs("rs_low_contrast")
    assert run.dropped("rs_low_contrast") == expected_drops
    got = {key(p["prompt"]): (p["chosen_correctness"], p["rejected_correctness"]) for p in pairs}
    assert got == expected_pairs
    assert set(pairs["contrast_level"]) <= {"low"}
    # k = 2 prompts cannot have a gap of 1/3 or less: every one of them is dropped
    k2 = sum(1 for d in run.candidates["difficulty"] if d == 2)
    assert expected_drops["no_low_contrast_pair"] >= k2 >= 1
    assert len(pairs) >= 1, "the seeds were picked so that some prompt has a low-contrast pair"


def test_max_margin_config_and_the_mix(run):
    by_prompt = {key(row["prompt"]): row for row in run.candidates}
    for pair in run.pairs("max_margin"):
        rewards = by_prompt[key(pair["prompt"])]["rewards"]
        assert pair["reward_chosen"] == max(rewards) == 1.0
    high, low = run.pairs("rs_high_contrast"), run.pairs("rs_low_contrast")
    mixed = run.pairs("rs_mixed_contrast")
    # ratio 1/2 at the largest size the levels allow: every low pair, and as many high (one more if any)
    expected_high = min(len(high), len(low) + 1)
    assert collections.Counter(mixed["contrast_level"]) == {"high": expected_high, "low": len(low)}
    assert len(mixed) == expected_high + len(low)
    pool = {key([p["prompt"], p["chosen"], p["rejected"]]) for p in [*high, *low]}
    assert {key([p["prompt"], p["chosen"], p["rejected"]]) for p in mixed} <= pool
    assert "drop_reason" not in mixed.column_names


def test_mcts_pairs_are_the_makers_own_on_the_constrained_prompts(run, tiny_models):
    """source: prompts = the rows before ResponseSampler: MCTSPairGenerator run by hand on
    ConstrainedPrompts' output gives the same pairs, columns and drop reasons."""
    import datasets

    from hfpref.steps.constraints import ConstrainedPrompts, ConstraintConfig
    from hfpref.steps.mcts import MCTSConfig, MCTSPairGenerator
    from hfpref.steps.selection import split_dropped

    makers = {m["name"]: m for m in run.raw["pairs"]["makers"]}
    steps = {s["step"]: s for s in run.raw["steps"]}
    seeds = datasets.Dataset.from_list([{"id": i, "prompt": s} for i, s in enumerate(SEEDS)])
    prompts = ConstrainedPrompts(ConstraintConfig(**steps["ConstrainedPrompts"]["config"])).apply(seeds)
    assert "responses" not in prompts.column_names
    maker = MCTSPairGenerator(MCTSConfig(**makers["mcts_shared_prefix"]["config"]))
    expected, expected_drops = split_dropped(maker.apply(prompts))
    got = run.pairs("mcts_shared_prefix")
    assert got.column_names == expected.column_names  # no candidates column (responses, unit) carried
    assert got.to_list() == expected.to_list()
    assert run.dropped("mcts_shared_prefix") == expected_drops
    assert len(got) + sum(expected_drops.values()) == len(SEEDS)  # one pair or one drop per prompt
    assert set(got["pair_strategy"]) <= {"mcts_shared_prefix"}
    assert all(c != r for c, r in zip(got["chosen"], got["rejected"], strict=True))


def test_release_holds_every_config_with_its_counts(run):
    manifest = run.manifest
    assert list(manifest["configs"]) == [*PAIR_CONFIGS, "candidates"]
    assert manifest["recipe"]["pairs"]["strategies"] == ["max_margin"]
    for name in PAIR_CONFIGS:
        assert len(run.pairs(name)) == manifest["configs"][name]["rows"]
    for name in ("rs_high_contrast", "rs_low_contrast"):
        assert manifest["configs"][name]["made_by"] == {
            "kind": "maker",
            "step": "ContrastPairs",
            "source": "candidates",
        }
        assert manifest["pair_selection"][name]["config"]["mode"] == name.split("_")[1]
    assert manifest["configs"]["mcts_shared_prefix"]["made_by"]["source"] == "prompts"
    assert manifest["configs"]["rs_mixed_contrast"]["made_by"] == {
        "kind": "mix",
        "from": ["rs_high_contrast", "rs_low_contrast"],
    }
    assert "made_by" not in manifest["configs"]["max_margin"]
    mix = manifest["pair_selection"]["rs_mixed_contrast"]
    assert mix["step"] == "hfpref.steps.contrast.mix_contrast"
    assert mix["config"]["size"] == len(run.pairs("rs_mixed_contrast"))
    assert "ConstrainedPrompts" in {s["step"].rsplit(".", 1)[-1] for s in manifest["steps"]}
    card = (run.release / "README.md").read_text(encoding="utf-8")
    assert "| `mcts_shared_prefix` | `hfpref.steps.mcts.MCTSPairGenerator` | prompts |" in card
    assert "| `rs_mixed_contrast` | `rs_high_contrast`, `rs_low_contrast` | 0.5 |" in card


def test_the_cards_recipe_reruns_to_the_same_release(run):
    card = (run.release / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### The recipe as run\n\n```yaml\n(.*?)```", card, re.S).group(1)
    rerun = yaml.safe_load(block)
    assert rerun["pairs"] == run.raw["pairs"]
    recipe_file = run.folder / "from_card.yaml"
    recipe_file.write_text(block, encoding="utf-8")
    again = run.folder / "again"
    curate(str(recipe_file), "--output", str(again), "--cache-dir", str(run.folder / "cache"))
    for name in [*PAIR_CONFIGS, "candidates"]:
        path = f"data/{name}/train-00000-of-00001.parquet"
        assert (again / path).read_bytes() == (run.release / path).read_bytes(), name


def test_paper_recipe_builds_every_config():
    recipe = recipe_module.Recipe.from_yaml(PAPER_RECIPE)  # validates every step, maker and mix
    assert [s.step for s in recipe.steps] == [
        "ConstrainedPrompts",
        "ResponseSampler",
        "IFEvalVerifier",
        "PairMetrics",
    ]
    policy = "meta-llama/Llama-2-7b-chat-hf"
    assert recipe.steps[1].config["model"] == policy
    steps = [spec.build(i) for i, spec in enumerate(recipe.steps)]
    assert recipe.prompts_index(steps) == 1  # MCTS searches from the constrained prompts
    makers = {spec.name: spec.build(i) for i, spec in enumerate(recipe.pairs.makers)}
    assert list(makers) == MAKER_CONFIGS
    assert (makers["rs_high_contrast"].config.mode, makers["rs_low_contrast"].config.mode) == ("high", "low")
    mcts = makers["mcts_shared_prefix"]
    assert (mcts.config.model, mcts.config.lambda_self_eval) == (policy, 0.2)
    assert recipe.pairs.makers[2].source == "prompts"
    (mix,) = recipe.pairs.mixes
    assert (mix.from_, mix.ratio_high, mix.stratify) == (
        ["rs_high_contrast", "rs_low_contrast"],
        0.5,
        "difficulty",
    )


def test_cpu_recipe_is_the_paper_recipe_scaled_down(tmp_path):
    paper, cpu = (yaml.safe_load(p.read_text(encoding="utf-8")) for p in (PAPER_RECIPE, CPU_RECIPE))
    assert [s["step"] for s in cpu["steps"]] == [s["step"] for s in paper["steps"]]
    assert [m["name"] for m in cpu["pairs"]["makers"]] == [m["name"] for m in paper["pairs"]["makers"]]
    assert [m["name"] for m in cpu["pairs"]["mixes"]] == [m["name"] for m in paper["pairs"]["mixes"]]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"prompt": SEEDS[0]}) + "\n", encoding="utf-8")
    # what `hfpref curate instruction_following_cpu.yaml --input seeds.jsonl` runs
    recipe = recipe_module.Recipe.from_yaml(CPU_RECIPE).with_overrides(
        input=recipe_module.InputSpec.from_cli(str(seeds))
    )
    assert recipe.input.path == str(seeds) and recipe.pairs.to_dict() == cpu["pairs"]
