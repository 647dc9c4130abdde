"""The embedded IFEval candidates: rows built from the packaged files, checked against the files themselves
(read here with pyarrow, independently of the loader's join)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hfpref.pipeline import default_data
from hfpref.pipeline.recipe import DEFAULT_INPUTS, InputSpec, RecipeError
from tests.helpers import EIGHT_GENERATORS as EIGHT

DATA = Path(__file__).resolve().parents[1] / "hfpref" / "data" / "ifeval"


def _prompts() -> list[dict]:
    lines = (DATA / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _responses() -> dict[tuple[int, str], dict]:
    return {(r["key"], r["generator"]): r for r in pq.read_table(DATA / "responses.parquet").to_pylist()}


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    return default_data.load_ifeval_candidates(tmp_path_factory.mktemp("cache"))


def test_one_row_per_prompt_with_eight_generators_in_order(candidates):
    prompts, responses = _prompts(), _responses()
    assert candidates.num_rows == len(prompts) == 541
    assert candidates.column_names == [
        "key",
        "prompt",
        "instruction_id_list",
        "kwargs",
        "responses",
        "generators",
        "prompts_seen",
    ]
    for row, prompt in zip(candidates, prompts, strict=True):
        assert row["key"] == prompt["key"] and row["prompt"] == prompt["prompt"]
        assert row["instruction_id_list"] == prompt["instruction_id_list"]
        expected = [responses[row["key"], g] for g in EIGHT if (row["key"], g) in responses]
        assert row["generators"] == [r["generator"] for r in expected]
        assert row["responses"] == [r["response"] for r in expected]
        assert row["prompts_seen"] == [r["prompt_seen"] for r in expected]


def test_n_per_key(candidates):
    sizes = Counter(len(r["responses"]) for r in candidates)
    assert sizes == {8: 540, 7: 1}  # GPT-4 has no response for key 2785 (revised after publication)
    (row,) = [r for r in candidates if r["key"] == 2785]
    assert row["generators"] == EIGHT[1:]
    # every generator answered 2785's older wording ("at least one placeholder"); today's asks for 3
    assert all(seen != row["prompt"] for seen in row["prompts_seen"])


def test_files_hold_what_the_provenance_says():
    table = pq.read_table(DATA / "responses.parquet")
    assert table.column_names == ["key", "generator", "prompt_seen", "response"]
    assert Counter(table.column("generator").to_pylist()) == {g: 540 if g == EIGHT[0] else 541 for g in EIGHT}
    assert len(EIGHT) == 8 and list(dict.fromkeys(table.column("generator").to_pylist())) == EIGHT
    assert pq.ParquetFile(DATA / "responses.parquet").metadata.row_group(0).column(3).compression == "ZSTD"
    qwen_small = [r for r in table.to_pylist() if r["generator"] == "qwen2.5-0.5b-instruct"]
    assert (
        sum(len(r["response"]) > 10_000 for r in qwen_small) == 36
    )  # the runaway answers, kept as published
    mistral = [r["response"] for r in table.to_pylist() if r["generator"] == EIGHT[-1]]
    assert sum(text.startswith(" ") for text in mistral) == 540  # all but one begin with a space, unstripped


def test_null_response_stays_none(monkeypatch, tmp_path):
    """A failed generation (null in the file, as o1-mini has 21) must reach the steps as None, never ""."""
    import pyarrow as pa

    rows = [
        {"key": 1000, "generator": "gpt-4-20231107", "prompt_seen": "p", "response": None},
        {"key": 1000, "generator": "text-bison-001", "prompt_seen": "p", "response": "an answer"},
    ]
    monkeypatch.setattr(default_data, "_responses_table", lambda: pa.Table.from_pylist(rows))
    join = default_data._AttachResponses(["gpt-4-20231107", "text-bison-001"])
    out = join({"key": [1000, 1001]})
    assert out["responses"] == [[None, "an answer"], []]
    assert out["generators"] == [["gpt-4-20231107", "text-bison-001"], []]


def test_kwargs_keep_their_values(candidates):
    by_key = {r["key"]: r["kwargs"] for r in _prompts()}
    for row in candidates.select(range(40)):
        # Arrow may add missing keys as None; the given ones must be unchanged
        given = [{k: v for k, v in d.items() if v is not None} for d in row["kwargs"]]
        assert given == by_key[row["key"]]


def test_reload_is_a_cache_hit(tmp_path):
    first = default_data.load_ifeval_candidates(tmp_path)
    files = sorted(p.name for p in tmp_path.rglob("*.arrow"))
    again = default_data.load_ifeval_candidates(tmp_path)
    assert again._fingerprint == first._fingerprint
    assert again.cache_files == first.cache_files
    assert sorted(p.name for p in tmp_path.rglob("*.arrow")) == files


def test_two_generator_input_by_name_and_by_list(tmp_path):
    by_name = default_data.load_ifeval_candidates(tmp_path, name="ifeval-2")
    by_list = default_data.load_ifeval_candidates(tmp_path, ["gpt-4-20231107", "text-bison-001"])
    assert by_name["generators"] == by_list["generators"]
    assert Counter(map(tuple, by_name["generators"])) == {
        ("gpt-4-20231107", "text-bison-001"): 540,
        ("text-bison-001",): 1,
    }
    reversed_ = default_data.load_ifeval_candidates(tmp_path, ["text-bison-001", "gpt-4-20231107"])
    assert reversed_._fingerprint != by_list._fingerprint
    assert reversed_[0]["responses"] == by_list[0]["responses"][::-1]
    spec = InputSpec.from_dict({"default": "ifeval", "generators": ["qwen2.5-7b-instruct", "text-bison-001"]})
    assert spec.to_dict() == {"default": "ifeval", "generators": ["qwen2.5-7b-instruct", "text-bison-001"]}
    with pytest.raises(RecipeError, match=r"unknown: \['claude'\]"):
        InputSpec.from_dict({"default": "ifeval", "generators": ["claude"]})
    with pytest.raises(RecipeError, match="embedded inputs"):
        InputSpec.from_dict({"path": "x.jsonl", "generators": ["gpt-4-20231107"]})
    assert set(DEFAULT_INPUTS) == set(default_data.NAMED_INPUTS)


def test_hashes_license_provenance_and_generators():
    info = default_data.input_description()
    assert set(info["files_sha256"]) == {"prompts.jsonl", "responses.parquet"}
    for name, digest in info["files_sha256"].items():
        assert digest == hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    assert info["license"] == "apache-2.0"
    assert (
        "Apache License 2.0" in info["provenance"]
        and "0bc3143a919eef2f9ec64aa26da8a546086653de" in info["provenance"]
    )
    assert info["generators"] == EIGHT == default_data.generator_names()
    # the M-IFEval license ships with the package, unchanged
    license_text = (DATA / "LICENSE.M-IFEval.txt").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert default_data.input_description("ifeval-2")["generators"] == EIGHT[:2]
