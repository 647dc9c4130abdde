"""The embedded IFEval candidates: rows built from the packaged files, checked against the files themselves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hfpref import default_data

DATA = Path(__file__).resolve().parents[1] / "hfpref" / "data" / "ifeval"


def _jsonl(name: str) -> list[dict]:
    return [
        json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()
    ]


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    return default_data.load_ifeval_candidates(tmp_path_factory.mktemp("cache"))


def test_one_row_per_prompt_with_both_generators_in_order(candidates):
    prompts = _jsonl("prompts.jsonl")
    gpt4 = {r["key"]: r for r in _jsonl("responses_gpt-4.jsonl")}
    bison = {r["key"]: r for r in _jsonl("responses_text-bison.jsonl")}
    assert candidates.num_rows == len(prompts) == 541
    assert candidates.column_names == [
        "key",
        "prompt",
        "instruction_id_list",
        "kwargs",
        "responses",
        "generators",
    ]
    for row, prompt in zip(candidates, prompts, strict=True):
        assert row["key"] == prompt["key"] and row["prompt"] == prompt["prompt"]
        assert row["instruction_id_list"] == prompt["instruction_id_list"]
        expected = [table[row["key"]] for table in (gpt4, bison) if row["key"] in table]
        assert row["responses"] == [r["response"] for r in expected]
        assert row["generators"] == [r["generator"] for r in expected]


def test_key_2785_has_only_text_bison(candidates):
    rows = [r for r in candidates if r["key"] == 2785]
    assert len(rows) == 1
    assert rows[0]["generators"] == ["text-bison-001"] and len(rows[0]["responses"]) == 1
    others = [r for r in candidates if r["key"] != 2785]
    assert all(r["generators"] == ["gpt-4-20231107", "text-bison-001"] for r in others)


def test_kwargs_keep_their_values(candidates):
    by_key = {r["key"]: r["kwargs"] for r in _jsonl("prompts.jsonl")}
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


def test_hashes_license_and_generators():
    info = default_data.input_description()
    for name, digest in info["files_sha256"].items():
        assert digest == hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    assert set(info["files_sha256"]) == {
        "prompts.jsonl",
        "responses_gpt-4.jsonl",
        "responses_text-bison.jsonl",
    }
    assert info["license"] == "apache-2.0"
    assert "Apache License 2.0" in info["provenance"]
    assert info["generators"] == ["gpt-4-20231107", "text-bison-001"]
