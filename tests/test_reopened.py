"""Fresh memory maps of cached datasets (``hfpref.core.cache.reopened``), the release writer reading through
them (``ReopenedContent``), and a run's result holding no map twice (issue 15: peak memory)."""

from __future__ import annotations

import gc
from pathlib import Path

import datasets
import pytest

from hfpref.core.cache import reopened
from hfpref.release.content import ReopenedContent
from hfpref.release.writer import _write_staged
from tests.test_release import STRATEGIES, make_small_release

linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")


def maps_of(path: str) -> int:
    """How many memory maps of ``path`` this process holds."""
    real = str(Path(path).resolve())
    return sum(line.rstrip("\n").endswith(" " + real) for line in open("/proc/self/maps", encoding="utf-8"))


def cached_shards(tmp_path: Path) -> datasets.Dataset:
    """Two cached map outputs concatenated, filtered (an indices file) and a column removed: the shapes a
    step's joined shards and a strategy's kept pairs have."""
    base = datasets.Dataset.from_dict(
        {"text": [f"t{i}" * 50 for i in range(40)], "keep": [i % 3 for i in range(40)]}
    )
    base.save_to_disk(tmp_path / "base")
    base = datasets.load_from_disk(tmp_path / "base")
    shards = [
        base.select(range(start, start + 20)).map(
            lambda batch: {"length": [len(t) for t in batch["text"]]},
            batched=True,
            cache_file_name=str(tmp_path / f"shard{start}.arrow"),
        )
        for start in (0, 20)
    ]
    joined = datasets.concatenate_datasets(shards)
    kept = joined.filter(
        lambda keep: [k > 0 for k in keep],
        batched=True,
        input_columns="keep",
        cache_file_name=str(tmp_path / "idx.arrow"),
    )
    return kept.remove_columns("keep")


def test_reopened_reads_the_same_rows_with_the_same_fingerprint(tmp_path):
    original = cached_shards(tmp_path)
    copy = reopened(original)
    assert copy is not original
    assert copy.to_list() == original.to_list()
    assert len(copy) == 26  # 40 rows less the 14 with keep == 0 (i % 3 == 0 for i in 0..39)
    assert copy.to_list()[0] == {"text": "t1" * 50, "length": 100}
    assert copy._fingerprint == original._fingerprint
    assert copy.features == original.features
    assert copy.cache_files == original.cache_files


@linux_only
def test_reopened_maps_the_files_again_and_the_old_maps_go_with_the_original(tmp_path):
    original = cached_shards(tmp_path)
    files = [f["filename"] for f in original.cache_files]
    assert len(files) == 3  # two shards and the indices
    assert [maps_of(f) for f in files] == [1, 1, 1]
    copy = reopened(original)
    assert [maps_of(f) for f in files] == [2, 2, 2]
    del original
    gc.collect()
    assert [maps_of(f) for f in files] == [1, 1, 1]
    assert len(copy.to_list()) == 26


def resident_mb(path: str) -> float:
    """Resident MB of this process's maps of ``path`` (Rss in /proc/self/smaps)."""
    real, total, inside = str(Path(path).resolve()), 0, False
    for line in Path("/proc/self/smaps").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and not fields[0].endswith(":"):  # a map's header: range perms offset dev inode [path]
            inside = line.endswith(" " + real)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total / 1024


@linux_only
def test_a_fresh_map_holds_none_of_the_pages_the_original_read(tmp_path):
    """The point of ``reopened``: what a full read made resident goes with the original's map."""
    data = datasets.Dataset.from_dict({"text": ["x" * 4000] * 2000})  # 8 MB of text
    data.save_to_disk(tmp_path / "big")
    original = datasets.load_from_disk(tmp_path / "big")
    path = original.cache_files[0]["filename"]
    assert sum(len(t) for t in original.with_format("arrow")["text"].to_pylist()) == 8_000_000
    assert resident_mb(path) > 7
    copy = reopened(original)
    del original
    gc.collect()
    assert maps_of(path) == 1
    assert resident_mb(path) < 1
    assert len(copy) == 2000


def test_reopened_keeps_an_in_memory_dataset_as_it_is():
    data = datasets.Dataset.from_dict({"a": [1, 2, 3]})
    assert reopened(data) is data
    assert reopened(data.select([0, 2])).to_list() == [{"a": 1}, {"a": 3}]


def test_reopened_keeps_a_dataset_whose_files_were_removed(tmp_path):
    original = cached_shards(tmp_path)
    Path(original.cache_files[0]["filename"]).unlink()
    assert reopened(original) is original


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reopened")
    result, folder = make_small_release(tmp, created_at="2026-01-01T00:00:00+00:00")
    return result, folder, tmp


def test_the_release_read_through_fresh_maps_is_the_same_bytes(run, tmp_path):
    """``write_release`` reads the result through ``ReopenedContent``; the result as it is writes the very
    same files."""
    result, folder, _ = run
    direct = tmp_path / "direct"
    direct.mkdir()
    _write_staged(result, direct, version="0.3.0", repo_id=None, created_at="2026-01-01T00:00:00+00:00")
    for name in [*STRATEGIES, "candidates"]:
        path = f"data/{name}/train-00000-of-00001.parquet"
        assert (direct / path).read_bytes() == (folder / path).read_bytes()
    assert (direct / "hfpref_manifest.json").read_text() == (folder / "hfpref_manifest.json").read_text()
    assert (direct / "README.md").read_text() == (folder / "README.md").read_text()


def test_reopened_content_passes_everything_else_through(run):
    result, _, _ = run
    content = ReopenedContent(result)
    assert content.recipe is result.recipe
    assert content.generator_ranking == result.generator_ranking == ["g1", "g2"]
    assert content.edit_distance_unit() == "word"
    assert list(content.pairs) == list(result.pairs) == STRATEGIES
    assert content.pairs["ds_fix"].to_list() == result.pairs["ds_fix"].to_list()
    assert content.candidates.to_list() == result.candidates.to_list()
    with pytest.raises(AttributeError):
        _ = content.no_such_attribute


@linux_only
def test_a_runs_result_maps_each_cache_file_once(run):
    """The maps the steps and selectors read are gone once the run returns: the result's datasets are the
    only maps of their files (one each)."""
    result, _, _ = run
    gc.collect()
    files = [f["filename"] for data in [result.candidates, *result.pairs.values()] for f in data.cache_files]
    assert files
    assert {f: maps_of(f) for f in files} == dict.fromkeys(files, 1)


def test_run_steps_keeps_no_step_input_alive_past_its_step():
    """The loaded input (and each step's input after it) goes once the step has its output: no reference
    is left to keep its memory map, and the pages the step read, through the later steps."""
    import types
    import weakref

    from hfpref.pipeline.runner import run_steps

    seen: list[weakref.ref] = []
    alive_at_call: list[list[bool]] = []

    class Mapper:  # a step's "output": a new dataset; records which earlier inputs are still alive
        def map(self, step, data, spec=None):
            gc.collect()
            alive_at_call.append([ref() is not None for ref in seen])
            seen.append(weakref.ref(data))
            return data.map(lambda row: {"n": len(seen)}, new_fingerprint=f"step{len(seen)}")

    step = types.SimpleNamespace(unload=lambda: None)
    specs = [types.SimpleNamespace(step=f"S{i}") for i in range(3)]
    recipe = types.SimpleNamespace(steps=specs)
    plan = types.SimpleNamespace(steps=[step] * 3, prompts_at=None)
    bar = types.SimpleNamespace(set_postfix_str=lambda text: None, update=lambda n: None)
    inputs = [datasets.Dataset.from_dict({"a": [1, 2]})]
    out, prompts, rows = run_steps(recipe, plan, inputs, Mapper(), bar)
    assert inputs == []
    assert alive_at_call == [[], [False], [False, False]]
    assert out.to_list() == [{"a": 1, "n": 3}, {"a": 2, "n": 3}]
    assert prompts is None
    assert rows == [{"rows_in": 2, "rows_out": 2}] * 3
