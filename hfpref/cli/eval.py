"""``hfpref eval``: IFEval accuracy of a model, and reward-model win rate of a model over a baseline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    evaluate = subparsers.add_parser("eval", help="evaluate a policy: IFEval accuracy, reward-model win rate")
    benchmarks = evaluate.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    ifeval = benchmarks.add_parser("ifeval", help="IFEval accuracy of greedy responses (4 numbers).")
    ifeval.add_argument("--model", required=True, help="Hub id or local folder")
    ifeval.add_argument("--limit", type=int, default=None, help="only the first N IFEval prompts")
    ifeval.add_argument("--max-new-tokens", type=int, default=1024)
    _add_sampler_options(ifeval)
    ifeval.add_argument("--output", default=None, help="write the full result (with per-prompt records) here")
    ifeval.set_defaults(func=run_ifeval)

    winrate = benchmarks.add_parser(
        "winrate", help="Win rate of --model over --baseline, judged by a reward model (ties count half)."
    )
    winrate.add_argument("--model", required=True)
    winrate.add_argument(
        "--baseline", required=True, help="e.g. the reference policy the model was trained from"
    )
    winrate.add_argument("--reward-model", required=True)
    winrate.add_argument("--reward-revision", default=None)
    winrate.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the reward model's own modeling code (custom-code models such as ArmoRM); read it first",
    )
    winrate.add_argument(
        "--prompts",
        default=None,
        help="JSON/JSONL/CSV/Parquet file with a 'prompt' column, or 'default' (IFEval)",
    )
    winrate.add_argument("--limit", type=int, default=None)
    winrate.add_argument("--max-new-tokens", type=int, default=512)
    winrate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    winrate.add_argument("--seed", type=int, default=0)
    _add_sampler_options(winrate)
    winrate.add_argument(
        "--output", default=None, help="write the full result (with per-prompt records) here"
    )
    winrate.set_defaults(func=run_winrate)


def _add_sampler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None, help="default: cuda:0 when a GPU is present, else cpu")
    parser.add_argument("--backend", default="auto", choices=("auto", "transformers", "vllm"))
    parser.add_argument("--token-budget", type=int, default=None, help="padded tokens per generate call")


def _sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"dtype": args.dtype, "device": args.device, "backend": args.backend}
    if args.token_budget is not None:
        options["token_budget"] = args.token_budget
    return options


def check_sources(models: dict[str, str], prompts: str | None = None, output: str | None = None) -> None:
    """Before any model loads: a local path that does not exist is "no such folder", a Hub id with the Hub
    unreachable fails at once (HF_HUB_OFFLINE: the cache serves), a prompts file reads line by line, and
    the output file's folder can be written."""
    from hfpref.models.hub import check_model_path, is_local_model
    from hfpref.pipeline.preflight import (
        check_hub_reachable,
        check_input_file,
        check_output_folder,
        hub_offline_allowed,
    )

    for flag, model in models.items():
        check_model_path(model, flag)
    if prompts not in (None, "default"):
        if not Path(prompts).exists():
            raise FileNotFoundError(2, "no such prompts file", prompts)
        check_input_file(
            prompts, one_prompt_form=False
        )  # the win rate reads rows one by one: both forms work
    if any(not is_local_model(m) for m in models.values()) and not hub_offline_allowed():
        check_hub_reachable(f"a Hub model ({', '.join(m for m in models.values() if not is_local_model(m))})")
    if output:
        target = Path(output)
        if target.is_dir():
            raise IsADirectoryError(21, "--output is a folder; give a file name", output)
        check_output_folder(target.parent if str(target.parent) else ".", "--output's folder")


def _report(result: dict[str, Any], output: str | None) -> None:
    """Print the result without its per-prompt records; write all of it to ``output`` when given."""
    from hfpref.training.evaluation import write_json

    print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=2, ensure_ascii=False))
    if output:
        write_json(result, output)


def run_ifeval(args: argparse.Namespace) -> int:
    from hfpref.training.evaluation import evaluate_ifeval

    check_sources({"--model": args.model}, output=args.output)
    result = evaluate_ifeval(
        args.model, limit=args.limit, max_new_tokens=args.max_new_tokens, **_sampler_options(args)
    )
    _report(result, args.output)
    return 0


def run_winrate(args: argparse.Namespace) -> int:
    from hfpref.training.evaluation import win_rate

    check_sources(
        {"--model": args.model, "--baseline": args.baseline, "--reward-model": args.reward_model},
        prompts=args.prompts,
        output=args.output,
    )
    result = win_rate(
        args.model,
        args.baseline,
        args.reward_model,
        prompts=args.prompts,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        reward_revision=args.reward_revision,
        reward_dtype=args.dtype,
        reward_trust_remote_code=args.trust_remote_code,
        **_sampler_options(args),
    )
    _report(result, args.output)
    return 0
