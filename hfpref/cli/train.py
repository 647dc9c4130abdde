"""``hfpref train dpo``: train a policy with TRL's DPOTrainer on a curated pairs release."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

from hfpref.core.errors import UserError
from hfpref.pipeline.preflight import check_output_folder

# CLI flag -> DPOConfig field, for the flags that differ from the field's name
_FIELD_OF_FLAG = {
    "epochs": "num_train_epochs",
    "lr_scheduler": "lr_scheduler_type",
    "warmup_ratio": "warmup_steps",  # transformers 5: a float below 1 is a ratio of the total steps
    "batch_size": "per_device_train_batch_size",
}
_CONFIG_FLAGS = (
    "beta",
    "learning_rate",
    "epochs",
    "lr_scheduler",
    "warmup_ratio",
    "batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "max_length",
    "bf16",
    "use_cpu",
    "seed",
    "loss_type",
    "logging_steps",
    "save_strategy",
)


def add_schedule_options(parser: argparse.ArgumentParser, rows: str, length: str) -> None:
    """The TrainingArguments flags DPO and KTO share (None = not given: the method's defaults apply)."""
    parser.add_argument("--learning-rate", type=float, default=None, help="default 5e-7")
    parser.add_argument("--epochs", type=float, default=None, help="default 2")
    parser.add_argument("--lr-scheduler", default=None, help="default cosine")
    parser.add_argument("--warmup-ratio", type=float, default=None, help="default 0.1")
    parser.add_argument("--batch-size", type=int, default=None, help=f"per-device train batch size ({rows})")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides epochs)"
    )
    parser.add_argument("--max-length", type=int, default=None, help=f"truncate {length} to this many tokens")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="TRL default: on")
    parser.add_argument("--use-cpu", action="store_true", default=None)


def add_parser(subparsers: Any) -> None:
    train = subparsers.add_parser("train", help="train a policy on a pairs release with TRL")
    methods = train.add_subparsers(dest="method", metavar="METHOD", required=True)
    dpo = methods.add_parser(
        "dpo",
        help="DPO with trl.DPOTrainer; defaults follow the DCRM paper (beta 0.1, lr 5e-7, cosine, warmup 0.1, 2 epochs).",
    )
    dpo.add_argument("--dataset", required=True, help="release folder, Hub repo id, or REPO@REVISION")
    dpo.add_argument("--config", default=None, help="release config (pair strategy), e.g. best_of_n2")
    dpo.add_argument("--split", default="train")
    dpo.add_argument("--model", required=True, help="policy to train (Hub id or local folder)")
    dpo.add_argument("--model-revision", default=None)
    dpo.add_argument("--output-dir", required=True)
    dpo.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="train as a paper trains: dcrm (arXiv DCRM, appendix B), instruction-following (arXiv 2412.15282), "
        "margins (arXiv 2406.17312; silent, DCRM's values); flags given win over the preset",
    )
    # held-out pairs and best-checkpoint selection (transformers' load_best_model_at_end)
    dpo.add_argument(
        "--eval-split-ratio",
        type=float,
        default=None,
        help="hold out this fraction of the training pairs and keep the checkpoint that is best on them",
    )
    dpo.add_argument("--eval-config", default=None, help="held-out pairs from this release config")
    dpo.add_argument(
        "--eval-split", default=None, help="held-out pairs from this split (default train of --eval-config)"
    )
    dpo.add_argument(
        "--best-metric",
        choices=["loss", "accuracy"],
        default=None,
        help="what picks the kept checkpoint: held-out DPO loss (default) or reward accuracy",
    )
    dpo.add_argument(
        "--eval-steps",
        type=float,
        default=None,
        help="evaluate and save every N steps (below 1: a fraction of training; default 0.1)",
    )
    # None means "not given": the DCRM recipe (hfpref.training.dpo.DCRM_RECIPE) or TRL's default applies
    dpo.add_argument("--beta", type=float, default=None, help="DPO beta (default 0.1)")
    add_schedule_options(dpo, rows="pairs", length="prompt+response")
    dpo.add_argument("--seed", type=int, default=None)
    dpo.add_argument("--loss-type", default=None, help="TRL loss type, e.g. sigmoid (DPO), ipo, hinge")
    dpo.add_argument("--logging-steps", type=float, default=None)
    dpo.add_argument("--save-strategy", default=None, help="steps, epoch or no")
    dpo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other trl.DPOConfig field; VALUE is parsed as JSON when it parses (repeatable)",
    )
    dpo.set_defaults(func=run_dpo)
    add_kto_parser(methods)


# KTO flags beyond the shared schedule flags (hfpref.training.kto.KTO_DEFAULTS gives the defaults)
_KTO_FLAGS = (
    *[f for f in _CONFIG_FLAGS if f != "loss_type"],
    "loss_type",
    "desirable_weight",
    "undesirable_weight",
)


def add_kto_parser(methods: Any) -> None:
    kto = methods.add_parser(
        "kto",
        help="KTO with trl.KTOTrainer on the unpaired rows of a pairs config (trl's unpair_preference_dataset); "
        "defaults: beta 0.1, desirable/undesirable weight 1, lr 5e-7, cosine, warmup 0.1, 2 epochs (ours: "
        "arXiv 2604.08723's summary gives none)",
    )
    kto.add_argument("--dataset", required=True, help="release folder, Hub repo id, or REPO@REVISION")
    kto.add_argument("--config", default=None, help="release pairs config, e.g. a sweep level")
    kto.add_argument("--split", default="train")
    kto.add_argument("--model", required=True, help="policy to train (Hub id or local folder)")
    kto.add_argument("--model-revision", default=None)
    kto.add_argument("--output-dir", required=True)
    kto.add_argument("--beta", type=float, default=None, help="KTO beta (default 0.1)")
    kto.add_argument("--desirable-weight", type=float, default=None, help="weight of chosen rows (default 1)")
    kto.add_argument(
        "--undesirable-weight", type=float, default=None, help="weight of rejected rows (default 1)"
    )
    add_schedule_options(kto, rows="rows", length="prompt+completion")
    kto.add_argument("--seed", type=int, default=None, help="training seed, also the unpaired rows' shuffle")
    kto.add_argument("--loss-type", default=None, help="kto (default) or apo_zero_unpaired")
    kto.add_argument("--logging-steps", type=float, default=None)
    kto.add_argument("--save-strategy", default=None, help="steps, epoch or no")
    kto.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other trl.KTOConfig field; VALUE is parsed as JSON when it parses (repeatable)",
    )
    kto.set_defaults(func=run_kto)


class TrainOptionError(UserError):
    """A ``hfpref train`` option that names no DPOConfig field or has a value of the wrong type."""


def _dpo_config_class() -> type:
    from trl import DPOConfig

    return DPOConfig


def check_set_option(field: str, value: Any, item: str, config_class: type | None = None) -> None:
    """Refuse ``--set FIELD=VALUE`` for a field DPOConfig lacks (with the closest names) or a value whose
    type does not match the field's annotation, before any model or data loads."""
    from hfpref.core.step import config_type_hints, type_problem

    config_class = config_class or _dpo_config_class()
    known = [f.name for f in dataclasses.fields(config_class) if f.init]
    if field not in known:
        close = difflib.get_close_matches(field, known, n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; see trl.{config_class.__name__} for the fields"
        )
        raise TrainOptionError(f"--set {item!r}: {config_class.__name__} has no field {field!r}{hint}")
    annotation = config_type_hints(config_class).get(field)
    if annotation is not None:
        problem = type_problem(value, annotation, f"--set {field}")
        if problem:
            raise TrainOptionError(problem)


def config_overrides(
    args: argparse.Namespace, config_class: type | None = None, flags: tuple[str, ...] = _CONFIG_FLAGS
) -> dict[str, Any]:
    """The DPOConfig (or ``config_class``) fields the command line sets (flags given, then ``--set`` pairs)."""
    overrides = {
        _FIELD_OF_FLAG.get(flag, flag): getattr(args, flag)
        for flag in flags
        if getattr(args, flag, None) is not None
    }
    for item in args.set:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise TrainOptionError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        check_set_option(field, value, item, config_class)
        overrides[field] = value
    if getattr(args, "no_progress", False):
        overrides.setdefault("disable_tqdm", True)
    return overrides


def _steps(value: float) -> float | int:
    """``--eval-steps 5`` as the int 5 (a step count), ``0.1`` as a fraction of training."""
    return int(value) if value >= 1 and value == int(value) else value


def check_sources(args: argparse.Namespace) -> None:
    """A local path that does not exist is "no such folder" (not an invalid Hub id), and a Hub id with
    the Hub unreachable fails at once (not after network timeouts); with HF_HUB_OFFLINE the cache serves."""
    from hfpref.models.hub import check_model_path, is_local_model
    from hfpref.pipeline.preflight import check_hub_reachable, hub_offline_allowed
    from hfpref.training.dpo import parse_dataset_spec

    check_model_path(args.model, "--model")
    dataset, _ = parse_dataset_spec(args.dataset)
    if not Path(dataset).exists():
        check_model_path(dataset, "--dataset")  # the same rule tells a meant-local path from a Hub id
    needs_hub = not is_local_model(args.model) or not Path(dataset).is_dir()
    if needs_hub and not hub_offline_allowed():
        check_hub_reachable("a Hub model or dataset")
    check_output_folder(args.output_dir, "--output-dir")


def run_dpo(args: argparse.Namespace) -> int:
    from hfpref.training.dpo import train_dpo

    overrides = config_overrides(args)  # option mistakes first: they cost nothing to find
    check_sources(args)
    path = train_dpo(
        args.dataset,
        args.model,
        args.output_dir,
        config=args.config,
        split=args.split,
        model_revision=args.model_revision,
        preset=args.preset,
        eval_split_ratio=args.eval_split_ratio,
        eval_config=args.eval_config,
        eval_split=args.eval_split,
        best_metric=args.best_metric,
        eval_steps=None if args.eval_steps is None else _steps(args.eval_steps),
        **overrides,
    )
    print(f"trained model saved to {path}")
    return 0


def run_kto(args: argparse.Namespace) -> int:
    from trl import KTOConfig

    from hfpref.training.kto import train_kto

    overrides = config_overrides(args, KTOConfig, _KTO_FLAGS)  # option mistakes first
    check_sources(args)
    path = train_kto(
        args.dataset,
        args.model,
        args.output_dir,
        config=args.config,
        split=args.split,
        model_revision=args.model_revision,
        **overrides,
    )
    print(f"trained model saved to {path}")
    return 0
