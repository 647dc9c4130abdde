"""Several GPUs on one node: each worker's rank reaches the step, picks cuda:<rank>, and loads its model once.

Run on the CPU with two workers and a CUDA that claims two devices (patched before the workers fork), so
``select_device`` names the GPU each rank would use without any GPU being touched."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from hfpref.cli.main import main
from hfpref.core.step import Step, StepConfig
from hfpref.models.loading import select_device
from hfpref.models.step import ModelStep
from hfpref.pipeline import recipe as R
from hfpref.pipeline.engines import EngineError, is_model_step
from hfpref.pipeline.engines.local import LocalEngine
from hfpref.pipeline.recipe import Recipe
from tests.helpers import DeclaredColumns, LoggedModelConfig, append_json_line, fake_model_folder


class RankRecorder(DeclaredColumns, ModelStep):
    """A model step without weights: logs each load (pid, rank, device) and batch (pid, rank, first row).

    Output ``lengths`` (the responses' lengths) does not depend on the rank, so runs on 1 and k
    workers must agree.
    """

    config_class = LoggedModelConfig
    config: LoggedModelConfig
    outputs = ("lengths",)

    def load(self, rank):
        _log(self.config.log, "load", rank, str(select_device(None, rank)), id(self))
        return {"device": select_device(None, rank), "owner": id(self)}

    def process(self, batch, rank, indices):
        loaded = self.resources(rank)
        _log(self.config.log, "call", rank, str(loaded["device"]), indices[0])
        return {"lengths": [[len(r) for r in responses] for responses in batch["responses"]]}


@dataclasses.dataclass
class CpuConfig(StepConfig):
    log: str = ""


class CpuRecorder(DeclaredColumns, Step):
    """A pure-CPU step (rewards = minus the response lengths) that logs where it ran."""

    config_class = CpuConfig
    config: CpuConfig
    outputs = ("rewards",)

    def process(self, batch, rank, indices):
        _log(self.config.log, "cpu", rank, "-", indices[0])
        return {"rewards": [[-float(len(r)) for r in responses] for responses in batch["responses"]]}


def _log(path: str, event: str, rank, device: str, value) -> None:
    append_json_line(path, [event, os.getpid(), rank, device, value])


def events(path: Path, kind: str) -> list[tuple]:
    return [tuple(e[1:]) for e in map(json.loads, path.read_text().splitlines()) if e[0] == kind]


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA with two devices, as far as device selection can tell (nothing is ever placed on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return fake_model_folder(tmp_path)


def candidates(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "key": list(range(n)),
            "prompt": [f"p{k}" for k in range(n)],
            "responses": [["a" * (1 + k % 4), "b" * (1 + k % 3)] for k in range(n)],
        }
    )


def test_select_device_gives_each_rank_its_gpu(two_gpus):
    assert [str(select_device(None, r)) for r in (None, 0, 1, 2)] == ["cuda:0", "cuda:0", "cuda:1", "cuda:0"]
    assert str(select_device("cpu", 1)) == "cpu"


def test_dataset_map_with_rank_reaches_the_step_and_loads_once_per_worker(tmp_path, two_gpus, model_dir):
    log = tmp_path / "log"
    step = RankRecorder(model=str(model_dir), log=str(log))
    out = step.apply(candidates(40), batch_size=5, num_proc=2)

    assert out["lengths"] == [[len(r) for r in row] for row in candidates(40)["responses"]]
    calls, loads = events(log, "call"), events(log, "load")
    assert {rank for _, rank, _, _ in calls} == {0, 1}
    # datasets gives rank 0 the first half of the rows and rank 1 the second
    assert {(rank, first // 20) for _, rank, _, first in calls} == {(0, 0), (1, 1)}
    assert all(device == f"cuda:{rank}" for _, rank, device, _ in calls + loads)
    assert sorted(rank for _, rank, _, _ in loads) == [0, 1], "one load per worker"
    assert {(pid, rank) for pid, rank, _, _ in calls} == {(pid, rank) for pid, rank, _, _ in loads}
    assert os.getpid() not in {pid for pid, *_ in calls + loads}, "nothing runs in the parent"


def test_gpus_option_runs_model_steps_on_k_ranks_and_cpu_steps_in_process(
    tmp_path, two_gpus, model_dir, monkeypatch
):
    monkeypatch.setitem(R.STEP_REGISTRY, "RankRecorder", "tests.test_multiproc:RankRecorder")
    monkeypatch.setitem(R.STEP_REGISTRY, "CpuRecorder", "tests.test_multiproc:CpuRecorder")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in candidates(40).to_list()))
    log = tmp_path / "log"
    recipe = {
        "input": {"path": str(rows)},
        "steps": [
            {"step": "CpuRecorder", "config": {"log": str(log)}},
            {"step": "RankRecorder", "config": {"model": str(model_dir), "log": str(log)}},
        ],
        "pairs": {"strategies": ["max_margin"]},
        "output": {"name": "gpus-test", "version": "0.1.0"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    args = ["curate", str(path), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "5", "--no-progress"]
    # 40 rows in shards of 10: four shards, dealt to ranks 0, 1, 0, 1
    assert main([*args, "-o", str(tmp_path / "multi"), "--gpus", "2", "--shard-rows", "10"]) == 0

    cpu, calls, loads = events(log, "cpu"), events(log, "call"), events(log, "load")
    assert {(pid, rank) for pid, rank, _, _ in cpu} == {(os.getpid(), None)}, "pure-CPU steps stay in process"
    assert sorted(first for *_, first in cpu) == list(range(0, 40, 5))
    assert sorted(first for *_, first in calls) == list(range(0, 40, 5)), "every batch once"
    assert {(rank, first // 10 % 2) for _, rank, _, first in calls} == {(0, 0), (1, 1)}
    assert all(device == f"cuda:{rank}" for _, rank, device, _ in calls + loads)
    assert Counter(rank for _, rank, _, _ in loads) == {0: 1, 1: 1}, (
        "each worker loads once for its two shards"
    )
    assert len({pid for pid, *_ in calls}) == 2 and os.getpid() not in {pid for pid, *_ in calls}

    single = Recipe.from_yaml(path).run(cache_dir=tmp_path / "cache-single", batch_size=5, progress=False)
    multi = datasets.load_dataset(str(tmp_path / "multi"), name="candidates", split="train")
    assert multi.to_list() == single.candidates.to_list()


def test_gpus_resume_skips_the_shards_workers_finished(tmp_path, two_gpus, model_dir):
    log = tmp_path / "log"
    data = datasets.load_dataset(
        "json", data_files=_write_rows(tmp_path, 40), split="train", cache_dir=str(tmp_path / "cache")
    )
    step = FailingRecorder(model=str(model_dir), log=str(log))
    engine = LocalEngine(gpus=2, shard_rows=10)
    (tmp_path / "fail").touch()
    FailingRecorder.flag = str(tmp_path / "fail")
    with pytest.raises(RuntimeError, match="simulated failure"):
        engine.map_step(step, data, batch_size=5)
    first = sorted(first for *_, first in events(log, "call"))
    assert first == [0, 5, 10, 15, 20, 25], "rank 1 fails on its second shard (rows 30-39), rank 0 finishes"

    (tmp_path / "fail").unlink()
    calls_before = len(events(log, "call"))
    out = engine.map_step(step, data, batch_size=5)
    assert sorted(first for *_, first in events(log, "call")[calls_before:]) == [30, 35]
    assert (
        out.to_list() == RankRecorder(model=str(model_dir), log=str(log)).apply(data, batch_size=5).to_list()
    )


class FailingRecorder(RankRecorder):
    """RankRecorder that fails on rows from 30 while the flag file exists."""

    flag = ""

    def process(self, batch, rank, indices):
        if indices[0] >= 30 and Path(type(self).flag).exists():
            raise RuntimeError(f"simulated failure at row {indices[0]}")
        return super().process(batch, rank, indices)


def _write_rows(tmp_path: Path, n: int) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in candidates(n).to_list()))
    return str(path)


def test_log_probs_on_two_ranks_equal_one_process(tmp_path, tiny_models):
    from hfpref.steps.logprobs import LogProbAnnotator

    data = datasets.load_dataset(
        "json", data_files=_write_rows(tmp_path, 12), split="train", cache_dir=str(tmp_path / "cache")
    )
    step = LogProbAnnotator(model=str(tiny_models["policy"]), dtype="float32")
    assert is_model_step(step) and not is_model_step(CpuRecorder(log=""))
    two = LocalEngine(gpus=2, shard_rows=4).map_step(step, data, batch_size=2)
    one = step.apply(datasets.Dataset.from_list(data.to_list()), batch_size=2)
    assert two["ref_token_counts"] == one["ref_token_counts"]
    for got, want in zip(two["ref_logps"], one["ref_logps"], strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_more_gpus_than_visible_is_an_error(tmp_path, two_gpus, model_dir):
    step = RankRecorder(model=str(model_dir), log=str(tmp_path / "log"))
    with pytest.raises(EngineError, match="3 GPUs asked for, but only 2 CUDA devices"):
        LocalEngine(gpus=3).map_step(step, candidates(4), batch_size=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0"], "--gpus must be at least 1, got 0"),
        (["--shard-rows", "-1"], "--shard-rows must be 0 or more, got -1"),
        (["--concurrency", "2"], "--concurrency applies to --engine ray only"),
        (["--address", "auto"], "--address applies to --engine ray only"),
        (["--engine", "ray", "--num-proc", "2"], "--num-proc applies to the local engine"),
    ],
)
def test_engine_options_that_cannot_apply_exit_2(args, message, capsys, tmp_path):
    assert main(["curate", "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


FORK_AFTER_TORCH = """
import dataclasses, datasets, torch
from hfpref.core.step import Step, StepConfig

class MatmulTrace(Step):
    def process(self, batch, rank, indices):
        x = torch.eye(256) * 2.0
        return {"trace": [float((x @ x).trace()) for _ in batch["key"]]}

torch.randn(512, 512) @ torch.randn(512, 512)  # the parent's OpenMP pool is now running
out = MatmulTrace().apply(datasets.Dataset.from_dict({"key": list(range(8))}), batch_size=2, num_proc=2)
print(list(out["trace"]))
"""


def test_workers_forked_after_torch_ran_in_the_parent_do_not_hang():
    """GNU OpenMP does not survive fork: without make_fork_safe the workers hang on their first matmul."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_TORCH], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str([4.0 * 256] * 8)
