"""Builders several test modules share: the embedded generators, small test-step scaffolding, TRL's reference
log-probs of a set of pairs, and the canned-judge plumbing of the judge tests.

Kept free of heavy imports at module level (torch, trl are imported inside the functions that need them),
so a test module that only wants a constant does not pay for them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hfpref.core.step import Step, StepConfig
from hfpref.pipeline.default_data import GENERATORS

# the eight generators of the embedded IFEval responses, in the order a candidates row lists them; the
# tests check this list against the packaged Parquet file itself (test_default_data)
EIGHT_GENERATORS: list[str] = list(GENERATORS)


# ---- test steps ------------------------------------------------------------------------------------------


class DeclaredColumns:
    """Mixin for the tests' small steps: the input and output columns as class attributes.

    Put it before ``Step`` (or ``ModelStep``) in the bases: ``class Lengths(DeclaredColumns, Step)``.
    """

    inputs: ClassVar[tuple[str, ...]] = ("responses",)
    outputs: ClassVar[tuple[str, ...]] = ()

    def input_columns(self) -> list[str]:
        return list(self.inputs)

    def output_columns(self) -> list[str]:
        return list(self.outputs)


@dataclasses.dataclass
class LoggedModelConfig(StepConfig):
    """Config of a test model step without weights that logs where it ran."""

    model: str = ""  # a folder: its content hash is the model revision
    revision: str | None = None
    log: str = ""


@dataclasses.dataclass
class FactorConfig(StepConfig):
    """Config of ``ScaleList``."""

    factor: float = 1.0


class ScaleList(DeclaredColumns, Step):
    """A test step: each value of the list column ``inputs[0]`` times ``factor``, as ``outputs[0]``; counts the
    batches it computes in the class attribute ``calls`` (a cache hit computes none)."""

    config_class = FactorConfig
    config: FactorConfig
    calls = 0

    def process(self, batch, rank, indices):
        type(self).calls += 1
        (source,), (target,) = self.inputs, self.outputs
        return {target: [[value * self.config.factor for value in row] for row in batch[source]]}


# prompts for the sampler tests: text, a system + user conversation, an IFEval-style instruction
SAMPLER_PROMPTS = [
    "Write a short poem about the sea.",
    "List the planets.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain why the sky is blue."}],
    "Respond in JSON format with the keys name and age, and do not use any commas.",
]


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Textbook dynamic programme: the independent expectation for rapidfuzz's edit distances."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def append_json_line(path: str | Path, record: Any) -> None:
    """Append ``record`` as one JSON line (test steps log to files: they also run in other processes)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def fake_model_folder(tmp_path: Path) -> Path:
    """A model folder without weights (a config only): its content hash is a ModelStep's revision."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


# ---- hand-made data --------------------------------------------------------------------------------------


def candidate_rows(**columns: list) -> list[dict]:
    """Hand-built candidates rows from columns given by name (one value per row, e.g. ``responses=``,
    ``generators=``, ``rewards=``): row i starts with key i and prompt ``p{i}``, then the columns in order."""
    (n,) = {len(values) for values in columns.values()}
    return [
        {"key": i, "prompt": f"p{i}", **{name: values[i] for name, values in columns.items()}}
        for i in range(n)
    ]


def pair_batch(rows: Sequence[dict]) -> dict[str, list]:
    """A batch of pair rows (prompt, chosen, rejected) as columns."""
    return {key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")}


# ---- running hfpref and TRL ------------------------------------------------------------------------------


def curate_quietly(tmp: Path, *recipe: str) -> tuple[Path, str]:
    """``hfpref curate [recipe] --output tmp/release --cache-dir tmp/cache``, its output captured; fails the test
    (showing stderr) unless it exits 0. Returns the release folder and what the command printed."""
    import contextlib
    import io

    from hfpref.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    argv = [
        "curate",
        *recipe,
        "--output",
        str(tmp / "release"),
        "--cache-dir",
        str(tmp / "cache"),
        "--no-progress",
    ]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, err.getvalue()
    return tmp / "release", out.getvalue()


def trl_reference_rows(
    model: Any, tokenizer: Any, pairs: Sequence[dict], output_dir: Path
) -> dict[str, dict]:
    """TRL's ``DPOTrainer`` rows of ``pairs`` with precomputed reference log-probs, by JSON of the prompt."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(output_dir),
        bf16=False,  # TRL's default bf16 autocast moves its numbers by ~5e-4 (NOTES.md)
        precompute_ref_log_probs=True,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=2,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(list(pairs)),
        processing_class=tokenizer,
    )
    return {json.dumps(row["prompt"]): row for row in trainer.train_dataset}


def assert_ref_logps_match_trl(
    pairs: Sequence[dict], out: dict[str, list], trl_rows: dict[str, dict]
) -> None:
    """Each pair's ``ref_logps`` and ``ref_token_counts`` in ``out`` equal TRL's (``trl_reference_rows``)."""
    import pytest

    for pair, logps, counts in zip(pairs, out["ref_logps"], out["ref_token_counts"], strict=True):
        trl = trl_rows[json.dumps(pair["prompt"])]
        assert logps == pytest.approx([trl["ref_chosen_logps"], trl["ref_rejected_logps"]], abs=1e-4)
        assert counts == [len(trl["chosen_ids"]), len(trl["rejected_ids"])]


# ---- judges ----------------------------------------------------------------------------------------------


def judge_spec(backend: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A judge step's config for a canned judge ``backend`` ("module:Class"), cached under ``tmp_path``."""
    return {
        "model": "canned-judge",
        "backend": backend,
        "cache_dir": str(tmp_path / "judge-cache"),
        **overrides,
    }


# ---- killing a real run -----------------------------------------------------------------------------------


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """SIGKILL ``proc`` (started with ``stderr=PIPE``) as soon as ``ready()``; fail if it ends first or
    ``what`` is not reached within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            err = proc.stderr.read()
            raise AssertionError(
                f"the run ended before {what}: {err.decode() if isinstance(err, bytes) else err}"
            )
        assert time.monotonic() < deadline, f"the run never reached {what}"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
