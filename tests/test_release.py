"""Release folders: Parquet configs that load_dataset reads back, the card's header and facts, the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from hfpref.pipeline.recipe import Recipe
from hfpref.release import ReleaseError, load_release, read_manifest, set_release_version
from hfpref.release.manifest import MATRIX_COLUMNS, model_references
from hfpref.release.plots import PLOT_FILE
from hfpref.release.summary import describe_values, stronger_generator_share, summary_table
from hfpref.release.writer import write_release
from tests.helpers import candidate_rows

# hand-built candidates: rewards given, so only PairMetrics (word-level) and selection run
ROWS = candidate_rows(
    responses=[["a b", "a c d", "x"], ["one two", "one"], ["solo"], ["s t", "s u"]],
    generators=[["g1", "g2", "g2"], ["g2", "g1"], ["g1"], ["g1", "g2"]],
    rewards=[[1.0, 0.0, 0.5], [1.0, 0.0], [1.0], [0.5, 0.5]],
)
STRATEGIES = ["max_margin", "best_of_n2", "ds_fix"]


def make_small_release(
    tmp_path: Path,
    *,
    logps: bool = False,
    strategies=STRATEGIES,
    folder_name="release",
    pairs_extra: dict | None = None,
    name: str = "tiny",
    **write,
):
    """Run a three-strategy recipe on ROWS (plus ``pairs_extra``: makers, mixes) and write its release;
    returns (result, folder)."""
    rows = [dict(r) for r in ROWS]
    if logps:
        for r in rows:
            r["ref_logps"] = [-1.0 - 2.0 * i for i in range(len(r["responses"]))]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = Recipe.from_dict(
        {
            "description": "A tiny test release.",
            "input": {"path": str(path)},
            "steps": [{"step": "PairMetrics", "config": {"tokenizer": None}}],
            "pairs": {
                "strategies": list(strategies),
                "config": {"generator_ranking": ["g1", "g2"]},
                **(pairs_extra or {}),
            },
            "output": {"name": name, "version": "0.3.0", "license": "cc-by-4.0"},
        }
    )
    result = recipe.run(cache_dir=tmp_path / "cache", progress=False)
    folder = write_release(result, tmp_path / folder_name, **write)
    return result, folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small")
    result, folder = make_small_release(tmp, created_at="2026-01-01T00:00:00+00:00")
    return result, folder, tmp


def test_write_release_reads_its_result_by_shape(small, tmp_path):
    """The release layer takes any object with the ``ReleaseContent`` attributes, not the pipeline's
    ``RecipeResult`` type: a plain namespace of the same values writes the same release."""
    result, folder, _ = small
    plain = types.SimpleNamespace(
        **{field.name: getattr(result, field.name) for field in dataclasses.fields(result)},
        generator_ranking=result.generator_ranking,
        ranking_source=result.ranking_source,
        edit_distance_unit=result.edit_distance_unit,
    )
    write_release(plain, tmp_path / "plain", created_at="2026-01-01T00:00:00+00:00")
    assert read_manifest(tmp_path / "plain") == read_manifest(folder)
    assert (tmp_path / "plain" / "README.md").read_text() == (folder / "README.md").read_text()


def _header(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_layout(small):
    _, folder, _ = small
    for name in [*STRATEGIES, "candidates"]:
        assert (folder / f"data/{name}/train-00000-of-00001.parquet").is_file()
    assert (folder / "README.md").is_file() and (folder / "hfpref_manifest.json").is_file()
    assert (folder / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", STRATEGIES)
def test_load_dataset_reads_back_each_strategy(small, name):
    result, folder, tmp = small
    loaded = datasets.load_dataset(str(folder), name=name, split="train", cache_dir=str(tmp / "load-cache"))
    assert loaded.to_list() == result.pairs[name].to_list()


def test_default_config_and_candidates(small):
    result, folder, tmp = small
    default = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp / "load-cache"))
    assert default.to_list() == result.pairs["max_margin"].to_list()  # the first strategy is the default
    candidates = datasets.load_dataset(
        str(folder), name="candidates", split="train", cache_dir=str(tmp / "load-cache")
    )
    expected = result.candidates.remove_columns(list(MATRIX_COLUMNS))
    assert candidates.to_list() == expected.to_list()


def test_selected_pairs_match_hand_computation(small):
    result, _, _ = small
    # p0: highest reward index 0 ("a b"), lowest index 1 ("a c d"); word Levenshtein: b->c, +d = 2
    mm = result.pairs["max_margin"]
    assert mm["key"] == [0, 1] and mm["chosen"] == ["a b", "one two"] and mm["rejected"] == ["a c d", "one"]
    assert mm["edit_distance"] == [2.0, 1.0]
    # ds_fix: g1 always chosen, whatever the reward; p3's tie is kept
    fix = result.pairs["ds_fix"]
    assert fix["key"] == [0, 1, 3] and set(fix["chosen_generator"]) == {"g1"}


def test_card_header_declares_configs_license_and_default(small):
    _, folder, _ = small
    header = _header(folder)
    assert header["license"] == "cc-by-4.0"
    configs = {c["config_name"]: c for c in header["configs"]}
    assert list(configs) == [*STRATEGIES, "candidates"]
    assert configs["max_margin"].get("default") is True
    assert sum(bool(c.get("default")) for c in configs.values()) == 1
    for name, config in configs.items():
        (entry,) = config["data_files"]
        assert entry["split"] == "train"
        assert [p.relative_to(folder).as_posix() for p in folder.glob(entry["path"])] == [
            f"data/{name}/train-00000-of-00001.parquet"
        ]


def test_manifest_counts_stats_and_steps(small):
    result, folder, _ = small
    manifest = json.loads((folder / "hfpref_manifest.json").read_text())
    assert manifest["version"] == "0.3.0" and manifest["license"] == "cc-by-4.0"
    assert [s["step"] for s in manifest["steps"]] == ["hfpref.steps.pair_metrics.PairMetrics"]
    assert manifest["steps"][0]["rows_in"] == manifest["steps"][0]["rows_out"] == 4
    assert set(manifest["pair_selection"]) == set(STRATEGIES)
    assert manifest["edit_distance_unit"] == "word" and manifest["has_logp"] is False
    assert manifest["models"] == []
    for name in STRATEGIES:
        config = manifest["configs"][name]
        assert config["rows"] + config["dropped_total"] == len(ROWS)
        assert config["rows"] == len(result.pairs[name])
    # max_margin: p0 margin 1.0, e 2; p1 margin 1.0, e 1 -> DCRM = (σ(1) - .5) / (e + 1)
    stats = manifest["configs"]["max_margin"]["stats"]
    sig = 1 / (1 + math.exp(-1.0)) - 0.5
    assert stats["reward_margin"]["mean"] == pytest.approx(1.0)
    assert stats["edit_distance"]["median"] == pytest.approx(1.5)
    assert stats["dcrm"]["mean"] == pytest.approx((sig / 3 + sig / 2) / 2)
    assert stats["logp_diff"] is None
    assert manifest["configs"]["max_margin"]["dropped"] == {"fewer_than_two_responses": 1, "rewards_tied": 1}
    # g1 ranks higher: p0 chosen "a b" from g1 (stronger), p1 chosen from g2 (weaker) -> 1 of 2
    share = manifest["configs"]["max_margin"]["stronger_generator"]
    assert (share["stronger_chosen"], share["compared"]) == (1, 2)
    assert manifest["configs"]["ds_fix"]["stronger_generator"]["fraction"] == 1.0
    assert manifest["input"]["kind"] == "path" and len(manifest["input"]["files_sha256"]) == 1


def test_card_states_what_a_reader_needs(small):
    _, folder, _ = small
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert f"]({PLOT_FILE})" in card
    assert "n/a — no reference model" in card and "**word-level**" in card
    assert 'load_dataset("path/to/this/folder", name="max_margin"' in card
    assert "None, so there is no model commit to report" in card
    assert "strategies:\n  - max_margin" in card  # the recipe as run, as YAML
    for package in ("datasets", "transformers", "trl", "lm-eval", "rapidfuzz", "torch"):
        assert f"| {package} |" in card
    assert "`max_margin` | 2 | fewer_than_two_responses: 1; rewards_tied: 1 | 50.0% (1/2)" in card


def test_rewrite_is_deterministic_except_the_timestamp(small, tmp_path):
    result, folder, _ = small
    again = write_release(result, tmp_path / "again", created_at="2027-05-05T00:00:00+00:00")
    first = json.loads((folder / "hfpref_manifest.json").read_text())
    second = json.loads((again / "hfpref_manifest.json").read_text())
    assert first.pop("created_at") != second.pop("created_at")
    assert first == second
    for name in [*STRATEGIES, "candidates"]:
        path = f"data/{name}/train-00000-of-00001.parquet"
        assert (folder / path).read_bytes() == (again / path).read_bytes()
    assert (folder / PLOT_FILE).read_bytes() == (again / PLOT_FILE).read_bytes()


def test_with_reference_logps_the_card_reports_p_delta(tmp_path):
    result, folder = make_small_release(tmp_path, logps=True)
    manifest = read_manifest(folder)
    assert manifest["has_logp"] is True
    # max_margin p0: chosen index 0 (logp -1), rejected index 1 (logp -3) -> p_Δ 2; p1 the same -> 2
    assert manifest["configs"]["max_margin"]["stats"]["logp_diff"]["mean"] == pytest.approx(2.0)
    assert "n/a — no reference model" not in (folder / "README.md").read_text()


def test_version_and_repo_rewritten_into_card_and_manifest(tmp_path):
    _, folder = make_small_release(tmp_path)
    set_release_version(folder, "1.0.0", "me/tiny")
    manifest = read_manifest(folder)
    assert manifest["version"] == "1.0.0" and manifest["repo_id"] == "me/tiny"
    assert yaml.safe_load(manifest["recipe_yaml"])["output"]["version"] == "1.0.0"
    card = (folder / "README.md").read_text()
    assert 'load_dataset("me/tiny", name="max_margin", revision="v1.0.0", split="train")' in card
    assert "# tiny — version 1.0.0" in card


def test_refuses_foreign_folder_and_clears_old_configs(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="holds no hfpref_manifest.json"):
        make_small_release(tmp_path, folder_name="foreign")
    _, folder = make_small_release(tmp_path, folder_name="rel")
    _, folder = make_small_release(tmp_path, folder_name="rel", strategies=["max_margin"])
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["candidates", "max_margin"]
    assert [c["config_name"] for c in _header(folder)["configs"]] == ["max_margin", "candidates"]


def test_manifest_hashes_the_files_written(small):
    _, folder, _ = small
    files = read_manifest(folder)["files"]
    expected = [f"data/{c}/train-00000-of-00001.parquet" for c in [*STRATEGIES, "candidates"]]
    assert sorted(files) == sorted([*expected, PLOT_FILE])
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, name


def test_refuses_a_folder_holding_another_release_unless_forced(tmp_path):
    _, folder = make_small_release(tmp_path, folder_name="rel")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(ReleaseError, match=r"holds the release 'tiny', not 'other'.*--force"):
        make_small_release(tmp_path, folder_name="rel", name="other")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before, "nothing was touched"
    make_small_release(tmp_path, folder_name="rel", name="tiny", strategies=["max_margin"])  # same name: ok
    make_small_release(tmp_path, folder_name="rel", name="other", force=True)
    assert read_manifest(folder)["name"] == "other"
    # a folder that is not a release is refused even with force: it may hold anything
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="holds no hfpref_manifest.json"):
        make_small_release(tmp_path, folder_name="foreign", force=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_symlinked_release_folder_keeps_its_link(tmp_path):
    _, real = make_small_release(tmp_path, folder_name="real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    make_small_release(tmp_path, folder_name="link", strategies=["max_margin"])
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (real / "data").iterdir()) == ["candidates", "max_margin"]
    assert sorted(p.name for p in tmp_path.iterdir() if "real" in p.name or "link" in p.name) == [
        "link",
        "real",
        "real.lock",
    ]


# ---- summary helpers, on hand-made values ------------------------------------------------------------


def test_describe_values_skips_missing_and_nan():
    stats = describe_values([1.0, None, 3.0, float("nan"), 5.0])
    assert stats == {
        "mean": 3.0,
        "median": 3.0,
        "std": pytest.approx(np.std([1, 3, 5])),
        "min": 1.0,
        "max": 5.0,
        "count": 3,
    }
    assert describe_values([None]) is None


def test_stronger_generator_share():
    share = stronger_generator_share(["a", "b", "a", "c", "a"], ["b", "a", "a", "a", "b"], ["a", "b"])
    # compared: (a,b) yes, (b,a) no, (a,b) yes; (a,a) same; (c,a) unranked
    assert share == {
        "stronger_chosen": 2,
        "compared": 3,
        "same_generator": 1,
        "unranked": 1,
        "fraction": 2 / 3,
    }
    assert stronger_generator_share(["a"], ["b"], None) is None


def test_identical_strategies_are_marked(small):
    _, folder, _ = small
    configs = read_manifest(folder)["configs"]
    # hand check: best_of_n2 on p0 takes the DCRM-best positive-margin pair; it differs from max_margin iff pairs differ
    same = configs["best_of_n2"]["same_pairs_as"]
    mm = datasets.load_dataset(
        str(folder), name="max_margin", split="train", cache_dir=str(folder.parent / "lc")
    )
    bo = datasets.load_dataset(
        str(folder), name="best_of_n2", split="train", cache_dir=str(folder.parent / "lc")
    )
    identical = [(r["prompt"], r["chosen"], r["rejected"]) for r in mm] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in bo
    ]
    assert (same == "max_margin") == identical
    assert configs["max_margin"]["same_pairs_as"] is None


def test_summary_table_lists_every_reason(small):
    _, folder, _ = small
    configs = {k: v for k, v in read_manifest(folder)["configs"].items() if v["kind"] == "pairs"}
    table = summary_table(configs)
    lines = table.splitlines()
    # first table: kept, dropped in all, ..., stronger chosen, same pair as best_of_n2 (the reference)
    row = next(line.split() for line in lines if line.startswith("max_margin"))
    assert row[1:3] == ["2", "2"]
    assert row[-2] == "50.0%"
    # second table: the drop reasons of each strategy, by name
    reasons = [line for line in lines if line.startswith("max_margin")][1]
    assert "fewer_than_two_responses 1" in reasons and "rewards_tied 1" in reasons


def test_model_references_from_step_descriptions():
    refs = model_references(
        [
            {
                "step": "x.RewardAnnotator",
                "config": {"model": "org/rm", "revision": "main"},
                "revision": "abc",
            },
            {"step": "x.PairMetrics", "config": {"tokenizer": None}, "revision": None},
        ]
    )
    assert refs == [
        {
            "step": "x.RewardAnnotator",
            "field": "model",
            "id": "org/rm",
            "requested_revision": "main",
            "revision": "abc",
        }
    ]


def test_load_release_tells_apart_two_folders_with_the_same_name(tmp_path):
    """datasets 5.2 caches a folder's card configs by folder *name*; load_release must read the files."""
    import pandas as pd

    from hfpref.release import load_release

    card = "---\nconfigs:\n- config_name: best\n  data_files:\n  - split: train\n    path: data/best/train-*.parquet\n---\n"
    for parent, value in (("a", 1), ("b", 2)):
        data = tmp_path / parent / "release" / "data" / "best"
        data.mkdir(parents=True)
        (tmp_path / parent / "release" / "README.md").write_text(card)
        pd.DataFrame({"x": [value, value]}).to_parquet(data / "train-00000-of-00001.parquet")
    assert load_release(tmp_path / "a" / "release", "best")["x"] == [1, 1]
    assert load_release(tmp_path / "b" / "release", "best")["x"] == [2, 2]
    assert load_release(tmp_path / "b" / "release")["x"] == [2, 2]  # the only config is the default


# ---- pair makers and mixes ---------------------------------------------------------------------------

CONTRAST = {"score_column": "rewards", "high_min_gap": 0.6, "low_max_gap": 0.5}
MAKERS_AND_MIXES = {
    "makers": [
        {"name": "rs_high", "step": "ContrastPairs", "config": {"mode": "high", **CONTRAST}},
        {"name": "rs_low", "step": "ContrastPairs", "config": {"mode": "low", **CONTRAST}},
        {"name": "echo", "step": "EchoPairs", "config": {}},  # pairs without e_Δ or r_Δ columns
    ],
    "mixes": [{"name": "rs_mix", "from": ["rs_high", "rs_low"], "ratio_high": 0.5}],
}
MADE = ["rs_high", "rs_low", "echo", "rs_mix"]


@pytest.fixture(scope="module")
def with_makers(small, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        from hfpref.pipeline import recipe as R

        patch.setitem(R.STEP_REGISTRY, "EchoPairs", "tests.test_recipe:EchoPairs")
        tmp = tmp_path_factory.mktemp("makers")
        result, folder = make_small_release(
            tmp, pairs_extra=MAKERS_AND_MIXES, created_at="2026-01-01T00:00:00+00:00"
        )
        yield result, folder, tmp


def test_strategy_configs_are_the_same_bytes_with_makers(small, with_makers):
    _, plain, _ = small
    _, folder, _ = with_makers
    for name in [*STRATEGIES, "candidates"]:
        path = f"data/{name}/train-00000-of-00001.parquet"
        assert (folder / path).read_bytes() == (plain / path).read_bytes(), name
    assert [c["config_name"] for c in _header(folder)["configs"]] == [*STRATEGIES, *MADE, "candidates"]
    assert _header(folder)["configs"][0].get("default") is True


def test_maker_and_mix_configs_by_hand(with_makers):
    result, folder, _ = with_makers
    # p0 rewards 1, 0, 0.5: gap 1 (0 over 1) high, gaps 0.5 low (0 over 2 first: better chosen);
    # p1 1 vs 0: high only; p2 one response; p3 tied
    high, low = load_release(folder, "rs_high"), load_release(folder, "rs_low")
    assert (high["key"], high["chosen"], high["rejected"]) == ([0, 1], ["a b", "one two"], ["a c d", "one"])
    assert high["edit_distance"] == [2.0, 1.0]  # from PairMetrics' matrices, as max_margin's
    assert (low["key"], low["chosen"], low["rejected"]) == ([0], ["a b"], ["x"])
    mix = load_release(folder, "rs_mix")
    assert mix.to_list() == result.pairs["rs_mix"].to_list()
    assert mix["contrast_level"] == ["high", "high", "low"]
    manifest = read_manifest(folder)
    assert manifest["configs"]["rs_low"]["dropped"] == {
        "fewer_than_two_responses": 1,
        "no_low_contrast_pair": 1,
        "scores_tied": 1,
    }
    assert manifest["configs"]["echo"]["dropped"] == {"no_pair": 1}  # EchoPairs drops p2
    assert manifest["configs"]["echo"]["stats"]["edit_distance"] is None


def test_manifest_and_card_describe_makers_and_mixes(with_makers):
    _, folder, _ = with_makers
    manifest = read_manifest(folder)
    assert manifest["recipe"]["pairs"]["strategies"] == STRATEGIES
    assert manifest["recipe"]["pairs"]["makers"] == MAKERS_AND_MIXES["makers"]
    assert list(manifest["pair_selection"]) == [*STRATEGIES, *MADE]
    assert manifest["configs"]["rs_low"]["made_by"] == {
        "kind": "maker",
        "step": "ContrastPairs",
        "source": "candidates",
    }
    assert manifest["configs"]["rs_mix"]["made_by"] == {"kind": "mix", "from": ["rs_high", "rs_low"]}
    assert all("made_by" not in manifest["configs"][name] for name in STRATEGIES)
    mix = manifest["pair_selection"]["rs_mix"]
    assert mix["step"] == "hfpref.steps.contrast.mix_contrast" and mix["config"]["size"] == 3
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "one per pair maker and per mix (`rs_high`, `rs_low`, `echo`, `rs_mix`" in card
    from hfpref.steps.contrast import ContrastPairs

    assert (
        f"| `rs_low` | `hfpref.steps.contrast.ContrastPairs` | candidates | {ContrastPairs.version} |" in card
    )
    assert '| `echo` | `tests.test_recipe.EchoPairs` | candidates | 1 | `{"skip": "p2"}` | — |' in card
    assert "| `rs_mix` | `rs_high`, `rs_low` | 0.5 | 3 | 0 | — | False |" in card
    strategies_table = card.split("Pair selection, one run per strategy:")[1].split("Pair makers")[0]
    assert "`rs_high`" not in strategies_table and "`max_margin`" in strategies_table
    assert (folder / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cards_recipe_is_the_recipe_as_run(with_makers):
    result, folder, _ = with_makers
    card = (folder / "README.md").read_text(encoding="utf-8")
    block = card.split("### The recipe as run\n\n```yaml\n")[1].split("```")[0]
    from hfpref.pipeline import recipe as R

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(R.STEP_REGISTRY, "EchoPairs", "tests.test_recipe:EchoPairs")
        rerun = Recipe.from_dict(yaml.safe_load(block))  # validates: a recipe hfpref curate accepts
    assert rerun.to_dict() == read_manifest(folder)["recipe"]
    assert rerun.pairs.to_dict() == {**result.recipe.pairs.to_dict(), "strategies": STRATEGIES}


def test_versions_are_checked_by_the_release_layer_and_the_recipe_keeps_its_error():
    from hfpref.pipeline.recipe import RecipeError
    from hfpref.pipeline.recipe import check_version as recipe_check_version
    from hfpref.release.version import check_version

    assert check_version("0.1.0-round.2") == "0.1.0-round.2"
    with pytest.raises(ReleaseError, match=r"version: 'v1' is not a version like 0.1.0"):
        check_version("v1")
    with pytest.raises(RecipeError, match=r"output.version: 'v1' is not a version like 0.1.0"):
        recipe_check_version("v1", "output.version")
