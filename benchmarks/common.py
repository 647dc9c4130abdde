"""What the benchmark scripts share: a wall-and-CPU stopwatch per stage, the machine's description, and how a
JSON report is printed and saved.

The scripts put the repository root on ``sys.path`` and import this as ``benchmarks.common``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class StageClock:
    """Wall and CPU seconds (this process: user + system) of named stages, in the order first timed."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (timing it again replaces the earlier time)."""
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - start
            self.cpu[name] = time.process_time() - start_cpu

    def report(self, digits: int = 3) -> dict[str, dict[str, float]]:
        """``{stage: {"wall": s, "cpu": s}}``, rounded."""
        return {
            name: {"wall": round(wall, digits), "cpu": round(self.cpu[name], digits)}
            for name, wall in self.wall.items()
        }


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def machine() -> dict[str, Any]:
    """The CPUs, platform and Python a result was measured on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def emit_report(report: dict[str, Any], output: str | Path | None = None, *, echo: bool = True) -> str:
    """Print ``report`` as indented JSON (unless not ``echo``) and, with ``output``, write it there too
    (folders made as needed). Values JSON cannot hold (paths, numpy scalars) are written as their ``str``.
    Returns the text.
    """
    text = json.dumps(report, indent=2, default=str)
    if echo:
        print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n", encoding="utf-8")
    return text


def model_sizes(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict[str, int]:
    """A decoder's size fields, named as transformers' Llama and Qwen2 configs name them."""
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
    }


def interleaved(
    runs: dict[str, Any], repeats: int, measure: Callable[[Any], tuple[float, Any]]
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """``measure(run)`` for every run, ``repeats`` times, the order rotating each repeat (so no run always goes
    first, on a cold or a warm machine). Returns the seconds of each run's repeats and its last result."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    names = list(runs)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            elapsed, results[name] = measure(runs[name])
            seconds[name].append(elapsed)
    return seconds, results
