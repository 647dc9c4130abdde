"""Recipes: YAML parsing and validation against the step registry, overrides, and the resumable cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hfpref import recipe as R
from hfpref.recipe import InputSpec, Recipe, RecipeError
from hfpref.transform import Step, StepConfig

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_scripts"


# ---- tiny steps for the cache tests (registered per test through monkeypatch) ------------------------


@dataclasses.dataclass
class CopyConfig(StepConfig):
    scale: float = 1.0


class CopyScores(Step):
    """rewards = scores * scale; counts its batches."""

    config_class = CopyConfig
    calls = 0

    def input_columns(self):
        return ["scores"]

    def output_columns(self):
        return ["rewards"]

    def process(self, batch, rank, indices):
        type(self).calls += 1
        return {"rewards": [[s * self.config.scale for s in row] for row in batch["scores"]]}


@dataclasses.dataclass
class FlakyConfig(StepConfig):
    pass


class Flaky(Step):
    """Adds n_responses; raises while ``fail`` is set (a crash in a later step)."""

    config_class = FlakyConfig
    calls = 0
    fail = False

    def input_columns(self):
        return ["responses"]

    def output_columns(self):
        return ["n_responses"]

    def process(self, batch, rank, indices):
        type(self).calls += 1
        if type(self).fail:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return {"n_responses": [len(r) for r in batch["responses"]]}


ROWS = [
    {
        "key": 0,
        "prompt": "p0",
        "responses": ["a", "b c", "d e f"],
        "generators": ["g1", "g2", "g1"],
        "scores": [0.1, 0.9, 0.5],
    },
    {"key": 1, "prompt": "p1", "responses": ["x", "y"], "generators": ["g1", "g2"], "scores": [0.7, 0.2]},
    {"key": 2, "prompt": "p2", "responses": ["only one"], "generators": ["g2"], "scores": [1.0]},
    {
        "key": 3,
        "prompt": "p3",
        "responses": ["same", "other"],
        "generators": ["g1", "g2"],
        "scores": [0.4, 0.4],
    },
]


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
            "steps": [{"step": "CopyScores", "config": {"scale": 2.0}}, {"step": "Flaky"}],
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
            "steps": [{"step": "CopyScores", "config": {"scale": 3.0}}, {"step": "Flaky"}],
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
    from hfpref.iterate import IterateRecipe

    recipe = IterateRecipe.from_yaml(path)  # validates rounds, budget schedule, steps and training (offline)
    assert recipe.rounds >= 1


@pytest.mark.parametrize("path", CURATE_SCRIPTS, ids=lambda p: p.name)
def test_every_dataset_script_validates(path):
    recipe = Recipe.from_yaml(path)  # validates step names, config fields and values, strategies (offline)
    configs, skipped = recipe.selection_configs()
    assert list(configs) == recipe.pairs.strategies and not skipped
    for index, spec in enumerate(recipe.steps):
        step = spec.build(index)  # builds the config only: no model, tokenizer or revision is fetched
        assert type(step).__name__ == spec.step
        assert {k: getattr(step.config, k) for k in spec.config} == spec.config


def test_dataset_scripts_exist():
    names = {p.name for p in SCRIPTS.glob("*.yaml")}
    assert "ifeval_two_generators.yaml" in names
    assert len(names) >= 4  # the default plus the UltraFeedback settings


def test_embedded_default_equals_its_published_script():
    published = Recipe.from_yaml(SCRIPTS / "ifeval_two_generators.yaml")
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
    from hfpref.selection import STRATEGIES_NEEDING_REF_LOGPS

    assert set(R.STRATEGIES_NEEDING_REF_LOGPS) == set(STRATEGIES_NEEDING_REF_LOGPS)


def test_every_registered_step_imports_and_is_a_step():
    from hfpref.transform import Step

    for name in R.STEP_REGISTRY:
        assert issubclass(R.step_class(name), Step), name
