"""Issue 13, items 9-11: mistakes are refused early, with one line that says what, where and how to fix.

CLI tests run ``hfpref.cli.main.main`` in-process (fast) and two through a subprocess (exit status, and that
stderr is exactly one line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal

import datasets
import pytest

from hfpref.cli import main as cli
from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.step import (
    ROW_ERROR,
    ConfigError,
    RowError,
    Step,
    StepConfig,
    check_config_values,
    type_problem,
)
from hfpref.pipeline.preflight import InputFileError, OutputFolderError, check_input_file, check_output_folder
from hfpref.pipeline.recipe import STEP_REGISTRY, Recipe, RecipeError
from hfpref.steps.selection import split_dropped

# ---- a step that fails on chosen rows, and counts the rows it processes ------------------------------


@dataclasses.dataclass
class FlakyConfig(StepConfig):
    """Rewards are the response lengths; a row whose prompt is in ``bad`` raises RowError."""

    bad: list[str] = dataclasses.field(default_factory=list)
    scale: float = 1.0


class FlakyRewards(Step):
    """Input: prompt, responses. Output: rewards (scale * len(response))."""

    config_class = FlakyConfig
    processed: list[str] = []  # prompts processed, across instances (the test reads it)

    def input_columns(self) -> list[str]:
        return [C.PROMPT, C.RESPONSES]

    def output_columns(self) -> list[str]:
        return [C.REWARDS]

    def process(self, batch, rank, indices):
        rewards = []
        for i, prompt in enumerate(batch[C.PROMPT]):
            if prompt in self.config.bad:
                raise RowError(f"FlakyRewards: row {indices[i] if indices else i} prompt {prompt!r} is bad")
            FlakyRewards.processed.append(prompt)
            rewards.append([self.config.scale * len(r) for r in batch[C.RESPONSES][i]])
        return {C.REWARDS: rewards}


class Lengths(Step):
    """Input: responses. Output: ``n_chars`` (total characters); fails on a None responses list."""

    config_class = StepConfig

    def input_columns(self) -> list[str]:
        return [C.RESPONSES]

    def output_columns(self) -> list[str]:
        return ["n_chars"]

    def process(self, batch, rank, indices):
        return {"n_chars": [sum(len(r) for r in responses) for responses in batch[C.RESPONSES]]}


ROWS = [
    {"prompt": "p0", "responses": ["a", "bbb"]},
    {"prompt": "p1", "responses": ["cc", "d"]},
    {"prompt": "p2", "responses": ["eeee", "ff"]},
    {"prompt": "p3", "responses": ["g", "hhhhh"]},
]


@pytest.fixture(autouse=True)
def _reset_processed():
    FlakyRewards.processed = []


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---- item 11: on_row_error ---------------------------------------------------------------------------


def test_row_error_raise_is_the_default():
    ds = datasets.Dataset.from_list(ROWS)
    with pytest.raises(RowError, match="'p1' is bad"):
        FlakyRewards(bad=["p1"]).apply(ds, batch_size=4)


def test_row_error_drop_keeps_the_row_with_none_and_a_counted_reason():
    ds = datasets.Dataset.from_list(ROWS)
    out = FlakyRewards(bad=["p1"], on_row_error="drop").apply(ds, batch_size=4)
    assert len(out) == 4  # nothing disappears
    # the good rows get what a clean run over them gives: scale * length, by hand
    assert out[C.REWARDS] == [[1.0, 3.0], None, [4.0, 2.0], [1.0, 5.0]]
    assert out[C.DROP_REASON] == [None, "row_error", None, None]
    assert out[ROW_ERROR][0] is None and out[ROW_ERROR][2] is None
    assert (
        "FlakyRewards" in out[ROW_ERROR][1] and "row 1" in out[ROW_ERROR][1] and "'p1'" in out[ROW_ERROR][1]
    )
    assert out[C.PROMPT] == ["p0", "p1", "p2", "p3"]  # input columns untouched


def test_row_error_drop_retries_row_by_row_only_where_needed():
    ds = datasets.Dataset.from_list(ROWS)
    FlakyRewards(on_row_error="drop").apply(ds, batch_size=2)
    assert FlakyRewards.processed == ["p0", "p1", "p2", "p3"]  # no error: each row once
    FlakyRewards.processed = []
    FlakyRewards(bad=["p3"], on_row_error="drop").apply(ds, batch_size=2)
    # batch 1 clean; batch 2 fails at p3 after p2, then p2 and p3 are retried alone
    assert FlakyRewards.processed == ["p0", "p1", "p2", "p2"]


def test_every_bad_row_in_a_batch_and_the_ray_numpy_format():
    import numpy as np

    step = FlakyRewards(bad=["p0", "p1"], on_row_error="drop")
    batch = {C.PROMPT: np.array(["p0", "p1"]), C.RESPONSES: np.array([["a"], ["b"]], dtype=object)}
    out = step(batch)
    assert list(out[C.DROP_REASON]) == ["row_error", "row_error"]
    assert list(out[C.PROMPT]) == ["p0", "p1"]  # Ray keeps only what is returned: inputs come back
    assert list(out[C.REWARDS]) == [None, None]


def test_a_later_step_skips_rows_an_earlier_step_dropped():
    ds = datasets.Dataset.from_list(ROWS)
    ds = FlakyRewards(bad=["p2"], on_row_error="drop").apply(ds, batch_size=4)
    # Lengths' own policy is "raise", and row p2's responses are fine: it must still not be processed,
    # and its earlier message survives
    out = Lengths().apply(ds, batch_size=4)
    assert out["n_chars"] == [4, 3, None, 6]
    assert out[C.DROP_REASON] == [None, None, "row_error", None]
    assert "'p2'" in out[ROW_ERROR][2]


def test_pair_selection_counts_dropped_rows_as_row_error():
    from hfpref.steps.selection import PairSelector

    ds = FlakyRewards(bad=["p1"], on_row_error="drop").apply(datasets.Dataset.from_list(ROWS), batch_size=4)
    pairs = PairSelector(strategy="max_margin").apply(ds, batch_size=4)
    kept, reasons = split_dropped(pairs)
    assert len(kept) == 3
    assert list(reasons) == ["row_error"]
    # max_margin: chosen = highest reward (longest here), rejected = lowest
    assert kept[C.CHOSEN] == ["bbb", "eeee", "hhhhh"]


def test_on_row_error_is_validated_and_fingerprinted_only_when_drop():
    with pytest.raises(ConfigError, match=r"on_row_error: expected one of 'raise', 'drop', got str 'skip'"):
        FlakyRewards(on_row_error="skip")
    default = FlakyRewards()
    assert "on_row_error" not in default.describe()["config"]
    assert default.fingerprint() == FlakyRewards(on_row_error="raise").fingerprint()
    assert default.fingerprint() != FlakyRewards(on_row_error="drop").fingerprint()


# ---- item 10: config field types ---------------------------------------------------------------------


@dataclasses.dataclass
class Inner:
    size: int = 1


@dataclasses.dataclass
class TypedConfig(StepConfig):
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    maybe: int | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    mode: Literal["a", "b"] = "a"
    inner: Inner = dataclasses.field(default_factory=Inner)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", 3),
        ("rate", 2),  # float accepts int
        ("rate", 0.1),
        ("flag", True),
        ("name", "y"),
        ("maybe", None),
        ("maybe", 7),
        ("names", ["a", "b"]),
        ("names", ("a",)),
        ("weights", {"k": 1, "j": 0.5}),
        ("mode", "b"),
        ("inner", Inner(2)),
        ("inner", {"size": 3}),
    ],
)
def test_values_of_the_right_type_pass(field, value):
    check_config_values(TypedConfig, {field: value}, "S")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", "64", "S.count: expected int, got str '64'; write the number without quotes: 64"),
        ("count", True, "S.count: expected int, got bool True"),
        ("count", 1.5, "S.count: expected int, got float 1.5"),
        ("rate", "5e-7", "YAML reads 5e-7 as a string: write it with a dot, e.g. 5.0e-7"),
        ("flag", "yes", "S.flag: expected bool (true or false), got str 'yes'"),
        ("name", 3, "S.name: expected str, got int 3"),
        ("maybe", "lots", "S.maybe: expected int | None, got str 'lots'"),
        ("names", "a,b", "S.names: expected list[str], got str 'a,b'"),
        ("names", ["a", 2], "S.names[1]: expected str, got int 2"),
        ("weights", {"k": "x"}, "S.weights['k']: expected float, got str 'x'"),
        ("weights", {1: 1.0}, "S.weights key 1: expected str, got int 1"),
        ("mode", "c", "S.mode: expected one of 'a', 'b', got str 'c'"),
        ("inner", {"size": "big"}, "S.inner.size: expected int, got str 'big'"),
        ("inner", {"sise": 1}, "S.inner: unknown config field 'sise' for Inner"),
        ("nope", 1, "S: unknown config field 'nope' for TypedConfig"),
    ],
)
def test_values_of_the_wrong_type_name_field_value_and_type(field, value, message):
    with pytest.raises(ConfigError) as caught:
        check_config_values(TypedConfig, {field: value}, "S")
    assert message in str(caught.value)


def test_type_problem_literal_compares_types():
    assert type_problem(1, Literal[True], "f") is not None  # 1 == True, but not a bool
    assert type_problem(True, Literal[True], "f") is None


def test_python_api_checks_types_before_any_model_loads(tiny_models, monkeypatch):
    from hfpref.models import step as model_step
    from hfpref.steps.logprobs import LogProbAnnotator, LogProbConfig

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(model_step, "load_model", no_loading)
    monkeypatch.setattr(model_step, "load_tokenizer", no_loading)
    policy = str(tiny_models["policy"])
    with pytest.raises(
        ConfigError, match=r"LogProbAnnotator config.token_budget: expected int, got str 'lots'"
    ):
        LogProbAnnotator(model=policy, token_budget="lots")
    with pytest.raises(ConfigError, match=r"LogProbAnnotator config.dtype: expected str, got int 16"):
        LogProbAnnotator({"model": policy, "dtype": 16})
    with pytest.raises(ConfigError, match=r"config.max_length: expected int \| None, got str '512'"):
        LogProbAnnotator(LogProbConfig(model=policy, max_length="512"))


def write_recipe(
    folder: Path, steps: list[dict], input_path: Path, out: Path, strategies="[max_margin]"
) -> Path:
    recipe = folder / "recipe.yaml"
    lines = [f"input: {{path: {input_path}}}", "steps:"]
    for step in steps:
        lines.append(f"  - {json.dumps(step)}")
    lines += [f"pairs: {{strategies: {strategies}}}", f"output: {{folder: {out}, name: t, version: 0.1.0}}"]
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return recipe


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def flaky_registered(monkeypatch):
    monkeypatch.setitem(STEP_REGISTRY, "FlakyRewards", "tests.test_errors:FlakyRewards")


def test_recipe_type_errors_name_step_field_value_and_type(tmp_path, flaky_registered):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "release"
    bad_field = write_recipe(tmp_path, [{"step": "FlakyRewards", "config": {"scale": "2"}}], data, out)
    with pytest.raises(RecipeError) as caught:
        Recipe.from_yaml(bad_field)
    assert "steps[0] (FlakyRewards).config.scale: expected float, got str '2'" in str(caught.value)
    bad_batch = write_recipe(tmp_path, [{"step": "FlakyRewards", "batch_size": "64"}], data, out)
    with pytest.raises(
        RecipeError, match=r"steps\[0\] \(FlakyRewards\)\.batch_size: expected a positive int"
    ):
        Recipe.from_yaml(bad_batch)


def test_recipe_model_step_type_error_before_the_model_loads(tmp_path, tiny_models, monkeypatch, capsys):
    from hfpref.models import step as model_step

    monkeypatch.setattr(model_step, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    recipe = write_recipe(
        tmp_path,
        [
            {
                "step": "LogProbAnnotator",
                "config": {"model": str(tiny_models["policy"]), "token_budget": "lots"},
            }
        ],
        data,
        tmp_path / "release",
    )
    status, _, err = run_cli(capsys, "curate", str(recipe), "--no-progress")
    assert status == 2
    line = one_line(err)
    assert line.startswith(
        f"hfpref curate: error: recipe {recipe}: steps[0] (LogProbAnnotator).config.token_budget"
    )
    assert "expected int, got str 'lots'" in line


# ---- item 10: output folder and mixed prompts, before the first step ----------------------------------


def test_output_folder_that_is_a_file_fails_before_the_first_step(tmp_path, flaky_registered, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    taken = tmp_path / "release"
    taken.write_text("not a folder")
    recipe = write_recipe(tmp_path, [{"step": "FlakyRewards"}], data, taken)
    status, _, err = run_cli(capsys, "curate", str(recipe), "--quiet")
    assert status == 2
    assert "output.folder" in one_line(err) and "is a file" in err
    assert FlakyRewards.processed == []  # no step ran


def test_output_folder_under_a_file_or_read_only_parent(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, so no folder can be created"):
        check_output_folder(blocker / "sub" / "release")
    check_output_folder(tmp_path / "new" / "deeper")  # creatable: fine
    if os.geteuid() == 0:
        pytest.skip("root writes in read-only folders; the read-only case needs another user")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputFolderError, match="cannot write in"):
            check_output_folder(locked / "release")
    finally:
        locked.chmod(0o755)


def test_mixed_chat_and_plain_prompts_name_both_lines(tmp_path):
    rows = [*ROWS[:2], {"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b"]}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(InputFileError) as caught:
        check_input_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: column 'prompt' is chat messages")
    assert "line 1 has plain text" in message


def test_mixed_prompts_in_a_recipe_fail_before_the_first_step(tmp_path, flaky_registered, capsys):
    rows = [ROWS[0], {"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b"]}]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    recipe = write_recipe(tmp_path, [{"step": "FlakyRewards"}], data, tmp_path / "out")
    status, _, err = run_cli(capsys, "curate", str(recipe), "--quiet")
    assert status == 2 and f"{data}:2: column 'prompt'" in one_line(err)
    assert FlakyRewards.processed == []


# ---- item 11: malformed input files --------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "x", "responses": [\n', encoding="utf-8")
    with pytest.raises(InputFileError, match=rf"^{path}:3: not valid JSON"):
        check_input_file(path)


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"prompt": "caf\xe9", "responses": ["a"]}\n')
    with pytest.raises(InputFileError, match=rf"^{path}:2: not UTF-8 text \(byte b'\\xe9'"):
        check_input_file(path)


def test_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], ["not", "a", "row"]])
    with pytest.raises(InputFileError, match=r":2: expected a JSON object"):
        check_input_file(path)
    assert check_input_file(write_jsonl(tmp_path / "ok.jsonl", ROWS)) == 4


def test_malformed_input_through_the_cli(tmp_path, flaky_registered, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops}\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, [{"step": "FlakyRewards"}], path, tmp_path / "out")
    status, _, err = run_cli(capsys, "curate", str(recipe), "--quiet")
    assert status == 2
    assert one_line(err).startswith(f"hfpref curate: error: {path}:2: not valid JSON")


# ---- item 11: the CLI policy ---------------------------------------------------------------------------


def test_missing_recipe_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    status, _, err = run_cli(capsys, "curate", str(missing))
    assert status == 2
    assert one_line(err) == (
        f"hfpref curate: error: recipe {missing}: no such file (working directory: {Path.cwd()}); check the path"
    )
    status, _, err = run_cli(capsys, "iterate", str(missing), "--no-progress")
    assert status == 2 and one_line(err).startswith("hfpref iterate: error: recipe")


def test_debug_flag_after_the_subcommand_shows_the_traceback(tmp_path, capsys):
    status, _, err = run_cli(capsys, "curate", str(tmp_path / "nope.yaml"), "--debug")
    assert status == 2
    assert err.startswith("Traceback (most recent call last)")
    assert err.strip().splitlines()[-1].startswith("hfpref curate: error: recipe")


def test_row_error_from_a_run_is_one_line(tmp_path, flaky_registered, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    recipe = write_recipe(
        tmp_path, [{"step": "FlakyRewards", "config": {"bad": ["p2"]}}], data, tmp_path / "o"
    )
    status, _, err = run_cli(capsys, "curate", str(recipe), "--quiet", "--cache-dir", str(tmp_path / "c"))
    assert status == 2
    assert one_line(err) == "hfpref curate: error: FlakyRewards: row 2 prompt 'p2' is bad"


def test_on_row_error_drop_in_a_recipe_is_counted(tmp_path, flaky_registered):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    recipe_file = write_recipe(
        tmp_path,
        [{"step": "FlakyRewards", "config": {"bad": ["p2"], "on_row_error": "drop"}}],
        data,
        tmp_path / "o",
    )
    result = Recipe.from_yaml(recipe_file).run(cache_dir=tmp_path / "c", progress=False)
    assert result.step_rows == [{"rows_in": 4, "rows_out": 4, "row_errors": 1}]
    assert dict(result.dropped["max_margin"]) == {"row_error": 1}
    assert len(result.pairs["max_margin"]) == 3
    # in two shards (the first without a bad row), then again: all cache hits
    FlakyRewards.processed = []
    sharded = Recipe.from_yaml(recipe_file).run(
        cache_dir=tmp_path / "s", progress=False, shard_rows=2, batch_size=2
    )
    assert sorted(set(FlakyRewards.processed)) == ["p0", "p1", "p3"]
    assert sharded.candidates[C.DROP_REASON] == [None, None, "row_error", None]
    assert sharded.candidates[C.REWARDS] == result.candidates[C.REWARDS]
    FlakyRewards.processed = []
    Recipe.from_yaml(recipe_file).run(cache_dir=tmp_path / "s", progress=False, shard_rows=2, batch_size=2)
    assert FlakyRewards.processed == []


def test_a_bug_is_exit_1_with_a_hint(monkeypatch, capsys):
    import hfpref.cli.iterate as iterate_command

    def broken(args):
        return 1 / 0

    monkeypatch.setattr(iterate_command, "run", broken)
    status, _, err = run_cli(capsys, "iterate", "x.yaml")
    assert status == 1
    line = one_line(err)
    assert line.startswith("hfpref iterate: error: internal error")
    assert "ZeroDivisionError: division by zero" in line and "rerun with --debug" in line


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            FileNotFoundError(2, "No such file or directory", "/x/y.jsonl"),
            "No such file or directory: /x/y.jsonl",
        ),
        (PermissionError(13, "Permission denied", "/x"), "Permission denied: /x; check its permissions"),
        (
            json.JSONDecodeError("Expecting value", "{\n x", 3),
            "not valid JSON: Expecting value at line 2 column 2",
        ),
        (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid"), "is not UTF-8 text"),
        (UserError("what\nwhere"), "what where"),  # multi-line messages become one line
    ],
)
def test_library_errors_become_user_errors(error, expected):
    message, status = cli.explain(error)
    assert status == 2 and expected in message and "\n" not in message


def test_hub_errors_become_user_errors():
    from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled

    message, status = cli.explain(HFValidationError("Repo id must be in the form 'repo_name'"))
    assert status == 2 and "no such folder?" in message
    message, status = cli.explain(OfflineModeIsEnabled("offline"))
    assert status == 2 and message.startswith("offline and not in the local Hugging Face cache")


def test_quiet_and_no_progress_are_one_global_flag():
    assert cli.split_global_flags(["iterate", "r.yaml", "--quiet"]) == (["iterate", "r.yaml"], False, True)
    assert cli.split_global_flags(["--no-progress", "curate", "--debug"]) == (["curate"], True, True)
    assert cli.split_global_flags(["curate", "--", "--quiet"]) == (["curate", "--", "--quiet"], False, False)


def test_unknown_option_names_the_command(capsys):
    status, _, err = run_cli(capsys, "eval", "ifeval", "--model", "m", "--bogus", "1")
    assert status == 2
    assert (
        one_line(err)
        == "hfpref eval ifeval: error: unrecognized arguments: --bogus 1 (see hfpref eval ifeval --help)"
    )


def test_argparse_mistakes_are_one_line(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["curate", "--batch-size", "many"])
    assert caught.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("hfpref curate: error: argument --batch-size: invalid int value: 'many'")


# ---- item 11: train --set, local model paths, offline Hub -----------------------------------------------


def test_train_unknown_field_is_refused_before_loading(tmp_path, capsys):
    common = [
        "train",
        "dpo",
        "--dataset",
        str(tmp_path),
        "--model",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    status, _, err = run_cli(capsys, *common, "--betta", "0.2")
    assert status == 2
    assert one_line(err) == (
        "hfpref train dpo: error: unrecognized arguments: --betta 0.2; did you mean --beta? "
        "(see hfpref train dpo --help)"
    )
    with pytest.raises(SystemExit) as caught:
        cli.main([*common, "--beta", "lots"])
    assert caught.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(
        "hfpref train dpo: error: argument --beta: invalid float value: 'lots'"
    )
    # --set FIELD=VALUE of earlier releases: the same flag, with a warning
    status, _, err = run_cli(capsys, *common, "--set", "betta=0.2")
    warning, error = err.strip().splitlines()
    assert warning == "hfpref train dpo: warning: --set is deprecated; give --betta 0.2"
    assert status == 2 and "unrecognized arguments: --betta 0.2; did you mean --beta?" in error
    assert not (tmp_path / "o").exists()


def test_missing_local_model_folder_says_no_such_folder(tmp_path, capsys):
    from hfpref.models.hub import ModelNotFoundError, resolve_revision

    missing = tmp_path / "runs" / "policy"
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_revision(str(missing))
    (tmp_path / "runs").mkdir()
    os.chdir(tmp_path)  # "runs/policy": an OWNER/NAME shape, but runs/ is a folder here
    try:
        with pytest.raises(ModelNotFoundError, match="'runs/policy': no such folder"):
            resolve_revision("runs/policy")
        status, _, err = run_cli(
            capsys, "train", "dpo", "--dataset", str(tmp_path), "--model", "runs/policy", "--output-dir", "o"
        )
    finally:
        os.chdir(Path(__file__).parent.parent)
    assert status == 2 and one_line(err).startswith(
        "hfpref train dpo: error: --model 'runs/policy': no such folder"
    )


def test_offline_hub_fails_fast(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    status, _, err = run_cli(capsys, "push", str(tmp_path), "me/data", "--version", "0.1.0")
    assert time.monotonic() - start < 5
    assert status == 2
    assert one_line(err).startswith(
        "hfpref push: error: push needs the Hugging Face Hub, and http://127.0.0.1:9"
    )
    assert "offline" in err and "HF_HUB_OFFLINE=1" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    status, _, err = run_cli(capsys, "push", str(tmp_path), "me/data", "--version", "0.1.0")
    assert status == 2 and "HF_HUB_OFFLINE is set" in one_line(err)


def test_train_with_a_hub_dataset_offline_fails_fast(monkeypatch, tmp_path, tiny_models, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    status, _, err = run_cli(
        capsys, "train", "dpo", "--dataset", "me/pairs@v0.1.0", "--model", str(tiny_models["policy"]),
        "--output-dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert status == 2 and "a Hub model or dataset needs the Hugging Face Hub" in one_line(err)


# ---- item 9: max_length beyond the model's positions -----------------------------------------------------


def test_max_length_beyond_positions_is_refused_at_load(tiny_models):
    from hfpref.steps.logprobs import LogProbAnnotator

    step = LogProbAnnotator(model=str(tiny_models["policy"]), max_length=4096, dtype="float32", device="cpu")
    batch = {C.PROMPT: ["hi"], C.RESPONSES: [["there"]]}
    with pytest.raises(ConfigError) as caught:
        step(batch)
    message = str(caught.value)
    # the tiny model's config says 512 positions (tests/tiny_models.py)
    assert "LogProbAnnotator config.max_length: 4096 is beyond the 512 positions" in message
    assert "max_position_embeddings" in message and "at most 512" in message


def test_max_length_preflight_reads_the_config_only(tiny_models, monkeypatch):
    from hfpref.models import step as model_step
    from hfpref.steps.rewards import RewardAnnotator

    monkeypatch.setattr(model_step, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    reward = str(tiny_models["reward"])
    with pytest.raises(ConfigError, match="max_length: 513 is beyond the 512 positions"):
        RewardAnnotator(model=reward, max_length=513).preflight()
    RewardAnnotator(model=reward, max_length=512).preflight()  # at the limit: fine
    RewardAnnotator(model=reward).preflight()  # None: the model's own limit


def test_context_limit_falls_back_to_a_real_tokenizer_limit():
    from types import SimpleNamespace

    from hfpref.models.loading import context_limit

    no_positions = SimpleNamespace()
    assert context_limit(no_positions, SimpleNamespace(model_max_length=128)) == (
        128,
        "its tokenizer's model_max_length",
    )
    assert (
        context_limit(no_positions, SimpleNamespace(model_max_length=int(1e30))) is None
    )  # transformers' "unset"
    assert context_limit(SimpleNamespace(max_position_embeddings=64), None)[0] == 64


def test_recipe_refuses_max_length_before_the_first_step(tmp_path, tiny_models, flaky_registered, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    recipe = write_recipe(
        tmp_path,
        [
            {"step": "FlakyRewards"},
            {
                "step": "LogProbAnnotator",
                "config": {"model": str(tiny_models["policy"]), "max_length": 100000},
            },
        ],
        data,
        tmp_path / "o",
    )
    status, _, err = run_cli(capsys, "curate", str(recipe), "--quiet")
    assert status == 2
    assert (
        "steps[1] (LogProbAnnotator): LogProbAnnotator config.max_length: 100000 is beyond the 512"
        in one_line(err)
    )
    assert FlakyRewards.processed == []  # refused before step 0 ran


# ---- subprocess: the exit status and exactly one line on stderr --------------------------------------------


def _hfpref(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run(
        [sys.executable, "-m", "hfpref.cli.main", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_subprocess_missing_recipe(tmp_path):
    done = _hfpref("curate", "missing.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr
        == f"hfpref curate: error: recipe missing.yaml: no such file (working directory: {tmp_path}); check the path\n"
    )


def test_subprocess_bad_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text(textwrap.dedent("input: {path: [\nsteps: -\n"))
    done = _hfpref("curate", "r.yaml", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("hfpref curate: error: recipe r.yaml: not valid YAML at line 2, column 8:")
