"""An iterate round is a curate recipe run by ``Recipe.run``: its "recipe as run" reruns as is, it runs with
``gpus=`` and on the Ray engine with the same pairs, and a round killed mid-step resumes from its finished
shards with byte-identical output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from hfpref.pipeline import iterate as IT
from hfpref.pipeline.iterate import loop as LOOP
from hfpref.pipeline.recipe import Recipe
from tests.helpers import kill_when
from tests.test_iterate import _raw

REPO = Path(__file__).resolve().parents[1]
PAIRS = "smallest_margin_corpus"


def _one_round(tmp_path: Path, models: dict, name: str, prompts: int = 3) -> IT.IterateRecipe:
    raw = _raw(tmp_path, models, rounds=1)
    raw["budget"] = {"fraction": 1.0, "schedule": "constant"}
    raw["output"]["folder"] = str(tmp_path / name)
    if prompts > 3:  # more rows, so a step has several shards
        rows = [{"id": k, "prompt": f"Say something about the number {k}."} for k in range(prompts)]
        path = tmp_path / f"prompts-{prompts}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        raw["input"] = {"path": str(path)}
    return IT.IterateRecipe.from_dict(raw)


@pytest.fixture
def no_training(monkeypatch) -> list[str]:
    """Training is not what these tests look at: each round's DPO run is recorded, not run."""
    trained: list[str] = []
    monkeypatch.setattr(LOOP, "train_dpo", lambda dataset, model, output_dir, **kw: trained.append(dataset))
    return trained


def _data_files(release: Path) -> dict[str, bytes]:
    return {str(p.relative_to(release)): p.read_bytes() for p in sorted(release.glob("data/*/*.parquet"))}


def _rows(release: Path, config: str) -> list[dict]:
    return pq.read_table(release / f"data/{config}/train-00000-of-00001.parquet").to_pylist()


def _close(got, want) -> bool:
    """Equal, floats up to rounding (a model batched differently pads differently)."""
    if isinstance(want, float) and isinstance(got, float):
        return got == pytest.approx(want, rel=1e-5, abs=1e-6)
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want, strict=True))
    return got == want


@pytest.fixture(scope="module")
def local_round(tiny_models, tmp_path_factory) -> Path:
    """One round on the local engine in this process: the release the other engines must equal."""
    tmp_path = tmp_path_factory.mktemp("local-round")
    recipe = _one_round(tmp_path, tiny_models, "local")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LOOP, "train_dpo", lambda *args, **kwargs: None)
        [result] = IT.run_iterations(recipe, progress=False)
    return result.release


def test_the_rounds_recipe_as_run_reruns_with_curate(local_round, tmp_path):
    manifest = json.loads((local_round / "hfpref_manifest.json").read_text())
    raw = yaml.safe_load(manifest["recipe_yaml"])
    # registered steps only, and the pairs made by the registered maker AnnotatedPairs
    assert [s["step"] for s in raw["steps"]] == [
        "ChatPrompts", "ResponseSampler", "LogProbAnnotator", "CopyColumns", "ImplicitMargins",
        "AnnotationSelector", "AnnotateSelected",
    ]  # fmt: skip
    assert raw["pairs"]["strategies"] == [] and [m["step"] for m in raw["pairs"]["makers"]] == [
        "AnnotatedPairs"
    ]
    card = (local_round / "README.md").read_text()
    assert "Rerun it with `hfpref curate recipe.yaml`" in card and "## Iterative round 1 of 1" in card
    assert manifest["iteration"]["round"] == 1  # written with the release, not added afterwards
    assert any(m["step"].endswith(".RewardAnnotator") for m in manifest["models"])  # the annotator's model

    result = Recipe.from_dict(raw).run(cache_dir=tmp_path / "fresh-cache", progress=False)  # recomputed
    kept = result.pairs[PAIRS]
    released = _rows(local_round, PAIRS)
    assert len(released) == manifest["iteration"]["annotation"]["pairs_kept"] > 0
    assert kept.select_columns(list(released[0])).to_list() == released
    assert result.candidates.select_columns(list(_rows(local_round, "candidates")[0])).to_list() == _rows(
        local_round, "candidates"
    )


def test_gpus_reach_the_engine_and_give_the_same_pairs(
    local_round, tiny_models, tmp_path, monkeypatch, no_training
):
    from hfpref.pipeline.engines import local

    in_workers: list[tuple[str, int]] = []
    real = local.run_in_workers

    def recording(step, shards, workers, batch_size):
        in_workers.append((step.name, workers))
        return real(step, shards, workers, batch_size)

    monkeypatch.setattr(local, "run_in_workers", recording)
    recipe = _one_round(tmp_path, tiny_models, "gpus")
    [result] = IT.run_iterations(recipe, progress=False, gpus=2)  # no CUDA here: the ranks run on the CPU
    assert {"ResponseSampler", "LogProbAnnotator"} <= {name for name, _ in in_workers}
    assert all(workers == 2 for _, workers in in_workers)
    assert "ImplicitMargins" not in {name for name, _ in in_workers}  # pure-CPU steps stay in process
    # the same pairs; the annotator's rewards up to rounding: with 2 workers ``Dataset.map`` splits the rows
    # in two, so the reward model sees other batches (the sampler and log-prob steps, in batch-aligned
    # shards, are equal to the bit)
    for config in ("candidates", PAIRS):
        got, want = _rows(result.release, config), _rows(local_round, config)
        assert _close(got, want), config
        for column in ("responses", "ref_logps", "policy_logps", "selected_for_annotation"):
            assert [r.get(column) for r in got] == [r.get(column) for r in want], column


@pytest.mark.slow
def test_the_ray_engine_gives_the_same_pairs(local_round, tiny_models, tmp_path, no_training):
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        recipe = _one_round(tmp_path, tiny_models, "ray")
        [result] = IT.run_iterations(recipe, progress=False, engine="ray")
    finally:
        ray.shutdown()
    assert _rows(result.release, PAIRS) == _rows(local_round, PAIRS)
    assert _rows(result.release, "candidates") == _rows(local_round, "candidates")


# ---- a real `hfpref iterate` killed mid-round -----------------------------------------------------------

# The child: `hfpref iterate --shard-rows 1`, every computed shard logged (slowly, so the kill lands
# mid-step), training skipped.
RUNNER = """
import json, os, sys, time
from hfpref.pipeline import resume
from hfpref.pipeline.iterate import loop
from hfpref.cli.main import main

call = resume.ShardRows.__call__

def logged(self, batch, indices):
    out = call(self, batch, indices)
    with open(os.environ["SHARD_LOG"], "a") as handle:
        handle.write(json.dumps([self.step.name, self.start]) + "\\n")
    time.sleep(float(os.environ.get("SHARD_SLEEP", "0")))
    return out

resume.ShardRows.__call__ = logged
loop.train_dpo = lambda *args, **kwargs: None  # training comes after the release this test compares
sys.exit(main(sys.argv[1:]))
"""


def _shards(log: Path) -> list[tuple[str, int]]:
    return [tuple(json.loads(line)) for line in log.read_text().splitlines()] if log.exists() else []


def _iterate(recipe: IT.IterateRecipe, tmp_path: Path, log: Path, *, sleep: float) -> subprocess.Popen:
    path = tmp_path / f"{Path(recipe.output.folder).name}.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "SHARD_LOG": str(log), "SHARD_SLEEP": str(sleep)}
    args = ["iterate", str(path), "--batch-size", "1", "--shard-rows", "1", "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_a_round_killed_mid_step_resumes_from_its_shards_byte_identical(tiny_models, tmp_path, no_training):
    recipe = _one_round(tmp_path, tiny_models, "killed", prompts=6)
    log = tmp_path / "shards.log"
    proc = _iterate(recipe, tmp_path, log, sleep=0.3)

    def two_logprob_shards() -> bool:  # the sampler is done and the log-prob step has computed two shards
        return sum(name == "LogProbAnnotator" for name, _ in _shards(log)) >= 2

    kill_when(proc, two_logprob_shards, "the log-prob step", 120)
    first = _shards(log)
    folder = Path(recipe.output.folder)
    assert not (folder / "round-1" / "release").exists()
    state = json.loads((folder / IT.STATE_FILE).read_text())
    assert "status" not in state["rounds"].get("1", {})  # the round had not released anything

    # the same command again
    proc = _iterate(recipe, tmp_path, log, sleep=0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    proc.stderr.close()
    second = _shards(log)[len(first) :]
    assert not [s for s in second if s[0] == "ResponseSampler"], "the finished sampling is not recomputed"
    started = {start for name, start in first if name == "LogProbAnnotator"}
    finished = started - {max(started)}  # the last one logged may have died before its cache file was written
    redone = {start for name, start in second if name == "LogProbAnnotator"}
    assert finished and not (finished & redone), "finished log-prob shards are reused"
    assert finished | redone == set(range(6)), "every unfinished shard is computed"

    # an uninterrupted run of the same recipe elsewhere writes the same bytes
    reference = recipe.with_overrides(folder=str(tmp_path / "reference"))
    IT.run_iterations(reference, batch_size=1, shard_rows=1, progress=False)  # (no_training: as in the child)
    resumed, uninterrupted = folder / "round-1" / "release", tmp_path / "reference" / "round-1" / "release"
    assert set(_data_files(resumed)) == {
        f"data/{c}/train-00000-of-00001.parquet" for c in ("candidates", PAIRS)
    }
    assert _data_files(resumed) == _data_files(uninterrupted)
