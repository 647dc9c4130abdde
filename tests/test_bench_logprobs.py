"""The pieces of benchmarks/bench_logprobs.py that decide what a GPU run reports: the liger check (that it
passes the unchanged model and fails a changed one), the targets a left-out baseline drops, the roofline peak
by GPU name, and the CPU path where liger is unavailable."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from benchmarks import bench_logprobs as bench
from benchmarks import liger_patch
from hfpref.steps.logprobs import ResponseLogProbs

GROUP = [([5, 9, 2, 7, 7, 1, 3, 8, 4, 6], 4), ([5, 9, 2, 7, 11, 12], 4), ([5, 9, 2, 7, 30, 31, 32, 2], 4)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(bench.SHAPES["qwen2-tiny"](), dtype=torch.float32).eval()


def _check(model, other, monkeypatch) -> dict:
    """liger_check of ``other`` as (e), with liger's own pieces (absent on CPU) stubbed out."""
    monkeypatch.setattr(liger_patch, "liger_rope", lambda _model: contextlib.nullcontext())
    monkeypatch.setattr(liger_patch, "op_errors", lambda _a, _b: {})
    scorers = {"c": ResponseLogProbs(model), "e": ResponseLogProbs(other)}
    exact = [bench.one_at_a_time(model, GROUP)[i] for i in range(len(GROUP))]
    sums = {name: scorer([GROUP])[0] for name, scorer in scorers.items()} | {"a": exact}
    return bench.liger_check(model, scorers, GROUP, sums)


def test_liger_check_passes_the_same_model(model, monkeypatch):
    check = _check(model, copy.deepcopy(model), monkeypatch)
    assert check["tolerance_relative"] == 1e-4  # float32: the runner's own tolerance
    assert check["hidden_relative_error_e"] < 1e-5 and check["sums_relative_error_vs_a_e"] < 1e-5
    assert check["passed"] is True


def test_liger_check_fails_a_changed_norm(model, monkeypatch):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].input_layernorm.weight.mul_(1.05)  # what a wrong fused RMSNorm would do
    check = _check(model, changed, monkeypatch)
    assert check["hidden_relative_error_e"] > 1e-3
    assert check["hidden_relative_error_c"] < 1e-5  # (c) is measured against the same exact loop
    assert check["passed"] is False


def test_targets_drop_checks_of_a_left_out_baseline():
    report = {
        "shape": "qwen2-1.5b",
        "ratios": {"d_over_a": 12.0},
        "methods": {bench.LABELS["d"]: {}},
        "roofline": {"fraction": {"d": 0.51}},
    }
    checks = bench.targets(report, torch.device("cuda"), {"a", "c"}, ours="d")
    assert checks == {"d_over_a_at_least_10": True, "d_roofline_at_least_50pct": True, "all_met": True}
    with_b = bench.targets(report, torch.device("cuda"), {"a", "b", "c"}, ours="d")
    assert with_b["d_over_b_at_least_2"] is False and with_b["all_met"] is False  # ran, no ratio: not met


def test_roofline_peak_by_gpu_name():
    assert bench.dense_bf16_peak("NVIDIA H200")[0] == 989e12
    assert bench.dense_bf16_peak("NVIDIA H100 80GB HBM3") == (989e12, "H100 datasheet, dense bf16")
    assert "unknown GPU" in bench.dense_bf16_peak("NVIDIA A100-SXM4-80GB")[1]


def test_liger_unavailable_on_cpu(model):
    reason = liger_patch.unavailable(model, torch.device("cpu"))
    assert reason is not None and reason.split()[0] in ("liger-kernel", "triton", "liger's")
