"""``hfpref train dpo``: train a policy with TRL's DPOTrainer on a curated pairs release."""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    # None means "not given": the DCRM recipe (hfpref.train.DCRM_RECIPE) or TRL's default applies
    dpo.add_argument("--beta", type=float, default=None, help="DPO beta (default 0.1)")
    dpo.add_argument("--learning-rate", type=float, default=None, help="default 5e-7")
    dpo.add_argument("--epochs", type=float, default=None, help="default 2")
    dpo.add_argument("--lr-scheduler", default=None, help="default cosine")
    dpo.add_argument("--warmup-ratio", type=float, default=None, help="default 0.1")
    dpo.add_argument("--batch-size", type=int, default=None, help="per-device train batch size")
    dpo.add_argument("--gradient-accumulation-steps", type=int, default=None)
    dpo.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides epochs)"
    )
    dpo.add_argument(
        "--max-length", type=int, default=None, help="truncate prompt+response to this many tokens"
    )
    dpo.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="TRL default: on")
    dpo.add_argument("--use-cpu", action="store_true", default=None)
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


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The DPOConfig fields the command line sets (flags given, then ``--set`` pairs)."""
    overrides = {
        _FIELD_OF_FLAG.get(flag, flag): getattr(args, flag)
        for flag in _CONFIG_FLAGS
        if getattr(args, flag) is not None
    }
    for item in args.set:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field] = raw
    return overrides


def _steps(value: float) -> float | int:
    """``--eval-steps 5`` as the int 5 (a step count), ``0.1`` as a fraction of training."""
    return int(value) if value >= 1 and value == int(value) else value


def run_dpo(args: argparse.Namespace) -> int:
    from hfpref.train import train_dpo

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
        **config_overrides(args),
    )
    print(f"trained model saved to {path}")
    return 0
