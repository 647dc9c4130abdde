"""``hfpref train dpo|kto``: train a policy with TRL on a curated pairs release.

The options are what to train on (``TrainDataArguments``; DPO adds ``DPOArguments``: a paper's preset and
held-out pairs) and every field of ``trl.DPOConfig`` / ``trl.KTOConfig`` as a flag, with ``--config
FILE.yaml`` as in TRL (``hfpref.cli.train_parser``). A trainer field given neither way keeps hfpref's
default (``hfpref.training.dpo.DCRM_RECIPE``, ``hfpref.training.kto.KTO_DEFAULTS``), else TRL's. TRL is
imported only when ``train`` is the command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hfpref.cli.parsing import add_command, add_group, arguments, option, required
from hfpref.pipeline.preflight import check_output_folder


@dataclass(kw_only=True)
class TrainDataArguments:
    """The pairs to train on and the policy to train (``--output-dir`` is the trainer config's)."""

    dataset: str = required("release folder, Hub repo id, or REPO@REVISION")
    dataset_config: str | None = option("release config: a pair strategy (e.g. best_of_n2) or sweep level")
    split: str = option("split of the release config", default="train")
    model: str = required("policy to train (Hub id or local folder)")
    model_revision: str | None = option("revision of --model (branch, tag or commit)")

    def train_kwargs(self) -> dict[str, Any]:
        """The arguments ``train_dpo`` / ``train_kto`` take besides the trainer config fields."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "config": self.dataset_config,
            "split": self.split,
            "model_revision": self.model_revision,
        }


@dataclass(kw_only=True)
class DPOArguments(TrainDataArguments):
    """A paper's training recipe, and held-out pairs that pick the kept checkpoint."""

    preset: str | None = option(
        "train as a paper trains: dcrm (arXiv DCRM, appendix B), instruction-following (arXiv 2412.15282), "
        "margins (arXiv 2406.17312; silent, DCRM's values); flags given win over the preset",
        metavar="NAME",
    )
    eval_split_ratio: float | None = option(
        "hold out this fraction of the training pairs and keep the checkpoint that is best on them"
    )
    eval_config: str | None = option("held-out pairs from this release config")
    eval_split: str | None = option("held-out pairs from this split (default train of --eval-config)")
    best_metric: Literal["loss", "accuracy"] | None = option(
        "what picks the kept checkpoint: held-out DPO loss (default) or reward accuracy"
    )

    def train_kwargs(self) -> dict[str, Any]:
        names = ("preset", "eval_split_ratio", "eval_config", "eval_split", "best_metric")
        return {**super().train_kwargs(), **{name: getattr(self, name) for name in names}}


def _trainer_parser(arguments_class: type, method: str) -> Callable[..., argparse.ArgumentParser]:
    """A ``LazyParser`` build: the TrlParser of ``method`` ("dpo", "kto"), importing TRL when called."""

    def build(**kwargs: Any) -> argparse.ArgumentParser:
        from hfpref.cli.train_parser import TrainParser

        config_class, defaults = _method(method)
        return TrainParser(arguments_class, config_class, defaults, **kwargs)

    return build


def _method(method: str) -> tuple[type, dict[str, Any]]:
    """(the trainer config class, hfpref's defaults for its fields) of ``method``."""
    if method == "dpo":
        from trl import DPOConfig

        from hfpref.training.dpo import DCRM_RECIPE

        return DPOConfig, dict(DCRM_RECIPE)
    from trl import KTOConfig

    from hfpref.training.kto import KTO_DEFAULTS

    return KTOConfig, {name: setting.value for name, setting in KTO_DEFAULTS.items()}


def add_parser(subparsers: Any) -> None:
    methods = add_group(subparsers, "train", "method", help="train a policy on a pairs release with TRL")
    add_command(
        methods,
        "dpo",
        _trainer_parser(DPOArguments, "dpo"),
        run_dpo,
        help="DPO with trl.DPOTrainer; defaults follow the DCRM paper (beta 0.1, lr 5e-7, cosine, warmup 0.1, "
        "2 epochs); every trl.DPOConfig field is a flag, --config FILE.yaml sets them as in TRL.",
    )
    add_command(
        methods,
        "kto",
        _trainer_parser(TrainDataArguments, "kto"),
        run_kto,
        help="KTO with trl.KTOTrainer on the unpaired rows of a pairs config (trl's unpair_preference_dataset); "
        "defaults: beta 0.1, desirable/undesirable weight 1, lr 5e-7, cosine, warmup 0.1, 2 epochs (ours: "
        "arXiv 2604.08723's summary gives none); every trl.KTOConfig field is a flag.",
    )


def trainer_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The trainer config fields the command line (or ``--config`` file) gave; the global ``--no-progress``
    turns the trainer's progress bars off."""
    given = dict(args.trainer_fields)
    if getattr(args, "no_progress", False):
        given.setdefault("disable_tqdm", True)
    return given


def check_sources(data: TrainDataArguments, output_dir: str) -> None:
    """A local path that does not exist is "no such folder" (not an invalid Hub id), and a Hub id with
    the Hub unreachable fails at once (not after network timeouts); with HF_HUB_OFFLINE the cache serves."""
    from hfpref.models.hub import check_model_path, is_local_model
    from hfpref.pipeline.preflight import check_hub_reachable, hub_offline_allowed
    from hfpref.training.data import parse_dataset_spec

    check_model_path(data.model, "--model")
    dataset, _ = parse_dataset_spec(data.dataset)
    if not Path(dataset).exists():
        check_model_path(dataset, "--dataset")  # the same rule tells a meant-local path from a Hub id
    needs_hub = not is_local_model(data.model) or not Path(dataset).is_dir()
    if needs_hub and not hub_offline_allowed():
        check_hub_reachable("a Hub model or dataset")
    check_output_folder(output_dir, "--output-dir")


def _steps(value: float) -> float | int:
    """``--eval-steps 5`` as the int 5 (a step count), ``0.1`` as a fraction of training."""
    return int(value) if value >= 1 and value == int(value) else value


def run_dpo(args: argparse.Namespace) -> int:
    from hfpref.training.dpo import train_dpo

    data, fields = arguments(args, DPOArguments), trainer_fields(args)
    output_dir = fields.pop("output_dir")
    check_sources(data, output_dir)
    if fields.get("eval_steps") is not None:
        fields["eval_steps"] = _steps(fields["eval_steps"])
    path = train_dpo(output_dir=output_dir, **data.train_kwargs(), **fields)
    print(f"trained model saved to {path}")
    return 0


def run_kto(args: argparse.Namespace) -> int:
    from hfpref.training.kto import train_kto

    data, fields = arguments(args, TrainDataArguments), trainer_fields(args)
    output_dir = fields.pop("output_dir")
    check_sources(data, output_dir)
    path = train_kto(output_dir=output_dir, **data.train_kwargs(), **fields)
    print(f"trained model saved to {path}")
    return 0
