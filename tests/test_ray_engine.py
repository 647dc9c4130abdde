"""The Ray engine on a local two-CPU Ray cluster (one per test module): the same recipe gives the same
release, row by row, as the single-process engine; model steps run in actors, pure-CPU steps in tasks;
finished shards, whichever engine wrote them, are not recomputed."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from hfpref.cli.main import main
from hfpref.core.step import RowError, to_python
from hfpref.models.step import ModelStep
from hfpref.pipeline import recipe as R
from hfpref.pipeline.default_data import load_ifeval_candidates
from hfpref.pipeline.engines import EngineError
from hfpref.pipeline.recipe import DEFAULT_RECIPE, Recipe
from hfpref.steps.selection import PairSelector
from tests.helpers import DeclaredColumns, LoggedModelConfig, append_json_line, fake_model_folder
from tests.test_resume import logged, ray_actor, rows_file

ray = pytest.importorskip("ray")

from hfpref.pipeline.engines.ray_engine import RayEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster whose workers can import this test module's steps."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield
    ray.shutdown()


# ---- the embedded default recipe plus a log-prob model step, both engines -----------------------------


def _table_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _same_row(got: dict, want: dict, where: str) -> None:
    assert list(got) == list(want), where
    for column, value in want.items():
        _same_value(got[column], value, f"{where} column {column}")


def _same_value(got, want, where: str) -> None:
    """Equal, with floats to 1e-6 relative (model log-probs; every other float is computed identically)."""
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6, nan_ok=True), where
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), where
        for g, w in zip(got, want, strict=True):
            _same_value(g, w, where)
    elif isinstance(want, dict) and isinstance(got, dict):
        assert list(got) == list(want), where
        for key in want:
            _same_value(got[key], want[key], where)
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"


def test_release_equals_the_single_process_engine_row_by_row(cluster, tmp_path, tiny_models):
    subset = load_ifeval_candidates(tmp_path / "default").select(range(16))
    raw = json.loads(json.dumps(DEFAULT_RECIPE))
    raw["steps"].append(
        {
            "step": "LogProbAnnotator",
            "config": {"model": str(tiny_models["policy"]), "dtype": "float32", "overflow": "truncate"},
        }
    )
    raw["pairs"]["strategies"] = "all"  # with ref_logps every strategy runs, p_Δ ones included
    releases = {}
    for engine in ("local", "ray"):
        subset.save_to_disk(str(tmp_path / f"input-{engine}"))  # its own copy: caches live next to the data
        raw["input"] = {"path": str(tmp_path / f"input-{engine}")}
        recipe = tmp_path / f"recipe-{engine}.yaml"
        recipe.write_text(json.dumps(raw))
        releases[engine] = tmp_path / f"release-{engine}"
        args = ["curate", str(recipe), "-o", str(releases[engine]), "--batch-size", "8", "--no-progress"]
        assert main([*args, "--engine", engine, *(["--concurrency", "1"] if engine == "ray" else [])]) == 0
    local, on_ray = releases["local"], releases["ray"]

    files = sorted(p.relative_to(local) for p in local.glob("data/*/*.parquet"))
    assert len(files) == 13  # 12 strategies + candidates
    assert files == sorted(p.relative_to(on_ray) for p in on_ray.glob("data/*/*.parquet"))
    for name in files:
        assert pq.read_schema(on_ray / name) == pq.read_schema(local / name), name
        want, got = _table_rows(local / name), _table_rows(on_ray / name)
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_row(g, w, f"{name} row {i}")

    manifests = [json.loads((folder / "hfpref_manifest.json").read_text()) for folder in (local, on_ray)]
    assert manifests[0]["configs"] == manifests[1]["configs"]  # row counts, drop reasons, statistics
    candidates = _table_rows(on_ray / "data/candidates/train-00000-of-00001.parquet")
    assert [row["key"] for row in candidates] == subset["key"], "rows come back in input order"
    assert all(math.isfinite(x) for row in candidates for x in row["ref_logps"])


# ---- where steps run, and resuming across engines -----------------------------------------------------


class WhereModel(DeclaredColumns, ModelStep):
    """A model step without weights: logs each load and batch with the Ray actor it ran in."""

    config_class = LoggedModelConfig
    config: LoggedModelConfig
    outputs = ("words",)

    def load(self, rank):
        _log(self.config.log, "load", None)
        return "loaded"

    def process(self, batch, rank, indices):
        assert self.resources(rank) == "loaded"
        _log(self.config.log, "model", indices)
        return {"words": [[len(r.split()) for r in responses] for responses in batch["responses"]]}


def _log(path: str, event: str, indices) -> None:
    append_json_line(path, [event, os.getpid(), ray_actor(), indices])


def test_actors_for_model_steps_tasks_for_cpu_steps_and_resume_from_local_shards(
    cluster, tmp_path, monkeypatch
):
    # the pure-CPU step lives in a module that does not import torch, so Ray task workers start fast
    monkeypatch.setitem(R.STEP_REGISTRY, "CountedLengths", "tests.test_resume:CountedLengths")
    monkeypatch.setitem(R.STEP_REGISTRY, "WhereModel", "tests.test_ray_engine:WhereModel")
    model = fake_model_folder(tmp_path)
    rows = rows_file(tmp_path, n=48)
    cpu_log, model_log = tmp_path / "cpu-log", tmp_path / "model-log"
    recipe = Recipe.from_dict(
        {
            "input": {"path": str(rows)},
            "steps": [
                {"step": "CountedLengths", "config": {"log": str(cpu_log), "fail_from_row": 32}},
                {"step": "WhereModel", "config": {"model": str(model), "log": str(model_log)}},
            ],
            "pairs": {"strategies": ["max_margin", "reward_only"]},
            "output": {"name": "ray-test", "version": "0.1.0"},
        }
    )

    # a local run crashes in the CPU step at row 32: its shards of rows 0-15 and 16-31 are cached
    Path(str(cpu_log) + ".fail").touch()
    with pytest.raises(RuntimeError, match="simulated crash at rows 32"):
        recipe.run(cache_dir=tmp_path / "cache", batch_size=4, shard_rows=16, progress=False)
    Path(str(cpu_log) + ".fail").unlink()
    local_batches = len(logged(cpu_log))

    engine = RayEngine(concurrency=2, shard_rows=16, progress=False)
    result = recipe.run(cache_dir=tmp_path / "cache", batch_size=4, engine=engine)
    assert engine.executions == 3  # the CPU step's last shard, the model step, the pairs
    cpu = logged(cpu_log, with_actor=True)[local_batches:]
    assert sorted(first for *_, first, _ in cpu) == list(range(32, 48, 4)), (
        "finished shards are not recomputed"
    )
    assert {(actor, rows) for _, _, actor, _, rows in cpu} == {(None, 4)}, (
        "CPU steps run as tasks, in local batches"
    )
    assert os.getpid() not in {pid for pid, *_ in cpu}

    events = [json.loads(line) for line in model_log.read_text().splitlines()]
    batches = [(actor, indices) for kind, _, actor, indices in events if kind == "model"]
    assert sorted(indices[0] for _, indices in batches) == list(range(0, 48, 4))
    assert all(len(indices) == 4 for _, indices in batches), "Ray batches are the local batches"
    actors = {actor for actor, _ in batches}
    assert None not in actors and 1 <= len(actors) <= 2, "model steps run in (at most 2) actors"
    loads = Counter(actor for kind, _, actor, _ in events if kind == "load")
    assert set(loads) == actors and set(loads.values()) == {1}, "each actor loads its model once"

    reference = recipe.run(cache_dir=tmp_path / "cache-ref", batch_size=4, progress=False)
    assert result.candidates.to_list() == reference.candidates.to_list()
    assert result.candidates.features == reference.candidates.features
    for strategy in ("max_margin", "reward_only"):
        assert result.pairs[strategy].to_list() == reference.pairs[strategy].to_list()
        assert result.pairs[strategy].features == reference.pairs[strategy].features
        assert result.dropped[strategy] == reference.dropped[strategy]

    recipe.run(cache_dir=tmp_path / "cache", batch_size=4, engine=engine)
    assert engine.executions == 3, "a finished run on Ray is all cache hits: Ray is not asked"


def test_a_bad_row_raises_the_steps_own_error_naming_the_dataset_row(cluster):
    rows = {"key": [7, 8, 9], "prompt": ["a", "b", "c"], "responses": [["x", "y"], ["x", "q"], ["z", "w"]]}
    rows["rewards"] = [[1.0, 2.0], [1.0, 0.0], [0.5]]
    with pytest.raises(
        RowError, match=r"row 2 key=9 column 'rewards' must hold 2 numbers \(one per response\)"
    ):
        RayEngine(progress=False).map_step(
            PairSelector(strategy="max_margin"), Dataset.from_dict(rows), batch_size=2
        )


def test_asking_for_gpus_a_cluster_lacks_is_an_error(cluster):
    with pytest.raises(EngineError, match=r"1 model actors x 1 GPU need 1 GPUs; the Ray cluster has 0"):
        RayEngine(gpus=1).actor_options()
    assert RayEngine().actor_options() == {"concurrency": 2, "num_gpus": 0.0, "num_cpus": 1}
    assert RayEngine(concurrency=1).actor_options()["concurrency"] == 1


def test_step_classes_run_directly_in_ray_map_batches_as_design_describes(cluster):
    """DESIGN.md's protocol without the engine: map_batches(StepClass, fn_constructor_kwargs=...) on numpy
    batches gives what Dataset.map gives (kwargs arrive as the Json() column's raw text, input columns must
    come back since Ray keeps only what the function returns)."""
    import hfpref
    from hfpref.steps.ifeval import IFEvalConfig, IFEvalVerifier
    from hfpref.steps.pair_metrics import PairMetrics, PairMetricsConfig

    candidates = hfpref.load_ifeval_candidates().select(range(12))
    local = candidates.map(IFEvalVerifier(), batched=True).map(PairMetrics(), batched=True)
    ray_rows = (
        ray.data.from_arrow(candidates.data.table)
        .map_batches(
            IFEvalVerifier,
            fn_constructor_kwargs={"config": IFEvalConfig()},
            batch_format="numpy",
            concurrency=1,
        )
        .map_batches(
            PairMetrics,
            fn_constructor_kwargs={"config": PairMetricsConfig()},
            batch_format="numpy",
            concurrency=1,
        )
        .take_all()
    )
    by_key = {row["key"]: row for row in ray_rows}
    assert sorted(by_key) == sorted(local["key"])
    for want in local:
        got = by_key[want["key"]]
        for column in ("rewards", "correctness", "edit_distance_matrix", "dcrm_matrix", "responses"):
            assert to_python(got[column]) == want[column], (want["key"], column)


# ---- on a cluster that is all this host, Ray tasks write the local engine's cache files ------------------


@pytest.mark.parametrize("tasks_write_caches", [True, False], ids=["local-cluster", "rows-through-ray"])
def test_steps_and_selectors_give_the_local_engines_rows_and_caches(cluster, tmp_path, tasks_write_caches):
    from hfpref.pipeline.engines.local import LocalEngine, map_step
    from hfpref.pipeline.resume import is_cached
    from tests.test_resume import CountedLengths, load_rows

    data = load_rows(rows_file(tmp_path, n=48), tmp_path / "cache")
    engine = RayEngine(progress=False, shard_rows=16)
    assert engine.writes_caches(data), "the test cluster is this host"
    engine._local = tasks_write_caches  # the other path is the one a multi-node cluster takes
    expected = [[float(len(r)) for r in row["responses"]] for row in data]  # rewards by hand

    step = CountedLengths(log=str(tmp_path / "log-step"))
    out = engine.map_step(step, data, batch_size=4)
    assert out["rewards"] == expected
    assert out._fingerprint == step.output_fingerprint(data._fingerprint)
    computed = logged(tmp_path / "log-step", with_actor=True)
    assert sorted(first for *_, first, _ in computed) == list(range(0, 48, 4)), "each batch once"
    assert {(actor, rows) for _, _, actor, _, rows in computed} == {(None, 4)}, "in Ray tasks, local batches"
    assert os.getpid() not in {pid for pid, *_ in computed}

    selectors = {name: CountedLengths(log=str(tmp_path / f"log-{name}")) for name in ("a", "b", "c")}
    pairs = dict(engine.select_pairs(selectors, data, batch_size=4))
    for name, selector in selectors.items():
        assert pairs[name]["rewards"] == expected
        assert pairs[name]._fingerprint == selector.output_fingerprint(data._fingerprint)
        assert sorted(first for *_, first, _ in logged(tmp_path / f"log-{name}")) == list(range(0, 48, 4))
    assert engine.executions == 2

    # the local engine with as many workers as the cluster has CPUs finds the step's shards in the cache,
    # and, when Ray tasks wrote them (one task per selector), the selectors' whole outputs
    again = map_step(step, data, batch_size=4, num_proc=2, shard_rows=16)
    assert len(logged(tmp_path / "log-step")) == 12, "nothing recomputed"
    assert again.to_list() == out.to_list()
    assert all(is_cached(selector, data) for selector in selectors.values()) is tasks_write_caches
    local_pairs = dict(LocalEngine().select_pairs(selectors, data, batch_size=4, num_proc=2))
    assert all(local_pairs[name].to_list() == pairs[name].to_list() for name in selectors)

    engine.map_step(step, data, batch_size=4)
    list(engine.select_pairs(selectors, data, batch_size=4))
    assert engine.executions == 2, "a rerun is all cache hits: Ray is not asked"


def test_a_bad_row_in_a_ray_task_raises_the_steps_own_error_naming_the_dataset_row(cluster, tmp_path):
    from tests.test_resume import CountedLengths

    rows = {"key": [7, 8, 9], "prompt": ["a", "b", "c"], "responses": [["x", "y"], ["x", "q"], ["z", "w"]]}
    rows["rewards"] = [[1.0, 2.0], [1.0, 0.0], [0.5]]
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "rows"))
    data = Dataset.load_from_disk(str(tmp_path / "rows"))
    engine = RayEngine(progress=False, shard_rows=2)
    assert engine.writes_caches(data)
    selectors = {s: PairSelector(strategy=s) for s in ("max_margin", "reward_only")}
    with pytest.raises(
        RowError, match=r"row 2 key=9 column 'rewards' must hold 2 numbers \(one per response\)"
    ) as raised:
        list(engine.select_pairs(selectors, data, batch_size=2))
    assert any("raised in a Ray worker" in note for note in raised.value.__notes__)

    step = CountedLengths(log=str(tmp_path / "log"), fail_from_row=2)
    Path(str(tmp_path / "log") + ".fail").touch()
    with pytest.raises(RuntimeError, match=r"simulated crash at rows 2\.\.2") as raised:
        engine.map_step(step, data, batch_size=2)  # shards of rows 0-1 and 2: the second fails
    assert any("raised in a Ray worker" in note for note in raised.value.__notes__)


def test_a_cluster_is_local_when_every_alive_node_is_this_host(cluster):
    from types import SimpleNamespace

    from hfpref.pipeline.engines.ray_local import is_local_cluster

    def fake(*nodes):
        util = SimpleNamespace(get_node_ip_address=lambda: "10.0.0.1")
        return SimpleNamespace(
            util=util, nodes=lambda: [{"NodeManagerAddress": a, "Alive": b} for a, b in nodes]
        )

    assert is_local_cluster(ray)  # the test cluster
    assert is_local_cluster(fake(("10.0.0.1", True), ("10.0.0.1", True)))
    assert is_local_cluster(fake(("10.0.0.1", True), ("10.0.0.2", False))), "a dead node is not asked"
    assert not is_local_cluster(fake(("10.0.0.1", True), ("10.0.0.2", True)))
