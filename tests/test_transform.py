"""The transform protocol: declared columns, numpy batches, pickling, fingerprints and cache hits."""

from __future__ import annotations

import dataclasses
import pickle

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, Step, StepConfig, runtime_field
from tests.helpers import FactorConfig, ScaleList


@dataclasses.dataclass
class ScaleConfig(FactorConfig):
    factor: float = 2.0


class ScaleRewards(ScaleList):
    """Multiplies every reward by a factor; counts how often its 'model' is loaded."""

    config_class = ScaleConfig
    loads = 0
    inputs, outputs = ("rewards",), ("scaled",)

    def load(self, rank):
        type(self).loads += 1
        return {"weights": np.ones(10)}

    def process(self, batch, rank, indices):
        self.resources(rank)  # loads the 'model' once per worker
        return super().process(batch, rank, indices)


def _candidates(tmp_path) -> datasets.Dataset:
    path = tmp_path / "cands.jsonl"
    rows = [{"prompt": f"p{i}", "rewards": [float(i), float(i) + 0.5]} for i in range(5)]
    datasets.Dataset.from_list(rows).to_json(path)
    return datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )


def test_missing_column_names_it_and_lists_present():
    step = ScaleRewards()
    with pytest.raises(MissingColumnError, match=r"'rewards'.*columns present: \['prompt'\]"):
        step({"prompt": ["a"]})


def test_map_and_numpy_batches_agree():
    step = ScaleRewards(factor=3.0)
    batch = {"prompt": ["a", "b"], "rewards": [[1.0, 2.0], [0.5, -1.0]]}
    assert step(batch) == {"scaled": [[3.0, 6.0], [1.5, -3.0]]}
    # Ray Data's numpy format: a list column is an object array of arrays
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    out = step({"prompt": np.array(["a", "b"]), "rewards": ragged})
    assert isinstance(out["scaled"], np.ndarray)
    assert [list(x) for x in out["scaled"]] == [[3.0, 6.0], [1.5, -3.0]]


def test_model_loads_once_and_is_not_pickled():
    ScaleRewards.loads = 0
    step = ScaleRewards()
    step({"rewards": [[1.0]]})
    step({"rewards": [[2.0]]})
    assert ScaleRewards.loads == 1
    clone = pickle.loads(pickle.dumps(step))
    assert clone._loaded == {} and clone.config == step.config
    assert clone.fingerprint() == step.fingerprint()


def test_fingerprint_depends_on_config_and_version():
    a, b = ScaleRewards(factor=2.0), ScaleRewards(factor=2.5)
    assert a.fingerprint() == ScaleRewards(factor=2.0).fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_rerun_is_cache_hit_and_changed_config_is_not(tmp_path):
    ds = _candidates(tmp_path)
    first = ScaleRewards(factor=2.0).apply(ds)
    ScaleRewards.loads = 0
    again = ScaleRewards(factor=2.0).apply(ds)
    assert ScaleRewards.loads == 0, "a rerun of a finished step must not call the step"
    assert again._fingerprint == first._fingerprint
    assert again.cache_files == first.cache_files
    changed = ScaleRewards(factor=2.5).apply(ds)
    assert ScaleRewards.loads == 1
    assert changed._fingerprint != first._fingerprint
    assert changed["scaled"][1] == [2.5, 3.75]


@dataclasses.dataclass
class _Endpoint:
    model: str = "judge"
    timeout: float = runtime_field(30.0)


@dataclasses.dataclass
class _RuntimeConfig(StepConfig):
    factor: float = 1.0
    device: str | None = runtime_field(None)
    endpoint: _Endpoint = dataclasses.field(default_factory=_Endpoint)


class _RuntimeStep(Step):
    config_class = _RuntimeConfig


def test_runtime_fields_stay_out_of_the_fingerprint_at_any_depth():
    base = _RuntimeStep()
    assert base.describe()["config"] == {"factor": 1.0, "endpoint": {"model": "judge"}}
    faster = _RuntimeStep(device="cuda:1", endpoint=_Endpoint(timeout=5.0))
    assert faster.fingerprint() == base.fingerprint()
    assert _RuntimeStep(factor=2.0).fingerprint() != base.fingerprint()
    assert _RuntimeStep(endpoint=_Endpoint(model="other")).fingerprint() != base.fingerprint()
