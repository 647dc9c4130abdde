"""`hfpref curate` end to end on the embedded two-generator recipe (run once per module; N = 2 makes the
expected pairs easy to compute), checked against expectations computed here from the release's own
candidates rows. The eight-generator default is tested in tests/test_default_release.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from hfpref.cli.main import main
from hfpref.pipeline.recipe import DEFAULT_STRATEGIES, Recipe
from tests.helpers import curate_quietly

TWO_GENERATORS = Path(__file__).resolve().parents[1] / "dataset_scripts" / "ifeval_two_generators.yaml"

STRONGER, WEAKER = "gpt-4-20231107", "text-bison-001"
REWARD_LABELLED = [s for s in DEFAULT_STRATEGIES if s != "ds_fix"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate")
    folder, stdout = curate_quietly(tmp, str(TWO_GENERATORS))
    candidates = datasets.load_dataset(
        str(folder), name="candidates", split="train", cache_dir=str(tmp / "lc")
    )
    return {"tmp": tmp, "folder": folder, "stdout": stdout, "candidates": candidates}


def _pairs(run, name):
    return datasets.load_dataset(
        str(run["folder"]), name=name, split="train", cache_dir=str(run["tmp"] / "lc")
    )


def _manifest(run):
    return json.loads((run["folder"] / "hfpref_manifest.json").read_text())


def _expected_outcomes(candidates):
    """Per row, what a reward-labelled strategy must do with N = 2 candidates: (reason or None)."""
    outcomes = {}
    for row in candidates:
        responses, rewards = row["responses"], row["rewards"]
        if len(responses) < 2:
            outcomes[row["key"]] = "fewer_than_two_responses"
        elif responses[0] == responses[1]:
            outcomes[row["key"]] = "identical_responses"
        elif rewards[0] == rewards[1]:
            outcomes[row["key"]] = "rewards_tied"
        else:
            outcomes[row["key"]] = None
    return outcomes


def test_candidates_are_the_541_prompts_with_verdicts(run):
    candidates = run["candidates"]
    assert candidates.num_rows == 541
    assert all(all(text.strip() for text in row["responses"]) for row in candidates)  # no empty response
    for row in candidates:
        # rewards are the strict fraction of constraints met, from the verdicts
        assert row["rewards"] == pytest.approx([sum(v) / len(v) for v in row["ifeval_strict"]])
    assert [r["generators"] for r in candidates if r["key"] == 2785] == [[WEAKER]]


def test_row_counts_and_drop_reasons(run):
    outcomes = _expected_outcomes(run["candidates"])
    manifest = _manifest(run)
    expected_reasons = {}
    for reason in outcomes.values():
        if reason:
            expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert expected_reasons["fewer_than_two_responses"] == 1  # key 2785
    kept_keys = sorted(k for k, reason in outcomes.items() if reason is None)
    for name in REWARD_LABELLED:
        config = manifest["configs"][name]
        assert config["rows"] + config["dropped_total"] == 541
        assert config["dropped"] == expected_reasons, name
        pairs = _pairs(run, name)
        assert sorted(pairs["key"]) == kept_keys
        assert all(c > r for c, r in zip(pairs["reward_chosen"], pairs["reward_rejected"], strict=True))
    fix = manifest["configs"]["ds_fix"]
    not_fix = {k: v for k, v in expected_reasons.items() if k != "rewards_tied"}
    assert fix["dropped"] == not_fix and fix["rows"] == 541 - sum(not_fix.values())
    assert set(_pairs(run, "ds_fix")["chosen_generator"]) == {STRONGER}
    for name in DEFAULT_STRATEGIES:
        assert 2785 not in _pairs(run, name)["key"]


def test_printed_summary(run):
    stdout = run["stdout"]
    manifest = _manifest(run)
    candidates = run["candidates"]
    outcomes = _expected_outcomes(candidates)
    kept = [r for r in candidates if outcomes[r["key"]] is None]
    stronger = sum(r["rewards"][0] > r["rewards"][1] for r in kept) / len(kept)  # GPT-4's response is first
    for name in DEFAULT_STRATEGIES:
        line = next(line for line in stdout.splitlines() if line.startswith(name + " "))
        cells = line.split()
        assert cells[1] == str(manifest["configs"][name]["rows"])
        expected = 1.0 if name == "ds_fix" else stronger
        assert f"{100 * expected:.1f}%" in cells
    assert "rewards_tied" in stdout and "fewer_than_two_responses" in stdout
    assert "e_Δ unit: word" in stdout and "release written to" in stdout


def test_folder_loads_the_rows_a_rerun_computes_and_the_rerun_is_a_cache_hit(run):
    cache = run["tmp"] / "cache"
    arrow_files = sorted(str(p) for p in cache.rglob("*.arrow"))
    result = Recipe.from_yaml(TWO_GENERATORS).run(cache_dir=cache, progress=False)
    assert sorted(str(p) for p in cache.rglob("*.arrow")) == arrow_files, (
        "a finished recipe must be all cache hits"
    )
    for name in DEFAULT_STRATEGIES:
        assert _pairs(run, name).to_list() == result.pairs[name].to_list(), name


def test_card_header_and_manifest(run):
    folder = run["folder"]
    card = (folder / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "apache-2.0"
    assert [c["config_name"] for c in header["configs"]] == [*DEFAULT_STRATEGIES, "candidates"]
    for config in header["configs"]:
        assert len(list(folder.glob(config["data_files"][0]["path"]))) == 1
    manifest = _manifest(run)
    assert [s["step"] for s in manifest["steps"]] == [
        "hfpref.steps.ifeval.IFEvalVerifier",
        "hfpref.steps.pair_metrics.PairMetrics",
    ]
    assert manifest["steps"][0]["config"]["reward"] == "strict"
    assert manifest["edit_distance_unit"] == "word" and manifest["models"] == []
    assert manifest["input"]["kind"] == "default" and len(manifest["input"]["files_sha256"]) == 2
    assert manifest["generator_ranking"] == [STRONGER, WEAKER]
    for sha in manifest["input"]["files_sha256"].values():
        assert sha in card
    assert "n/a — no reference model" in card and "**word-level**" in card
    assert (folder / manifest["plot"]).is_file() and f"]({manifest['plot']})" in card
    assert "`gpt-4-20231107` > `text-bison-001`" in card and "ranking **given** to the recipe" in card
    assert manifest["generator_ranking_source"] == "given" and manifest["generator_accuracy"] is None


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    text = capsys.readouterr().out
    for option in (
        "RECIPE.yaml", "--output", "--strategies", "--tokenizer", "--input", "--cache-dir", "--batch-size",
        "--num-proc", "--version", "--push-to-hub", "--revision", "--private", "--token", "--force", "--no-progress",
    ):  # fmt: skip
        assert option in text, option
    from hfpref.steps.selection import STRATEGIES

    for strategy in STRATEGIES:
        assert strategy in text, strategy


def test_recipe_file_with_overrides(tmp_path, capsys):
    rows = [
        {"key": 0, "prompt": "p", "responses": ["a b", "a"], "rewards": [1.0, 0.0]},
        {"key": 1, "prompt": "q", "responses": ["x"], "rewards": [1.0]},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "input: {default: ifeval}\nsteps: [{step: PairMetrics}]\n"
        "pairs: {strategies: [best_of_n2, random]}\noutput: {name: small}\n"
    )
    args = ["curate", str(recipe), "--input", str(data), "--strategies", "max_margin", "--no-progress"]
    args += ["--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--version", "2.1.0"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "out" / "hfpref_manifest.json").read_text())
    assert list(manifest["pair_selection"]) == ["max_margin"] and manifest["version"] == "2.1.0"
    assert manifest["configs"]["max_margin"]["rows"] == 1
    assert manifest["configs"]["max_margin"]["dropped"] == {"fewer_than_two_responses": 1}
    assert manifest["recipe"]["input"] == {"path": str(data)}


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["curate", "--strategies", "best_of_n3", "--output", str(tmp_path / "o")]) == 2
    assert "unknown strategy 'best_of_n3'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {default: ifeval}\nsteps: [{step: Nope}]\npairs: {strategies: all}\n")
    assert main(["curate", str(bad)]) == 2
    assert "unknown step 'Nope'" in capsys.readouterr().err


def test_push_to_hub_after_curate(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace
    from unittest import mock

    api = mock.MagicMock()
    api.list_repo_refs.return_value = SimpleNamespace(tags=[], branches=[], converts=[])
    api.upload_folder.return_value = SimpleNamespace(oid="f" * 40, commit_url="u")
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api)
    monkeypatch.setattr(
        "hfpref.pipeline.preflight.check_hub_reachable", lambda what: None
    )  # the mock is the Hub
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["a b", "a"], "rewards": [1.0, 0.0]}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"input: {{path: {data}}}\nsteps: [{{step: PairMetrics}}]\npairs: {{strategies: [max_margin]}}\n"
    )
    args = ["curate", str(recipe), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    args += ["--push-to-hub", "me/pairs", "--version", "0.9.0", "--private", "--no-progress"]
    assert main(args) == 0
    assert api.create_repo.call_args.kwargs["private"] is True
    assert api.upload_folder.call_args.kwargs["folder_path"] == str(tmp_path / "out")
    assert api.create_tag.call_args.kwargs["tag"] == "v0.9.0"
    assert "tag v0.9.0" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "hfpref_manifest.json").read_text())
    assert manifest["repo_id"] == "me/pairs" and manifest["version"] == "0.9.0"


def _tiny_recipe(tmp_path, rows, name="small"):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"input: {{path: {data}}}\nsteps: [{{step: PairMetrics}}]\npairs: {{strategies: [max_margin]}}\n"
        f"output: {{name: {name}}}\n"
    )
    return recipe, data


def test_strategies_all_runs_every_strategy_that_applies(tmp_path, capsys):
    rows = [{"key": 0, "prompt": "p", "responses": ["a b", "a", "c"], "rewards": [1.0, 0.0, 0.5]}]
    recipe, _ = _tiny_recipe(tmp_path, rows)
    args = ["curate", str(recipe), "--strategies", "all", "-o", str(tmp_path / "out")]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    manifest = json.loads((tmp_path / "out" / "hfpref_manifest.json").read_text())
    ran = list(manifest["pair_selection"])
    assert {"best_of_n2", "max_margin", "random", "edit_only", "reward_only"} <= set(ran)
    # no reference log-probs: the p_Δ-only strategies are skipped with the reason, not run
    assert "logp_only" in manifest["skipped_strategies"] and "logp_only" not in ran
    assert manifest["recipe"]["pairs"]["strategies"] == ran


def test_input_edited_in_place_with_its_old_mtime_is_read_again(tmp_path):
    rows = [{"key": k, "prompt": f"p{k}", "responses": ["a b", "a"], "rewards": [1.0, 0.0]} for k in range(3)]
    recipe, data = _tiny_recipe(tmp_path, rows)
    args = ["curate", str(recipe), "--input", str(data), "-o", str(tmp_path / "out")]
    args += ["--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 0
    stat = os.stat(data)
    # what cp -p / rsync -a / unzip do: new bytes (here of the same size), the old modification time
    edited = [{**r, "prompt": r["prompt"].replace("p", "q")} for r in rows]
    data.write_text("".join(json.dumps(r) + "\n" for r in edited))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(data).st_size == stat.st_size and os.stat(data).st_mtime_ns == stat.st_mtime_ns
    assert main(args) == 0
    folder = tmp_path / "out"
    read = lambda config: pq.read_table(folder / f"data/{config}/train-00000-of-00001.parquet")  # noqa: E731
    assert read("candidates").column("prompt").to_pylist() == ["q0", "q1", "q2"]
    assert read("max_margin").column("prompt").to_pylist() == ["q0", "q1", "q2"]  # step caches follow
    manifest = json.loads((folder / "hfpref_manifest.json").read_text())
    assert manifest["input"]["files_sha256"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}


def test_a_folder_holding_another_release_needs_force(tmp_path, capsys):
    rows = [{"key": 0, "prompt": "p", "responses": ["a b", "a"], "rewards": [1.0, 0.0]}]
    first, _ = _tiny_recipe(tmp_path, rows, name="first")
    out = ["-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["curate", str(first), *out]) == 0
    capsys.readouterr()
    second, _ = _tiny_recipe(tmp_path, rows, name="second")
    assert main(["curate", str(second), *out]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out'} holds the release 'first', not 'second'" in err and "--force" in err
    assert json.loads((tmp_path / "out" / "hfpref_manifest.json").read_text())["name"] == "first"
    assert main(["curate", str(second), *out, "--force"]) == 0
    assert json.loads((tmp_path / "out" / "hfpref_manifest.json").read_text())["name"] == "second"


# ---- the command line is generated from option dataclasses ------------------------------------------------


def test_help_imports_neither_transformers_nor_trl_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from hfpref.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('transformers', 'trl', 'torch') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_curate_and_iterate_spell_the_run_options_alike():
    from hfpref.cli.main import build_parser
    from hfpref.cli.parsing import leaf_parser

    parser = build_parser()
    flags = {name: set(leaf_parser(parser, [name])._option_string_actions) for name in ("curate", "iterate")}
    for flag in (
        "--engine",
        "--gpus",
        "--shard-rows",
        "--address",
        "--concurrency",
        "--cache-dir",
        "--batch-size",
    ):
        assert all(flag in options for options in flags.values()), flag
    assert "--no-progress" in flags["iterate"] and "--quiet" not in flags["iterate"]  # --quiet: global alias


def test_iterate_passes_engine_options_only_when_given(tmp_path, monkeypatch, capsys):
    from hfpref.cli import iterate
    from hfpref.cli.options import RunOptions

    assert iterate.engine_options(RunOptions()) == {}
    assert iterate.engine_options(RunOptions(gpus=2, shard_rows=10)) == {"gpus": 2, "shard_rows": 10}
    assert main(["iterate", str(tmp_path / "loop.yaml"), "--address", "auto"]) == 2
    assert "--address applies to --engine ray only" in capsys.readouterr().err
    assert main(["iterate", str(tmp_path / "loop.yaml"), "--gpus", "0"]) == 2
    assert "--gpus must be at least 1, got 0" in capsys.readouterr().err
