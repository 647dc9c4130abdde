"""Resumable runs: steps run in cached row shards, so a run killed mid-step continues where it stopped and
ends with the output of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from hfpref.cli.main import main
from hfpref.core.step import Step, StepConfig
from hfpref.pipeline import recipe as R
from hfpref.pipeline.engines.local import map_step
from hfpref.pipeline.resume import is_cached, plan_shards, shard_of
from tests.helpers import DeclaredColumns, append_json_line, kill_when

REPO = Path(__file__).resolve().parents[1]


# ---- a step that logs every batch it computes (to a file: it also runs in other processes) ----------


@dataclasses.dataclass
class CountedConfig(StepConfig):
    log: str = ""  # file each computed batch appends "pid first_row rows" to
    sleep: float = 0.0  # seconds per batch, so a kill lands mid-step
    fail_from_row: int | None = None  # raise on a batch holding this row or a later one


class CountedLengths(DeclaredColumns, Step):
    """rewards = the responses' lengths in characters; logs each batch it computes."""

    config_class = CountedConfig
    config: CountedConfig
    outputs = ("rewards",)

    def process(self, batch, rank, indices):
        cfg = self.config
        if (
            cfg.fail_from_row is not None
            and max(indices) >= cfg.fail_from_row
            and Path(cfg.log + ".fail").exists()
        ):
            raise RuntimeError(f"simulated crash at rows {indices[0]}..{indices[-1]}")
        time.sleep(cfg.sleep)
        append_json_line(cfg.log, [os.getpid(), rank, ray_actor(), indices[0], len(indices)])
        return {"rewards": [[float(len(r)) for r in responses] for responses in batch["responses"]]}


def ray_actor() -> str | None:
    """The Ray actor this runs in (None outside Ray, in the driver, or in a Ray task)."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_actor_id() if ray is not None and ray.is_initialized() else None


def logged(log: Path, with_actor: bool = False) -> list[tuple]:
    """(pid, rank, first row, rows) of every computed batch; (pid, rank, actor, first row, rows) with_actor."""
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return [tuple(row) if with_actor else (row[0], row[1], row[3], row[4]) for row in rows]


def rows_file(tmp_path: Path, n: int = 60) -> Path:
    path = tmp_path / "candidates.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for k in range(n):
            responses = ["x" * (1 + k % 7), "y" * (1 + (3 * k) % 5), "z" * (2 + k % 3)]
            handle.write(json.dumps({"key": k, "prompt": f"prompt {k}", "responses": responses}) + "\n")
    return path


def load_rows(path: Path, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


# ---- shard plans --------------------------------------------------------------------------------------


def test_shard_plan_aligns_to_batches():
    assert plan_shards(100, 10, 25) == [(0, 30), (30, 60), (60, 90), (90, 100)]  # 25 rounds up to 30
    assert plan_shards(100, 10, 0) == [(0, 100)]
    assert plan_shards(100, 10, None) == [(0, 100)]
    assert plan_shards(100, 10, 1000) == [(0, 100)]
    # two workers need at least two shards, each still whole batches
    assert plan_shards(100, 10, 1000, min_shards=2) == [(0, 50), (50, 100)]
    assert plan_shards(95, 10, 1000, min_shards=4) == [(0, 30), (30, 60), (60, 90), (90, 95)]
    assert plan_shards(0, 10, 25) == [(0, 0)]
    with pytest.raises(ValueError, match="batch_size"):
        plan_shards(10, 0, 5)


def test_sharded_step_equals_unsharded_and_keeps_its_fingerprint(tmp_path):
    data = load_rows(rows_file(tmp_path), tmp_path / "cache")
    log = tmp_path / "log"
    step = CountedLengths(log=str(log))
    whole = step.apply(data, batch_size=8)
    sharded = map_step(step, data, batch_size=8, shard_rows=20)  # 20 -> 24 rows: 3 shards of 24, 24, 12
    assert sharded.to_list() == whole.to_list()
    assert sharded.features == whole.features
    assert sharded._fingerprint == whole._fingerprint == step.output_fingerprint(data._fingerprint)
    assert [(first, rows) for _, _, first, rows in logged(log)][-8:] == [
        (0, 8),
        (8, 8),
        (16, 8),
        (24, 8),
        (32, 8),
        (40, 8),
        (48, 8),
        (56, 4),
    ], "the shards see the batches of the unsharded run"
    assert all(is_cached(step, shard_of(data, a, b)) for a, b in plan_shards(len(data), 8, 20))

    calls = len(logged(log))
    again = map_step(step, data, batch_size=8, shard_rows=20)
    assert len(logged(log)) == calls, "a finished sharded step reruns from the cache"
    assert again.to_list() == whole.to_list()


def test_pair_selection_in_workers_equals_one_process_and_is_cached(tmp_path):
    """--num-proc k runs the uncached selectors in k worker processes, one selector per task; the parent
    reads their cached outputs back (same rows, same fingerprints) and a rerun computes nothing."""
    from hfpref.pipeline.engines.local import LocalEngine

    data = load_rows(rows_file(tmp_path), tmp_path / "cache")
    logs = {name: tmp_path / f"log-{name}" for name in ("a", "b", "c")}
    selectors = {name: CountedLengths(log=str(log)) for name, log in logs.items()}
    out = dict(LocalEngine().select_pairs(selectors, data, batch_size=8, num_proc=2))
    expected = [[float(len(r)) for r in row["responses"]] for row in data]  # rewards by hand
    for name, selector in selectors.items():
        assert out[name]["rewards"] == expected
        assert out[name]._fingerprint == selector.output_fingerprint(data._fingerprint)
        computed = logged(logs[name])
        assert sorted(first for _, _, first, _ in computed) == list(range(0, 60, 8)), "each batch once"
        assert {pid for pid, _, _, _ in computed} != {os.getpid()}, "computed in a worker, not here"
    before = {name: len(logged(log)) for name, log in logs.items()}
    again = dict(LocalEngine().select_pairs(selectors, data, batch_size=8, num_proc=2))
    assert {name: len(logged(log)) for name, log in logs.items()} == before, "a rerun is all cache hits"
    assert all(again[name].to_list() == out[name].to_list() for name in selectors)


def test_crash_mid_step_recomputes_only_unfinished_shards(tmp_path):
    data = load_rows(rows_file(tmp_path), tmp_path / "cache")
    log = tmp_path / "log"
    (tmp_path / "log.fail").touch()
    step = CountedLengths(log=str(log), fail_from_row=40)
    with pytest.raises(RuntimeError, match="simulated crash at rows 40"):
        map_step(step, data, batch_size=10, shard_rows=20)
    assert [first for _, _, first, _ in logged(log)] == [0, 10, 20, 30]

    (tmp_path / "log.fail").unlink()
    resumed = map_step(step, data, batch_size=10, shard_rows=20)
    assert [first for _, _, first, _ in logged(log)][4:] == [40, 50], "only the shard that crashed reruns"
    assert (
        resumed.to_list() == CountedLengths(log=str(tmp_path / "other")).apply(data, batch_size=10).to_list()
    )


# ---- a run killed with SIGKILL -----------------------------------------------------------------------

RUNNER = """
import sys
from hfpref.pipeline import recipe
from hfpref.cli.main import main
recipe.register_step("CountedLengths", "tests.test_resume:CountedLengths")
sys.exit(main(sys.argv[1:]))
"""


def _recipe_file(tmp_path: Path, rows: Path, log: Path, sleep: float) -> Path:
    path = tmp_path / f"recipe-{sleep}.yaml"
    recipe = {
        "input": {"path": str(rows)},
        "steps": [{"step": "CountedLengths", "config": {"log": str(log), "sleep": sleep}}],
        "pairs": {"strategies": ["max_margin", "random"]},
        "output": {"name": "resume-test", "version": "0.1.0"},
    }
    path.write_text(json.dumps(recipe), encoding="utf-8")  # JSON is YAML
    return path


def _curate_args(recipe: Path, out: Path, cache: Path) -> list[str]:
    return ["curate", str(recipe), "-o", str(out), "--cache-dir", str(cache), "--batch-size", "5"]


def _data_tables(folder: Path) -> dict[str, object]:
    return {str(p.relative_to(folder)): pq.read_table(p) for p in sorted(folder.glob("data/*/*.parquet"))}


def test_killed_run_resumes_from_finished_shards_and_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    rows = rows_file(tmp_path, n=60)
    log = tmp_path / "log"
    recipe = _recipe_file(tmp_path, rows, log, sleep=0.05)
    args = [
        *_curate_args(recipe, tmp_path / "release", tmp_path / "cache"),
        "--shard-rows",
        "10",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # 6 shards of 10 rows, 2 batches each; kill once a batch of the third shard is done
    kill_when(proc, lambda: any(first >= 20 for _, _, first, _ in logged(log)), "its third shard", 60)
    first_run = logged(log)
    killed_in = max(first for _, _, first, _ in first_run) // 10 * 10  # the shard the kill landed in
    assert 20 <= killed_in < 60 and not (tmp_path / "release").exists()

    monkeypatch.setitem(R.STEP_REGISTRY, "CountedLengths", "tests.test_resume:CountedLengths")
    assert main([*args[:-1]]) == 0  # the same command again (with progress bars)
    second_run = logged(log)[len(first_run) :]
    recomputed = sorted(first for _, _, first, _ in second_run)
    assert recomputed and min(recomputed) >= killed_in, "shards finished before the kill are not recomputed"
    assert recomputed == list(range(recomputed[0], 60, 5)), "every unfinished batch is computed once"

    reference = _recipe_file(tmp_path, rows, log, sleep=0.05)
    assert (
        main([*_curate_args(reference, tmp_path / "reference", tmp_path / "cache-ref"), "--no-progress"]) == 0
    )
    resumed, uninterrupted = _data_tables(tmp_path / "release"), _data_tables(tmp_path / "reference")
    assert set(resumed) == {
        f"data/{c}/train-00000-of-00001.parquet" for c in ("candidates", "max_margin", "random")
    }
    for name, table in uninterrupted.items():
        assert resumed[name].to_pylist() == table.to_pylist(), name
        assert resumed[name].schema == table.schema, name

    calls = len(logged(log))
    assert main(args) == 0
    assert len(logged(log)) == calls, "a finished run reruns without computing anything"
