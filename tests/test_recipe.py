"""Recipes: YAML parsing and validation against the step registry, overrides, and the resumable cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hfpref.core.step import Step, StepConfig
from hfpref.pipeline import recipe as R
from hfpref.pipeline.recipe import InputSpec, Recipe, RecipeError
from tests.helpers import DeclaredColumns, ScaleList, candidate_rows

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_scripts"


# ---- tiny steps for the cache tests (registered per test through monkeypatch) ------------------------


class CopyScores(ScaleList):
    """rewards = scores * factor; counts its batches."""

    inputs, outputs = ("scores",), ("rewards",)


@dataclasses.dataclass
class FlakyConfig(StepConfig):
    pass


class Flaky(DeclaredColumns, Step):
    """Adds n_responses; raises while ``fail`` is set (a crash in a later step)."""

    config_class = FlakyConfig
    calls = 0
    fail = False
    outputs = ("n_responses",)

    def process(self, batch, rank, indices):
        type(self).calls += 1
        if type(self).fail:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return {"n_responses": [len(r) for r in batch["responses"]]}


ROWS = candidate_rows(
    responses=[["a", "b c", "d e f"], ["x", "y"], ["only one"], ["same", "other"]],
    generators=[["g1", "g2", "g1"], ["g1", "g2"], ["g2"], ["g1", "g2"]],
    scores=[[0.1, 0.9, 0.5], [0.7, 0.2], [1.0], [0.4, 0.4]],
)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(R.STEP_REGISTRY, "CopyScores", "tests.test_recipe:CopyScores")
    monkeypatch.setitem(R.STEP_REGISTRY, "Flaky", "tests.test_recipe:Flaky")
    CopyScores.calls = Flaky.calls = 0
    Flaky.fail = False


@pytest.fixture
def rows_file(tmp_path) -> Path:
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def _recipe(rows_file: Path, **pairs) -> Recipe:
    return Recipe.from_dict(
        {
            "input": {"path": str(rows_file)},
            "steps": [{"step": "CopyScores", "config": {"factor": 2.0}}, {"step": "Flaky"}],
            "pairs": {"strategies": ["max_margin"], **pairs},
            "output": {"name": "test", "version": "1.2.3"},
        }
    )


# ---- running and caching -----------------------------------------------------------------------------


def test_run_selects_pairs_and_counts_drops(registry, rows_file, tmp_path):
    result = _recipe(rows_file).run(cache_dir=tmp_path / "cache", progress=False)
    pairs = result.pairs["max_margin"]
    # hand-computed: p0 highest 0.9 (index 1) vs lowest 0.1 (index 0); p1 0.7 vs 0.2; p2 N=1; p3 tied
    assert pairs["key"] == [0, 1]
    assert pairs["chosen"] == ["b c", "x"] and pairs["rejected"] == ["a", "y"]
    assert pairs["reward_margin"] == pytest.approx([2 * 0.8, 2 * 0.5])
    assert sum(result.dropped["max_margin"].values()) == 2
    assert result.step_rows == [{"rows_in": 4, "rows_out": 4}, {"rows_in": 4, "rows_out": 4}]
    assert result.candidates["n_responses"] == [3, 2, 1, 2]


def test_rerun_after_a_crash_resumes_and_a_finished_recipe_is_all_cache_hits(registry, rows_file, tmp_path):
    cache = tmp_path / "cache"
    recipe = _recipe(rows_file)
    Flaky.fail = True
    with pytest.raises(KeyboardInterrupt):
        recipe.run(cache_dir=cache, progress=False)
    assert CopyScores.calls == 1 and Flaky.calls == 1

    Flaky.fail = False
    first = recipe.run(cache_dir=cache, progress=False)
    assert CopyScores.calls == 1, "the finished first step must come from the cache"
    assert Flaky.calls == 2, "the step that crashed runs again"

    arrow_files = sorted(p.name for p in cache.rglob("*.arrow"))
    again = recipe.run(cache_dir=cache, progress=False)
    assert (CopyScores.calls, Flaky.calls) == (1, 2), "a finished recipe reruns without calling any step"
    assert sorted(p.name for p in cache.rglob("*.arrow")) == arrow_files
    assert again.pairs["max_margin"].to_list() == first.pairs["max_margin"].to_list()
    assert again.candidates.cache_files == first.candidates.cache_files


def test_changed_config_reruns_only_from_that_step(registry, rows_file, tmp_path):
    cache = tmp_path / "cache"
    _recipe(rows_file).run(cache_dir=cache, progress=False)
    changed = Recipe.from_dict(
        {
            **_recipe(rows_file).to_dict(),
            "steps": [{"step": "CopyScores", "config": {"factor": 3.0}}, {"step": "Flaky"}],
        }
    )
    result = changed.run(cache_dir=cache, progress=False)
    assert CopyScores.calls == 2 and Flaky.calls == 2  # both rerun: Flaky's input changed
    assert result.pairs["max_margin"]["reward_margin"] == pytest.approx([3 * 0.8, 3 * 0.5])


def test_all_strategies_skip_what_the_candidates_cannot_serve(registry, rows_file, tmp_path):
    result = _recipe(rows_file, strategies="all").run(cache_dir=tmp_path / "cache", progress=False)
    # no generator_ranking: ds_fix cannot be configured; no PairMetrics matrices or ref_logps
    assert (
        "ds_fix" in result.skipped_strategies and "generator_ranking" in result.skipped_strategies["ds_fix"]
    )
    assert "edit_distance_matrix" in result.skipped_strategies["best_of_n2"]
    assert {"max_margin", "random", "ds_rm", "reward_only"} <= set(result.pairs)
    assert not set(result.pairs) & set(result.skipped_strategies)


def test_named_strategy_that_cannot_run_is_an_error(registry, rows_file, tmp_path):
    recipe = _recipe(rows_file, strategies=["edit_only"])
    with pytest.raises(RecipeError, match=r"edit_only: needs column\(s\) \['edit_distance_matrix'\]"):
        recipe.run(cache_dir=tmp_path / "cache", progress=False)


# ---- validation --------------------------------------------------------------------------------------


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
input: {default: ifeval}
steps:
  - step: IFEvalVerifier
    config: {reward: strict}
pairs: {strategies: [max_margin]}
"""


def test_yaml_round_trip(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, BASE))
    assert recipe.steps[0].step == "IFEvalVerifier" and recipe.steps[0].config == {"reward": "strict"}
    assert recipe.output.version == "0.1.0"
    again = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again.to_dict() == recipe.to_dict()


def test_unknown_step_lists_known_steps(tmp_path):
    path = _write(tmp_path, BASE.replace("IFEvalVerifier", "IFEvalVerifyer"))
    with pytest.raises(RecipeError) as err:
        Recipe.from_yaml(path)
    message = str(err.value)
    assert str(path) in message and "steps[0]" in message and "'IFEvalVerifyer'" in message
    for name in ("IFEvalVerifier", "PairMetrics", "RewardAnnotator", "LogProbAnnotator"):
        assert name in message


def test_unknown_config_field_names_step_and_field(tmp_path):
    path = _write(tmp_path, BASE.replace("{reward: strict}", "{reward: strict, rewrad: loose}"))
    with pytest.raises(
        RecipeError, match=r"steps\[0\] \(IFEvalVerifier\).*unknown config field 'rewrad'.*'reward'"
    ):
        Recipe.from_yaml(path)


def test_bad_config_value_names_the_step(tmp_path):
    path = _write(tmp_path, BASE.replace("{reward: strict}", "{reward: medium}"))
    with pytest.raises(RecipeError, match=r"steps\[0\] \(IFEvalVerifier\): invalid config.*medium"):
        Recipe.from_yaml(path)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("[max_margin]", "[max_margn]", r"unknown strategy 'max_margn'; known: best_of_n2"),
        ("{default: ifeval}", "{hub: org/data}", r"needs a 'revision'"),
        ("{default: ifeval}", "{default: ifeval, path: x.jsonl}", r"exactly one of"),
        ("{default: ifeval}", "{default: alpaca}", r"unknown default dataset 'alpaca'"),
        ("pairs:", "pair:", r"unknown field\(s\) \['pair'\]"),
        (
            "{strategies: [max_margin]}",
            "{strategies: all, config: {sede: 1}}",
            r"pairs.config: unknown config field 'sede'",
        ),
        (
            "{strategies: [max_margin]}",
            "{strategies: [random], config: {seed: -1}}",
            r"pairs \(random\): invalid config",
        ),
        ("- step: IFEvalVerifier", "- stepp: IFEvalVerifier", r"steps\[0\]: unknown field\(s\) \['stepp'\]"),
    ],
)
def test_structural_errors(tmp_path, old, new, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_yaml(_write(tmp_path, BASE.replace(old, new)))


def test_bad_version_and_push_target(tmp_path):
    with pytest.raises(RecipeError, match=r"output.version: 'v1' is not a version"):
        Recipe.from_yaml(_write(tmp_path, BASE + "output: {version: v1}\n"))
    with pytest.raises(RecipeError, match=r"repo_id' must look like OWNER/NAME"):
        Recipe.from_yaml(_write(tmp_path, BASE + "output: {push_to_hub: {repo_id: nameonly}}\n"))


def test_overrides(tmp_path):
    recipe = Recipe.from_dict(
        {**yaml.safe_load(BASE), "steps": [{"step": "PairMetrics", "config": {"tokenizer": None}}]}
    )
    changed = recipe.with_overrides(
        strategies=["best_of_n2", "random"], tokenizer="some/tokenizer", folder="out", version="2.0.0"
    )
    assert changed.steps[0].config["tokenizer"] == "some/tokenizer"
    assert changed.pairs.strategies == ["best_of_n2", "random"]
    assert (changed.output.folder, changed.output.version) == ("out", "2.0.0")
    assert recipe.steps[0].config["tokenizer"] is None, "the original recipe is unchanged"
    with pytest.raises(RecipeError, match="no PairMetrics step"):
        Recipe.from_yaml(_write(tmp_path, BASE)).with_overrides(tokenizer="t")


def test_input_from_cli(tmp_path):
    assert InputSpec.from_cli("default") == InputSpec(default="ifeval")
    existing = tmp_path / "rows.jsonl"
    existing.write_text("{}\n")
    assert InputSpec.from_cli(str(existing)) == InputSpec(path=str(existing))
    assert InputSpec.from_cli("org/data@abc123") == InputSpec(hub="org/data", revision="abc123")
    with pytest.raises(RecipeError, match="OWNER/NAME@REVISION"):
        InputSpec.from_cli("org/data")


def test_input_rename_and_columns(registry, tmp_path):
    path = tmp_path / "raw.jsonl"
    rows = [
        {"instruction": r["prompt"], **{k: v for k, v in r.items() if k != "prompt"}, "junk": 1} for r in ROWS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = _recipe(path).to_dict()
    raw["input"] = {
        "path": str(path),
        "rename": {"instruction": "prompt"},
        "columns": ["key", "prompt", "responses", "generators", "scores"],
    }
    result = Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    assert "junk" not in result.candidates.column_names
    assert result.pairs["max_margin"]["prompt"] == ["p0", "p1"]


# ---- the published recipes ---------------------------------------------------------------------------


def _is_iterate_recipe(path) -> bool:
    import yaml

    return "rounds" in (yaml.safe_load(path.read_text()) or {})


CURATE_SCRIPTS = [p for p in sorted(SCRIPTS.glob("*.yaml")) if not _is_iterate_recipe(p)]
ITERATE_SCRIPTS = [p for p in sorted(SCRIPTS.glob("*.yaml")) if _is_iterate_recipe(p)]


@pytest.mark.parametrize("path", ITERATE_SCRIPTS, ids=lambda p: p.name)
def test_every_iterate_script_validates(path):
    from hfpref.pipeline.iterate import IterateRecipe

    recipe = IterateRecipe.from_yaml(path)  # validates rounds, budget schedule, steps and training (offline)
    assert recipe.rounds >= 1


@pytest.mark.parametrize("path", CURATE_SCRIPTS, ids=lambda p: p.name)
def test_every_dataset_script_validates(path):
    recipe = Recipe.from_yaml(path)  # validates step names, config fields and values, strategies (offline)
    configs, skipped = recipe.pairs.selection_configs()
    assert list(configs) == recipe.pairs.strategies and not skipped
    for index, spec in enumerate(recipe.steps):
        step = spec.build(index)  # builds the config only: no model, tokenizer or revision is fetched
        assert type(step).__name__ == spec.step
        assert {k: getattr(step.config, k) for k in spec.config} == spec.config


def test_dataset_scripts_exist():
    names = {p.name for p in SCRIPTS.glob("*.yaml")}
    assert {"ifeval_eight_generators.yaml", "ifeval_two_generators.yaml"} <= names
    assert len(names) >= 4  # the default plus the UltraFeedback settings


def test_embedded_default_equals_its_published_script():
    published = Recipe.from_yaml(SCRIPTS / "ifeval_eight_generators.yaml")
    assert published.to_dict() == R.default_recipe().to_dict()


def test_missing_step_input_fails_before_any_step_runs(registry, rows_file, tmp_path):
    raw = _recipe(rows_file).to_dict()
    raw["steps"] = [{"step": "CopyScores"}, {"step": "PairMetrics"}, {"step": "IFEvalVerifier"}]
    with pytest.raises(
        RecipeError,
        match=r"steps\[2\] \(IFEvalVerifier\): needs column\(s\) \['instruction_id_list', 'kwargs'\]",
    ):
        Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    assert CopyScores.calls == 0


def test_recipe_knows_which_strategies_need_ref_logps():
    from hfpref.steps.selection import STRATEGIES_NEEDING_REF_LOGPS

    assert set(R.STRATEGIES_NEEDING_REF_LOGPS) == set(STRATEGIES_NEEDING_REF_LOGPS)


def test_every_registered_step_imports_and_is_a_step():
    from hfpref.core.step import Step

    for name in R.STEP_REGISTRY:
        assert issubclass(R.step_class(name), Step), name


# ---- pair makers and mixes ---------------------------------------------------------------------------


@dataclasses.dataclass
class EchoConfig(StepConfig):
    skip: str = "p2"


class EchoPairs(Step):
    """A pair maker: chosen = prompt + "!", rejected = prompt; writes the columns it was given; drops
    the prompt ``skip`` with reason ``no_pair``. Counts its batches."""

    config_class = EchoConfig
    changes_row_count = True
    calls = 0

    def input_columns(self):
        return ["prompt"]

    def output_columns(self):
        return ["prompt", "chosen", "rejected", "seen", "drop_reason"]

    def process(self, batch, rank, indices):
        type(self).calls += 1
        seen = ",".join(sorted(batch))
        kept = [p != self.config.skip for p in batch["prompt"]]
        return {
            "prompt": list(batch["prompt"]),
            "chosen": [p + "!" if k else None for p, k in zip(batch["prompt"], kept, strict=True)],
            "rejected": [p if k else None for p, k in zip(batch["prompt"], kept, strict=True)],
            "seen": [seen] * len(kept),
            "drop_reason": [None if k else "no_pair" for k in kept],
        }


@dataclasses.dataclass
class WriteConfig(StepConfig):
    pass


class WriteResponses(Step):
    """Candidates from prompt rows: two responses and their scores (a stand-in for ResponseSampler)."""

    config_class = WriteConfig

    def input_columns(self):
        return ["prompt"]

    def output_columns(self):
        return ["responses", "scores"]

    def process(self, batch, rank, indices):
        return {
            "responses": [[p + " long answer", p] for p in batch["prompt"]],
            "scores": [[1.0, 0.0] for _ in batch["prompt"]],
        }


@pytest.fixture
def makers_registry(registry, monkeypatch):
    monkeypatch.setitem(R.STEP_REGISTRY, "EchoPairs", "tests.test_recipe:EchoPairs")
    monkeypatch.setitem(R.STEP_REGISTRY, "WriteResponses", "tests.test_recipe:WriteResponses")
    EchoPairs.calls = 0


CONTRAST = {"high_min_gap": 0.5, "low_max_gap": 0.45, "score_column": "scores"}


def _contrast_recipe(rows_file: Path, mix: dict | None = None, **pairs) -> dict:
    mixes = [{"name": "mixed", "from": ["high", "low"], **(mix or {})}]
    return {
        "input": {"path": str(rows_file)},
        "steps": [],
        "pairs": {
            "strategies": ["max_margin"],
            "config": {},
            "makers": [
                {"name": "high", "step": "ContrastPairs", "config": {"mode": "high", **CONTRAST}},
                {"name": "low", "step": "ContrastPairs", "config": {"mode": "low", **CONTRAST}},
            ],
            "mixes": mixes,
            **pairs,
        },
        "output": {"name": "test"},
    }


def _rewarded(rows_file: Path) -> Path:
    """ROWS with rewards = scores (max_margin needs rewards), as a new file."""
    path = rows_file.with_name("rewarded.jsonl")
    rows = [{**r, "rewards": r["scores"]} for r in ROWS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_contrast_makers_and_their_mix_by_hand(rows_file, tmp_path):
    result = Recipe.from_dict(_contrast_recipe(_rewarded(rows_file))).run(
        cache_dir=tmp_path / "cache", progress=False
    )
    assert list(result.pairs) == ["max_margin", "high", "low", "mixed"]
    # p0 scores 0.1, 0.9, 0.5: gap 0.8 (1 over 0) is high; 0.4 (1 over 2, 2 over 0) is low, the better
    # chosen first; p1 0.7 vs 0.2: gap 0.5, high; p2 has one response; p3 is tied
    high, low = result.pairs["high"], result.pairs["low"]
    assert (high["key"], high["chosen"], high["rejected"]) == ([0, 1], ["b c", "x"], ["a", "y"])
    assert (low["key"], low["chosen"], low["rejected"]) == ([0], ["b c"], ["d e f"])
    assert result.dropped["high"] == {"fewer_than_two_responses": 1, "scores_tied": 1}
    assert result.dropped["low"] == {
        "fewer_than_two_responses": 1,
        "scores_tied": 1,
        "no_low_contrast_pair": 1,
    }
    assert "drop_reason" not in high.column_names
    # size null: the largest at ratio 1/2 is 3 (2 high, 1 low), i.e. every pair, in concatenation order
    mixed = result.pairs["mixed"]
    assert mixed["contrast_level"] == ["high", "high", "low"] and mixed["key"] == [0, 1, 0]
    assert result.dropped["mixed"] == {}
    assert result.selectors["mixed"].describe()["config"] == {
        "from": ["high", "low"],
        "ratio_high": 0.5,
        "size": 3,
        "seed": 0,
        "stratify": None,
        "allow_short": False,
    }
    assert result.selectors["high"].describe()["config"]["mode"] == "high"


def test_mix_sizes_short_and_empty(rows_file, tmp_path):
    rows = _rewarded(rows_file)
    with pytest.raises(
        RecipeError, match=r"pairs.mixes\[0\] \(mixed\): mix_contrast: size=4 .* needs 2 high and 2 low"
    ):
        Recipe.from_dict(_contrast_recipe(rows, {"size": 4})).run(
            cache_dir=tmp_path / "cache", progress=False
        )
    short = Recipe.from_dict(_contrast_recipe(rows, {"size": 4, "allow_short": True})).run(
        cache_dir=tmp_path / "cache", progress=False
    )
    assert short.pairs["mixed"]["contrast_level"] == ["high", "high", "low"]  # 1 low short of 2
    raw = _contrast_recipe(rows, {"ratio_high": 0.0})
    raw["pairs"]["makers"][1]["config"]["low_max_gap"] = 0.1  # no low pair at all: nothing to mix
    result = Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    assert "mixed" not in result.pairs
    assert result.skipped_strategies["mixed"].startswith("no high- and low-contrast pairs to mix")


def test_maker_on_prompts_sees_the_rows_before_responses_and_is_cached(makers_registry, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"key": i, "prompt": f"p{i}"}) + "\n" for i in range(4)))
    raw = {
        "input": {"path": str(path)},
        "steps": [{"step": "WriteResponses"}, {"step": "CopyScores"}],
        "pairs": {
            "strategies": ["max_margin"],
            "makers": [
                {"name": "from_prompts", "step": "EchoPairs", "source": "prompts"},
                {"name": "from_candidates", "step": "EchoPairs", "config": {"skip": "p0"}},
            ],
        },
        "output": {"name": "test"},
    }
    result = Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    prompts, candidates = result.pairs["from_prompts"], result.pairs["from_candidates"]
    assert set(prompts["seen"]) == {"key,prompt"}
    assert set(candidates["seen"]) == {"key,prompt,responses,rewards,scores"}
    assert prompts["chosen"] == ["p0!", "p1!", "p3!"] and result.dropped["from_prompts"] == {"no_pair": 1}
    assert candidates["prompt"] == ["p1", "p2", "p3"] and result.dropped["from_candidates"] == {"no_pair": 1}
    calls = EchoPairs.calls
    again = Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    assert EchoPairs.calls == calls  # both makers came from the cache
    assert again.pairs["from_prompts"]["chosen"] == prompts["chosen"]
    assert Recipe.from_dict(raw).to_dict()["pairs"]["makers"] == [
        {"name": "from_prompts", "step": "EchoPairs", "config": {}, "source": "prompts"},
        {"name": "from_candidates", "step": "EchoPairs", "config": {"skip": "p0"}},
    ]


def test_makers_only_and_yaml_round_trip(makers_registry, rows_file, tmp_path):
    raw = _contrast_recipe(rows_file, strategies=[])
    recipe = Recipe.from_dict(raw)
    again = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again.to_dict() == recipe.to_dict() and again.pairs.to_dict()["strategies"] == []
    result = recipe.run(cache_dir=tmp_path / "cache", progress=False)
    assert list(result.pairs) == ["high", "low", "mixed"]
    old = _recipe(rows_file).to_dict()["pairs"]
    assert list(old) == ["strategies", "config"]  # no makers: printed as before


def _invalid(raw: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(raw)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda p: p["makers"][0].update(step="Nope"),
            r"pairs.makers\[0\] \(high: Nope\): unknown step 'Nope'",
        ),
        (
            lambda p: p["makers"][0]["config"].update(colour=1),
            r"pairs.makers\[0\] \(high: ContrastPairs\): unknown config field 'colour' for ContrastConfig",
        ),
        (
            lambda p: p["makers"][0].update(step="CopyScores", config={}),
            r"pairs.makers\[0\] \(high: CopyScores\): CopyScores is not a pair maker",
        ),
        (lambda p: p["makers"][0].update(colour=1), r"pairs.makers\[0\]: unknown field\(s\) \['colour'\]"),
        (
            lambda p: p["makers"][0].update(source="outputs"),
            r"pairs.makers\[0\] \(high\).source: expected one of",
        ),
        (lambda p: p["makers"][0].pop("name"), r"pairs.makers\[0\]: missing 'name'"),
        (
            lambda p: p["makers"][0].update(name="candidates"),
            r"'candidates' is the release's candidates config",
        ),
        (lambda p: p["makers"][0].update(name="a/b"), r"pairs.makers\[0\].name: expected a config name"),
        (
            lambda p: p["makers"][0].update(name="max_margin"),
            r"pairs.makers\[0\] \(max_margin: ContrastPairs\): config name 'max_margin' is taken by "
            r"pairs.strategies \(max_margin\)",
        ),
        (
            lambda p: p["makers"][1].update(name="high"),
            r"pairs.makers\[1\] \(high: ContrastPairs\): config name 'high' is taken by pairs.makers\[0\]",
        ),
        (
            lambda p: p["mixes"][0].update(name="low"),
            r"pairs.mixes\[0\] \(low\): config name 'low' is taken by pairs.makers\[1\]",
        ),
        (
            lambda p: p["mixes"][0].update({"from": ["high", "medium"]}),
            r"pairs.mixes\[0\] \(mixed\).from: 'medium' is not a config of this recipe; a mix draws from "
            r"maker configs: \['high', 'low'\]",
        ),
        (
            lambda p: p["mixes"][0].update({"from": ["high", "max_margin"]}),
            r"'max_margin' is a pair strategy, whose pairs have no contrast level",
        ),
        (
            lambda p: p["mixes"].append({"name": "again", "from": ["mixed"]}),
            r"pairs.mixes\[1\] \(again\).from: 'mixed' is another mix",
        ),
        (
            lambda p: (
                p["makers"].append({"name": "echo", "step": "EchoPairs"})
                or p["mixes"][0].update({"from": ["echo"]})
            ),
            r"maker config 'echo' \(EchoPairs\) writes no 'contrast_level' column",
        ),
        (lambda p: p["mixes"][0].update({"from": ["high", "high"]}), r"a config is named twice"),
        (
            lambda p: p["mixes"][0].update(ratio_high=1.5),
            r"pairs.mixes\[0\] \(mixed\).ratio_high: expected a number",
        ),
        (lambda p: p["mixes"][0].update(size=0), r"pairs.mixes\[0\] \(mixed\).size: expected a positive int"),
        (lambda p: p["mixes"][0].update(seed=-1), r"seed: expected a non-negative int"),
        (lambda p: p["mixes"][0].update(allow_short="yes"), r"allow_short: expected true or false"),
        (lambda p: p["mixes"][0].update(size_max=3), r"pairs.mixes\[0\]: unknown field\(s\) \['size_max'\]"),
        (lambda p: p.update(makers={"name": "x"}), r"pairs.makers: expected a list"),
        (
            lambda p: p.update(makers=[], mixes=[], strategies=[]),
            r"pairs.strategies: expected 'all' or a non-empty",
        ),
        (
            lambda p: p["makers"].append({"name": "echo", "step": "EchoPairs", "source": "prompts"}),
            r"pairs.makers\[2\] \(echo: EchoPairs\).source: 'prompts' are the rows before the first step that "
            r"writes 'responses', and no step does",
        ),
    ],
)
def test_invalid_makers_and_mixes(makers_registry, rows_file, change, match):
    raw = _contrast_recipe(rows_file)
    change(raw["pairs"])
    _invalid(raw, match)


def test_maker_missing_column_fails_before_any_step_runs(makers_registry, rows_file, tmp_path):
    raw = _contrast_recipe(rows_file)
    raw["steps"] = [{"step": "CopyScores"}]
    raw["pairs"]["makers"][1]["config"]["score_column"] = "correctness"
    with pytest.raises(
        RecipeError,
        match=r"pairs.makers\[1\] \(low: ContrastPairs\): needs column\(s\) \['correctness'\], which its "
        r"source \(candidates\) lacks",
    ):
        Recipe.from_dict(raw).run(cache_dir=tmp_path / "cache", progress=False)
    assert CopyScores.calls == 0


def test_shared_validators_raise_the_error_class_they_are_given():
    """Curate, iterate and sweeps read their YAML with the same checks (hfpref.pipeline.validate); iterate
    passes its own error class, and ``naming_the_file`` puts the recipe file in front of any RecipeError."""
    from hfpref.pipeline import validate as V

    class OtherError(RecipeError):
        pass

    with pytest.raises(OtherError, match=r"^budget: expected a mapping, got list \[1\]$"):
        V.as_mapping([1], "budget", OtherError)
    with pytest.raises(OtherError, match=r"^recipe: unknown field\(s\) \['x'\]; allowed: \['a'\]$"):
        V.read_section({"x": 1}, "recipe", ("a",), error=OtherError)
    with pytest.raises(OtherError, match=r"^recipe: missing 'a'$"):
        V.read_section({}, "recipe", ("a",), ("a",), error=OtherError)
    named = pytest.raises(OtherError, match=r"^recipe f\.yaml: pairs: missing 'x'$")
    with named, V.naming_the_file("f.yaml", OtherError):
        V.read_section({}, "pairs", ("x",), ("x",))
    unnamed = pytest.raises(RecipeError, match=r"^pairs: missing 'x'$")
    with unnamed, V.naming_the_file(None):
        V.read_section({}, "pairs", ("x",), ("x",))
    raw, name = V.named_section(
        {"name": "rs_high", "from": "a"}, "pairs.filters[0]", ("name", "from"), ("name",)
    )
    assert (raw, name) == ({"name": "rs_high", "from": "a"}, "rs_high")
    with pytest.raises(RecipeError, match="'candidates' is the release's candidates config"):
        V.named_section({"name": "candidates"}, "pairs.makers[0]", ("name",), ("name",))
    assert V.read_map_settings({"batch_size": 8}, "steps[0]") == {"batch_size": 8, "num_proc": None}
    with pytest.raises(RecipeError, match=r"steps\[0\]\.num_proc: .*write the number without quotes"):
        V.read_map_settings({"num_proc": "2"}, "steps[0]")


def test_the_old_names_stay_importable_from_the_recipe_module():
    """Other modules (iterate, the CLI, the release writer) import these from hfpref.pipeline.recipe."""
    for name in (
        "Recipe", "RecipeError", "RecipeResult", "InputSpec", "StepSpec", "PairsSpec", "MakerSpec", "OutputSpec",
        "PushSpec", "check_version", "load_input", "read_recipe_yaml",
        "build_config", "step_class", "CANDIDATES_CONFIG", "ALL_STRATEGIES", "DEFAULT_STRATEGIES",
        "DEFAULT_RECIPE", "default_recipe", "STEP_REGISTRY", "DEFAULT_INPUTS",
    ):  # fmt: skip
        assert getattr(R, name) is not None, name
