"""A Ray engine that starts its own local cluster: it starts it when it is made, in a background thread
(the driver goes on meanwhile), runs on it, and shuts it down when closed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_resume import CountedLengths, load_rows, logged, rows_file

ray = pytest.importorskip("ray")

from hfpref.pipeline.engines.ray_engine import RayEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_an_engine_starts_its_cluster_in_the_background_and_shuts_it_down(tmp_path):
    assert not ray.is_initialized(), "no cluster left over from another test module"
    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}}
    engine = RayEngine(
        progress=False,
        shard_rows=8,
        init_kwargs={
            "num_cpus": 2,
            "include_dashboard": False,
            "log_to_driver": False,
            "runtime_env": runtime_env,
        },
    )
    data = load_rows(rows_file(tmp_path, n=20), tmp_path / "cache")  # read while the cluster starts
    try:
        step = CountedLengths(log=str(tmp_path / "log"))
        out = engine.map_step(step, data, batch_size=4)
        assert ray.is_initialized()
        assert out["rewards"] == [[float(len(r)) for r in row["responses"]] for row in data]
        computed = logged(tmp_path / "log")
        assert sorted(first for _, _, first, _ in computed) == list(range(0, 20, 4))
        assert os.getpid() not in {pid for pid, *_ in computed}, "computed in Ray tasks"
    finally:
        engine.close()
    assert not ray.is_initialized(), "the cluster the engine started is shut down by close"
