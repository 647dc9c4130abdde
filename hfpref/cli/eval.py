"""``hfpref eval``: IFEval accuracy of a model, and reward-model win rate of a model over a baseline."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hfpref.cli.parsing import add_command, add_group, arguments, dataclass_parser, option, required, switch


@dataclass(kw_only=True)
class SamplerOptions:
    """How the evaluated models generate (``hfpref.steps.sampling.SamplerConfig`` fields)."""

    dtype: str = option("model dtype", default="auto")
    device: str | None = option("default: cuda:0 when a GPU is present, else cpu")
    backend: Literal["auto", "transformers", "vllm"] = option("generation backend", default="auto")
    token_budget: int | None = option("padded tokens per generate call")

    def sampler_options(self) -> dict[str, Any]:
        options = {"dtype": self.dtype, "device": self.device, "backend": self.backend}
        if self.token_budget is not None:
            options["token_budget"] = self.token_budget
        return options


@dataclass(kw_only=True)
class IfevalArguments:
    """The model IFEval answers are sampled from, and where the full result goes."""

    model: str = required("Hub id or local folder")
    limit: int | None = option("only the first N IFEval prompts")
    max_new_tokens: int = option("tokens per response at most", default=1024)
    output: str | None = option("write the full result (with per-prompt records) here")


@dataclass(kw_only=True)
class WinrateArguments:
    """The two policies, the reward model that judges them, and the prompts."""

    model: str = required("the policy whose win rate is measured (Hub id or local folder)")
    baseline: str = required("e.g. the reference policy the model was trained from")
    reward_model: str = required("the judge: a reward model (Hub id or local folder)")
    reward_revision: str | None = option("revision of the reward model")
    trust_remote_code: bool = switch(
        "run the reward model's own modeling code (custom-code models such as ArmoRM); read it first"
    )
    prompts: str | None = option("JSON/JSONL/CSV/Parquet file with a 'prompt' column, or 'default' (IFEval)")
    limit: int | None = option("only the first N prompts")
    max_new_tokens: int = option("tokens per response at most", default=512)
    temperature: float = option("0 = greedy (default)", default=0.0)
    seed: int = option("sampling seed", default=0)
    output: str | None = option("write the full result (with per-prompt records) here")


def add_parser(subparsers: Any) -> None:
    benchmarks = add_group(
        subparsers, "eval", "benchmark", help="evaluate a policy: IFEval accuracy, reward-model win rate"
    )
    add_command(
        benchmarks,
        "ifeval",
        dataclass_parser(IfevalArguments, SamplerOptions),
        run_ifeval,
        help="IFEval accuracy of greedy responses (4 numbers).",
    )
    add_command(
        benchmarks,
        "winrate",
        dataclass_parser(WinrateArguments, SamplerOptions),
        run_winrate,
        help="Win rate of --model over --baseline, judged by a reward model (ties count half).",
    )


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


def _report(result: dict[str, Any], output: str | None) -> int:
    """Print the result without its per-prompt records; write all of it to ``output`` when given."""
    from hfpref.training.evaluation import write_json

    print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=2, ensure_ascii=False))
    if output:
        write_json(result, output)
    return 0


def run_ifeval(args: argparse.Namespace) -> int:
    from hfpref.training.evaluation import evaluate_ifeval

    options, sampler = arguments(args, IfevalArguments), arguments(args, SamplerOptions)
    check_sources({"--model": options.model}, output=options.output)
    result = evaluate_ifeval(
        options.model, limit=options.limit, max_new_tokens=options.max_new_tokens, **sampler.sampler_options()
    )
    return _report(result, options.output)


def run_winrate(args: argparse.Namespace) -> int:
    from hfpref.training.evaluation import win_rate

    options, sampler = arguments(args, WinrateArguments), arguments(args, SamplerOptions)
    models = {
        "--model": options.model,
        "--baseline": options.baseline,
        "--reward-model": options.reward_model,
    }
    check_sources(models, prompts=options.prompts, output=options.output)
    result = win_rate(
        options.model,
        options.baseline,
        options.reward_model,
        prompts=options.prompts,
        limit=options.limit,
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        seed=options.seed,
        reward_revision=options.reward_revision,
        reward_dtype=sampler.dtype,
        reward_trust_remote_code=options.trust_remote_code,
        **sampler.sampler_options(),
    )
    return _report(result, options.output)
