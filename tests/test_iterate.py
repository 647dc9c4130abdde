"""The iterative loop: budget schedules, recipes, and two rounds on the tiny models, interrupted and resumed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
import yaml

from hfpref.cli.main import main
from hfpref.core.stats import largest_remainder
from hfpref.models.hub import content_hash
from hfpref.pipeline import iterate as IT
from hfpref.pipeline.iterate import BudgetSpec, IterateError, IterateRecipe, schedule_weights
from hfpref.pipeline.iterate import loop as LOOP
from hfpref.steps.margins import AnnotationSelector, selection_summary

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_scripts"

# ---- budgets ---------------------------------------------------------------------------------------------


def test_schedules_by_hand():
    assert schedule_weights("constant", 4) == [0.25] * 4
    assert schedule_weights("increasing", 3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert schedule_weights("decreasing", 3) == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    assert schedule_weights([2, 1, 1], 3) == [0.5, 0.25, 0.25]
    with pytest.raises(IterateError, match="3 non-negative weights"):
        schedule_weights([1, 1], 3)
    with pytest.raises(IterateError, match="not one of"):
        schedule_weights("front-loaded", 3)


def test_round_budgets_sum_to_the_total():
    # fraction: F · R · w_r of each round's pairs, so the rounds together annotate F of all pairs
    per_round = BudgetSpec.from_dict({"fraction": 0.5, "schedule": "decreasing"}).per_round(3)
    assert [b["fraction"] for b in per_round] == pytest.approx([0.75, 0.5, 0.25])
    assert sum(b["fraction"] for b in per_round) / 3 == pytest.approx(0.5)
    increasing = BudgetSpec.from_dict({"fraction": 0.3, "schedule": "increasing"}).per_round(2)
    assert [b["fraction"] for b in increasing] == pytest.approx([0.2, 0.4])
    # counts: 10 · (3, 2, 1)/6 = 5, 3.33, 1.67 -> floors 5, 3, 1, the spare one to the largest remainder
    assert BudgetSpec.from_dict({"pairs": 10, "schedule": "decreasing"}).per_round(3) == [
        {"count": 5},
        {"count": 3},
        {"count": 2},
    ]
    assert largest_remainder(7, {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}) == {0: 3, 1: 2, 2: 2}
    with pytest.raises(IterateError, match=r"round\(s\) \[1\].*more than all their pairs"):
        BudgetSpec.from_dict({"fraction": 0.8, "schedule": "decreasing"}).per_round(3)
    with pytest.raises(IterateError, match="exactly one of 'fraction'"):
        BudgetSpec.from_dict({"fraction": 0.5, "pairs": 3})


def test_warmup_takes_its_share_of_the_same_total():
    # F·R = 0.5·2 = 1 round's worth of pairs in all: warm-up 0.1 of it, the rounds 0.9·(2/3, 1/3)
    spec = BudgetSpec.from_dict({"fraction": 0.5, "schedule": "decreasing"})
    assert [b["fraction"] for b in spec.per_round(2, warmup=0.1)] == pytest.approx([0.1, 0.6, 0.3])
    counts = BudgetSpec.from_dict({"pairs": 10, "schedule": "decreasing"}).per_round(2, warmup=0.1)
    assert counts == [{"count": 1}, {"count": 6}, {"count": 3}]  # 1, 6, 3 exactly: sums to 10
    with pytest.raises(IterateError, match=r"warm-up share 0.9 asks round\(s\) \[0\]"):
        BudgetSpec.from_dict({"fraction": 0.6, "schedule": "constant"}).per_round(2, warmup=0.9)


# ---- recipes ---------------------------------------------------------------------------------------------


def test_published_recipe_is_the_papers_setting():
    recipe = IterateRecipe.from_yaml(SCRIPTS / "iterative_margins.yaml")  # validates every config offline
    assert recipe.sampling["n"] == 8
    assert recipe.selection == {
        "strategy": "smallest_margin",
        "level": "corpus",
        "seed": 0,
        "on_equal_margins": "error",
    }
    assert (recipe.budget.fraction, recipe.budget.schedule) == (0.5, "decreasing")
    assert recipe.policy.model == "meta-llama/Meta-Llama-3-8B"
    # the base model is its own reference: a random warm-up round trains π_1 before margins rank pairs
    assert recipe.warmup == 0.1 and recipe.round_numbers() == [0, 1, 2, 3]
    budgets = [recipe.selection_config(r) for r in (0, 1, 2, 3)]
    assert [b.strategy for b in budgets] == ["random"] + ["smallest_margin"] * 3
    # F·R = 1.5 rounds' worth: 10% of it in the warm-up, 90% by the decreasing weights 3/6, 2/6, 1/6
    assert [b.fraction for b in budgets] == pytest.approx([0.15, 0.675, 0.45, 0.225])
    assert [b.seed for b in budgets] == [0, 1, 2, 3]
    assert all(b.on_equal_margins == "error" for b in budgets)
    assert recipe.annotate_config().annotator == "RewardAnnotator"


def _raw(tmp_path: Path, models: dict, **changes) -> dict:
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"id": 1, "prompt": "Write a short poem about the sea."},
        {"id": 2, "prompt": "List the planets of the solar system."},
        {"id": 3, "prompt": "Explain why the sky is blue."},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = {
        "description": "tiny loop",
        "input": {"path": str(prompts)},
        "policy": {"model": str(models["policy"])},
        "rounds": 2,
        "sampling": {"n": 3, "max_new_tokens": 8, "seed": 0, "backend": "transformers"},
        # the tiny policy is its own reference in round 1: random selection there is asked for explicitly
        "selection": {
            "strategy": "smallest_margin",
            "level": "corpus",
            "seed": 0,
            "on_equal_margins": "random",
        },
        "budget": {"fraction": 0.5, "schedule": "decreasing"},
        "annotation": {"annotator": "RewardAnnotator", "config": {"model": str(models["reward"])}},
        "training": {
            "max_steps": 1,
            "learning_rate": 1e-3,  # large, so round 2's policy measurably differs from round 1's
            "warmup_steps": 0,
            "per_device_train_batch_size": 2,
            "use_cpu": True,
            "bf16": False,
            "report_to": [],
            "gradient_checkpointing": False,
        },
        "output": {"folder": str(tmp_path / "loop"), "name": "tiny-loop", "version": "0.1.0"},
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sampling": {"model": "x"}}, r"sampling: \['model'\] are set by the loop"),
        ({"training": {"betta": 0.1}}, r"unknown trl.DPOConfig field\(s\) \['betta'\]"),
        ({"selection": {"level": "instance"}, "budget": {"pairs": 4}}, "only corpus-level selection"),
        ({"selection": {"strategy": "smallest"}}, "unknown selection strategy"),
        ({"annotation": {"annotator": "PairRM"}}, "unknown step 'PairRM'"),
        ({"rounds": 0}, "rounds must be a positive int"),
        ({"warmup": {"fraction": 1.0}}, r"warmup.fraction .* in \(0, 1\)"),
        ({"warmup": {"share": 0.1}}, r"warmup: unknown field\(s\) \['share'\]"),
        ({"reference": {"revision": "main"}}, "reference: 'model' must name"),
        (
            {"selection": {"strategy": "largest_margin", "level": "corpus"}},
            r"round 1: the policy .* is its own "
            r"reference.*`reference: \{model: SFT_MODEL\}`.*`warmup: \{fraction: 0.1\}`.*on_equal_margins: random",
        ),
        ({"extra": 1}, r"unknown field\(s\) \['extra'\]"),
        # the tiny policy has a chat template: its sampler writes prompts back as messages
        ({"chat_format": "text"}, r"chat_format: text: the policy .* has a chat template.*chat_format: auto"),
        ({"output": {"push_to_hub": {"repo_id": "a/b"}}}, "push each round"),
    ],
)
def test_recipe_errors_say_where(tiny_models, tmp_path, change, match):
    with pytest.raises(IterateError, match=match):
        IterateRecipe.from_dict(_raw(tmp_path, tiny_models, **change))


def test_chat_format_text_is_accepted_for_a_policy_without_a_template(tiny_models, tmp_path):
    import shutil

    bare = tmp_path / "tiny-llama-no-template"
    shutil.copytree(tiny_models["policy"], bare)
    (bare / "chat_template.jinja").unlink()
    recipe = IterateRecipe.from_dict(
        _raw(tmp_path, tiny_models, policy={"model": str(bare)}, chat_format="text")
    )
    prompts, _ = IT.load_prompts(recipe, tmp_path / "cache")
    assert all(isinstance(p, str) for p in prompts["prompt"])  # text stays text
    # the same recipe with the templated policy is refused at run time too (a recipe built without validation)
    templated = IterateRecipe.from_dict(_raw(tmp_path, tiny_models, chat_format="text"), validate=False)
    with pytest.raises(IterateError, match="chat_format: text"):
        IT.run_iterations(templated, progress=False)


# ---- the loop on the tiny models ---------------------------------------------------------------------------


class Interrupted(RuntimeError):
    pass


def _load(release: Path, config: str, tmp_path: Path) -> datasets.Dataset:
    # a cache of its own: datasets 5.2 caches local folders by folder name, and both rounds' are "release"
    cache = tmp_path / "read-cache" / release.parent.name / config
    return datasets.load_dataset(str(release), name=config, split="train", cache_dir=str(cache))


def test_two_rounds_interrupted_and_resumed(tiny_models, tmp_path, monkeypatch):
    raw = _raw(tmp_path, tiny_models)
    recipe_path = tmp_path / "loop.yaml"
    recipe_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    recipe = IterateRecipe.from_yaml(recipe_path)
    folder = Path(recipe.output.folder)
    real_train = LOOP.train_dpo
    trained: list[str] = []

    def failing_in_round_2(dataset, model, output_dir, **kwargs):
        if Path(output_dir).parent.name == "round-2":
            raise Interrupted("killed during round 2's training")
        trained.append(Path(output_dir).parent.name)
        return real_train(dataset, model, output_dir, **kwargs)

    monkeypatch.setattr(LOOP, "train_dpo", failing_in_round_2)
    with pytest.raises(Interrupted):
        IT.run_iterations(recipe, progress=False)
    state = json.loads((folder / IT.STATE_FILE).read_text())
    assert state["rounds"]["1"]["status"] == "finished" and state["rounds"]["2"]["status"] == "released"
    assert not (folder / "round-2" / "policy" / "config.json").exists()
    marks = {p: p.stat().st_mtime_ns for p in folder.glob("round-*/**/*") if p.is_file()}

    # rerun through the CLI: round 1 is not recomputed, round 2 reuses its release and only trains
    selections: list[str] = []
    real_apply = AnnotationSelector.apply

    def counting_apply(self, dataset, **kwargs):
        selections.append(self.config.name)
        return real_apply(self, dataset, **kwargs)

    monkeypatch.setattr(AnnotationSelector, "apply", counting_apply)

    def recording(dataset, model, output_dir, **kwargs):
        trained.append(Path(output_dir).parent.name)
        return real_train(dataset, model, output_dir, **kwargs)

    monkeypatch.setattr(LOOP, "train_dpo", recording)
    assert main(["iterate", str(recipe_path), "--quiet"]) == 0
    assert trained == ["round-1", "round-2"] and selections == []
    assert all(p.stat().st_mtime_ns == mark for p, mark in marks.items())  # nothing rewritten
    state = json.loads((folder / IT.STATE_FILE).read_text())
    assert [state["rounds"][r]["status"] for r in ("1", "2")] == ["finished", "finished"]

    # two releases and two checkpoints
    for r in (1, 2):
        assert (folder / f"round-{r}" / "policy" / "model.safetensors").exists()
        assert (folder / f"round-{r}" / "release" / "README.md").exists()
    # a third run has nothing left to do
    assert IT.run_iterations(recipe, progress=False)[1].reused

    # round 1: the policy is its own reference, so every margin is exactly 0
    one = _load(folder / "round-1" / "release", "candidates", tmp_path)
    assert {m for row in one["implicit_margins"] for m in row} == {0.0}
    two = _load(folder / "round-2" / "release", "candidates", tmp_path)
    assert any(m != 0.0 for row in two["implicit_margins"] for m in row)
    assert all(isinstance(p, list) for p in two["prompt"])  # the tiny tokenizer has a chat template

    manifests = [json.loads((folder / f"round-{r}/release/hfpref_manifest.json").read_text()) for r in (1, 2)]
    first, second = (m["iteration"] for m in manifests)
    assert first["policy"] == first["reference"] == str(tiny_models["policy"])
    assert second["policy"] == str(folder / "round-1" / "policy")
    assert second["reference"] == str(tiny_models["policy"])
    assert [m["version"] for m in manifests] == ["0.1.0-round.1", "0.1.0-round.2"]
    # 9 pairs a round; budget 0.5 over 2 decreasing rounds: 2/3 then 1/3 of them
    for record, candidates, want in ((first, one, 6), (second, two, 3)):
        selection = record["selection"]
        assert selection["pairs"] == 9
        assert selection["selected"] == min(want, selection["eligible"])
        assert selection["selected"] == sum(map(sum, candidates["selected_for_annotation"]))
        assert (
            record["annotation"]["pairs_kept"] + sum(record["annotation"]["dropped"].values())
            == selection["selected"]
        )

    # the pairs config is what round 2 trained on, with the margin TRL would log
    pairs = _load(folder / "round-2" / "release", "smallest_margin_corpus", tmp_path)
    assert len(pairs) == second["annotation"]["pairs_kept"] > 0
    for row in pairs:
        assert row["reward_chosen"] > row["reward_rejected"]
        assert row["implicit_margin"] == pytest.approx(
            row["implicit_reward_chosen"] - row["implicit_reward_rejected"]
        )
        assert row["pair_strategy"] == "smallest_margin_corpus" and row[
            "selection_fraction"
        ] == pytest.approx(1 / 3)
    # each checkpoint was trained on its own round's pairs (its model card names the release and row count)
    for r, record in ((1, first), (2, second)):
        model_card = (folder / f"round-{r}" / "policy" / "README.md").read_text()
        data = yaml.safe_load(model_card.split("---")[1])["hfpref"]["training_data"]
        assert data["dataset"] == str(folder / f"round-{r}" / "release")
        assert data["rows"] == record["annotation"]["pairs_kept"]
        assert data["content_hash"] == content_hash(folder / f"round-{r}" / "release")
    card = (folder / "round-2" / "release" / "README.md").read_text()
    assert "## Iterative round 2 of 2" in card and "smallest_margin" in card
    assert "All eligible margins were equal" not in card
    # round 1's random fallback is on its card and in its manifest, never silent
    assert first["selection"]["margins_all_equal"] and first["selection"]["on_equal_margins"] == "random"
    assert "All eligible margins were equal" in (folder / "round-1" / "release" / "README.md").read_text()
    # the round's section lives in the manifest, so re-rendering the card (as hfpref push does) keeps it
    from hfpref.release import set_release_version

    set_release_version(folder / "round-2" / "release", "0.2.0")
    assert "## Iterative round 2 of 2" in (folder / "round-2" / "release" / "README.md").read_text()


def test_a_different_recipe_cannot_reuse_the_folder(tiny_models, tmp_path):
    recipe = IterateRecipe.from_dict(_raw(tmp_path, tiny_models))
    IT.LoopState(Path(recipe.output.folder), recipe).save()
    changed = IterateRecipe.from_dict(_raw(tmp_path, tiny_models, rounds=3))
    with pytest.raises(IterateError, match="different recipe"):
        IT.run_iterations(changed, progress=False)


# ---- the first round: a policy that differs from its reference, or a warm-up --------------------------------


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory) -> Path:
    """A tiny policy built with another seed (same tokenizer): it differs from the tiny policy everywhere."""
    from tests.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("other-seed"), seed=5)["policy"]


def _selected(out) -> set[tuple[int, tuple[int, int]]]:
    return {
        (row, tuple(pair))
        for row, (flags, pairs) in enumerate(
            zip(out["selected_for_annotation"], out["pair_indices"], strict=True)
        )
        for flag, pair in zip(flags, pairs, strict=True)
        if flag
    }


def test_round_one_with_a_reference_ranks_real_margins(tiny_models, other_policy, tmp_path):
    raw = _raw(
        tmp_path,
        tiny_models,
        policy={"model": str(other_policy)},
        reference={"model": str(tiny_models["policy"])},
        rounds=1,
        selection={"strategy": "smallest_margin", "level": "corpus", "seed": 0},  # on_equal_margins: error
        budget={"fraction": 0.5, "schedule": "constant"},
    )
    recipe = IterateRecipe.from_dict(raw)
    policy, reference = IT.models_of_round(recipe, Path(recipe.output.folder), 1)
    assert (policy.model, reference.model) == (str(other_policy), str(tiny_models["policy"]))
    steps = IT.round_steps(recipe, 1, policy, reference)
    assert [type(s).__name__ for s in steps[:4]] == [
        "ResponseSampler", "LogProbAnnotator", "LogProbAnnotator", "ImplicitMargins"
    ]  # fmt: skip
    candidates, _ = IT.load_prompts(recipe, tmp_path / "cache")
    for step in steps[:4]:
        candidates = step.apply(candidates)
    picks, summaries = {}, {}
    for strategy in ("smallest_margin", "largest_margin", "random"):
        config = dataclasses.replace(recipe.selection_config(1), strategy=strategy)
        out = AnnotationSelector(config).apply(candidates)
        picks[strategy], summaries[strategy] = _selected(out), selection_summary(out)
    assert picks["smallest_margin"] != picks["random"] != picks["largest_margin"] != picks["smallest_margin"]
    assert not any(s["margins_all_equal"] for s in summaries.values())

    # |margin| recomputed from the log-prob columns: β·((log π − log π_ref)_i − (log π − log π_ref)_j)
    def abs_margin(row: int, pair: tuple[int, int]) -> float:
        policy_logps, ref_logps = candidates["policy_logps"][row], candidates["ref_logps"][row]
        i, j = pair
        return abs(recipe.beta * ((policy_logps[i] - ref_logps[i]) - (policy_logps[j] - ref_logps[j])))

    eligible = {
        (row, tuple(pair))
        for row, (pairs, reasons) in enumerate(
            zip(out["pair_indices"], out["pair_excluded_reason"], strict=True)
        )
        for pair, reason in zip(pairs, reasons, strict=True)
        if reason is None
    }
    by_size = sorted(eligible, key=lambda key: abs_margin(*key))
    budget = min(len(eligible), 5)  # round(0.5 · 9 pairs), halves up
    assert picks["smallest_margin"] == set(by_size[:budget])
    assert picks["largest_margin"] == set(by_size[len(by_size) - budget :])
    small = [abs_margin(*key) for key in picks["smallest_margin"]]
    large = [abs_margin(*key) for key in picks["largest_margin"]]
    assert max(small) <= min(large) and sum(small) < sum(large)


def test_equal_margins_stop_the_round_and_say_what_to_set(tiny_models, tmp_path, monkeypatch):
    # a reference that is a copy of the policy in another folder: the loop scores both, margins are all 0
    import shutil

    copy = tmp_path / "copy-of-policy"
    shutil.copytree(tiny_models["policy"], copy)
    raw = _raw(tmp_path, tiny_models, reference={"model": str(copy)}, rounds=1)
    raw["selection"] = {"strategy": "smallest_margin", "level": "corpus"}
    recipe = IterateRecipe.from_dict(raw)
    trained = []
    monkeypatch.setattr(LOOP, "train_dpo", lambda *args, **kwargs: trained.append(args))
    with pytest.raises(
        IterateError, match=r"round 1: AnnotationSelector: all \d+ eligible pairs have the same"
    ) as err:
        IT.run_iterations(recipe, progress=False)
    assert "on_equal_margins: random" in str(err.value) and "warmup" in str(err.value)
    assert not trained and not (Path(recipe.output.folder) / "round-1" / "release").exists()


def test_a_warmup_round_trains_the_first_policy(tiny_models, tmp_path, monkeypatch):
    raw = _raw(tmp_path, tiny_models, rounds=1, warmup={"fraction": 0.3})
    raw["selection"] = {"strategy": "smallest_margin", "level": "corpus", "seed": 0}
    raw["budget"] = {"fraction": 1.0, "schedule": "constant"}
    recipe = IterateRecipe.from_dict(raw)
    folder = Path(recipe.output.folder)
    results = IT.run_iterations(recipe, progress=False)
    assert [r.round for r in results] == [0, 1]
    assert [r.config_name for r in results] == ["random_corpus", "smallest_margin_corpus"]
    warm = json.loads((folder / "round-0/release/hfpref_manifest.json").read_text())["iteration"]
    first = json.loads((folder / "round-1/release/hfpref_manifest.json").read_text())["iteration"]
    assert warm["warmup"] and not first["warmup"]
    assert warm["policy"] == warm["reference"] == str(tiny_models["policy"])
    assert first["policy"] == str(folder / "round-0" / "policy")  # π_1, DPO-trained in the warm-up
    assert first["reference"] == str(tiny_models["policy"])
    # 9 pairs a round; the total budget (1.0 · 1 round) is split 0.3 / 0.7: round(2.7) = 3, round(6.3) = 6
    assert warm["selection"]["selected"] == min(3, warm["selection"]["eligible"])
    assert first["selection"]["selected"] == min(6, first["selection"]["eligible"])
    assert not first["selection"]["margins_all_equal"]
    one = _load(folder / "round-1" / "release", "candidates", tmp_path)
    assert any(m != 0.0 for row in one["implicit_margins"] for m in row)
    assert "## Warm-up round" in (folder / "round-0" / "release" / "README.md").read_text()
    assert (folder / "round-1" / "policy" / "model.safetensors").exists()


def test_a_pairwise_judge_annotates_the_round(tiny_models, tmp_path, monkeypatch):
    """PairwiseJudge as the loop's annotator (PairRM's role): chosen = the response it prefers in both orders."""
    judge = {"model": "scripted", "backend": "tests.test_pairwise_judge:ScriptedBackend", "cache_dir": None}
    raw = _raw(
        tmp_path, tiny_models, rounds=1, annotation={"annotator": "PairwiseJudge", "config": {"judge": judge}}
    )
    raw["budget"] = {"fraction": 1.0, "schedule": "constant"}
    recipe = IterateRecipe.from_dict(raw)
    trained = []
    monkeypatch.setattr(
        LOOP, "train_dpo", lambda dataset, model, output_dir, **kwargs: trained.append(dataset)
    )
    [result] = IT.run_iterations(recipe, progress=False)
    assert trained == [str(result.release)]
    record = json.loads((result.release / "hfpref_manifest.json").read_text())["iteration"]
    counts = record["annotation"]["pairwise"]
    judged = record["selection"]["selected"]
    assert counts["judged_pairs"] == judged and counts["request_failure"] == counts["parse_failure"] == 0
    # the scripted judge prefers the longer response; equal lengths make the orders disagree (a tie)
    pairs = _load(result.release, "smallest_margin_corpus", tmp_path)
    assert len(pairs) == record["annotation"]["pairs_kept"] == counts["first"] + counts["second"]
    for row in pairs:
        assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])
    assert record["annotation"]["dropped"].get("judge_tie", 0) == counts["order_disagreement"] + counts["tie"]
    assert "Pairwise judge, both orders per pair" in (result.release / "README.md").read_text()
