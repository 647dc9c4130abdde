"""The headline of a prepared GPU run, as text: each folder's status.txt, then per bench JSON the throughput of
each method, the ratios, roofline fractions, targets and checks. ``benchmarks/gpu_issue15.sh`` prints it, so
the device reply's output tail holds the numbers even if files do not come back.

Reads bench_logprobs.py JSON (``methods``/``ratios``/``roofline``) and bench_sampling.py JSON
(``results``/``ratio_b_over_a``); any other JSON is listed by its top-level keys. A file cut off mid-write
is reported, not raised.

Usage: python benchmarks/gpu_summary.py FOLDER [FOLDER ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def logprobs_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"  {report.get('device_name')} {report.get('shape')} repeats {report.get('repeats_done')}"]
    lines.append(f"  main_wall_s {_num(report.get('main_wall_s'))}")
    for label, entry in report.get("methods", {}).items():
        if "tokens_per_s" not in entry:
            lines.append(f"  {label}: {entry.get('unavailable') or entry.get('error')}")
            continue
        extra = {k: entry[k] for k in ("compiled", "compile_error", "setup_and_warmup_s") if entry.get(k)}
        lines.append(f"  {label}: {_num(entry['tokens_per_s'])} tok/s {extra or ''}")
        if "liger_check" in entry:
            lines.append(f"    liger_check {json.dumps(entry['liger_check'])}")
    lines.append(f"  ratios {json.dumps({k: round(v, 3) for k, v in report.get('ratios', {}).items()})}")
    roofline = report.get("roofline") or {}
    for key in ("fraction", "fraction_of_measured_matmul"):
        if roofline.get(key):
            lines.append(f"  roofline {key} {json.dumps({k: round(v, 3) for k, v in roofline[key].items()})}")
    if roofline:
        lines.append(f"  measured_matmul_flops {_num(roofline.get('measured_matmul_flops'))}")
    for key in [k for k in report if k.startswith("targets")]:
        lines.append(f"  {key} {json.dumps(report[key])}")
    return lines


def sampling_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for label, entry in report.get("results", {}).items():
        rate = entry.get("tokens_per_s") if isinstance(entry, dict) else None
        lines.append(f"  {label}: {_num(rate)} tok/s")
    lines.append(f"  ratio_b_over_a {report.get('ratio_b_over_a')} (target {report.get('target_ratio')})")
    return lines


def summarize(folder: Path) -> list[str]:
    lines = [f"== {folder}"]
    status = folder / "status.txt"
    lines += status.read_text().splitlines() if status.exists() else ["(no status.txt)"]
    for path in sorted(folder.glob("bench_*.json")):
        lines.append(f"-- {path.name}")
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            lines.append(f"  unreadable: {error}")
            continue
        if "methods" in report:
            lines += logprobs_lines(report)
        elif "results" in report:
            lines += sampling_lines(report)
        else:
            lines.append(f"  keys: {sorted(report)}")
    return lines


def main() -> None:
    for folder in sys.argv[1:]:
        print("\n".join(summarize(Path(folder))))


if __name__ == "__main__":
    main()
