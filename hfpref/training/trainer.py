"""What DPO and KTO training share: running a TRL trainer on the policy (at its revision) and saving it, and
the model card that names the exact training data and, per hyperparameter, its value and source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hfpref.training.data import DatasetSource


def train_and_save(
    trainer_class: type, args: Any, model: str, model_revision: str | None, rows: Any, eval_rows: Any = None
) -> Any:
    """Train ``model`` (a Hub id or folder, at ``model_revision``) with ``trainer_class`` (``trl.DPOTrainer``,
    ``trl.KTOTrainer``) and its config ``args`` on ``rows``; save it to ``args.output_dir``; return the trainer."""
    from transformers import AutoTokenizer

    if model_revision is not None:  # the trainer loads the policy from its name: the revision goes with it
        args.model_init_kwargs = {**(args.model_init_kwargs or {}), "revision": model_revision}
    tokenizer = AutoTokenizer.from_pretrained(model, revision=model_revision)
    trainer = trainer_class(
        model=model, args=args, train_dataset=rows, eval_dataset=eval_rows, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


def write_model_card(
    trainer: Any,
    output_dir: Path,
    source: DatasetSource,
    base_model: str,
    base_revision: str,
    training: Mapping[str, Any] | None = None,
    *,
    tags: list[str],
) -> Path:
    """TRL's model card, plus the exact training data (dataset, config, revision or content hash) and,
    with ``training``, the preset, each hyperparameter with its source and the kept checkpoint."""
    from huggingface_hub import ModelCard

    # TRL links `dataset_name` as a Hub dataset, which a local folder is not
    trainer.create_model_card(
        model_name=output_dir.name,
        dataset_name=None if source.is_local else source.dataset,
        tags=tags,
    )
    path = output_dir / "README.md"
    card = ModelCard.load(path)
    card.data.hfpref = {
        "training_data": {k: v for k, v in asdict(source).items() if v is not None},
        "base_model": base_model,
        "base_model_revision": base_revision,
        **(training or {}),
    }
    text = (
        "\n\n## Training data (hfpref)\n\n"
        f"- Dataset: {source.card_line()}\n"
        f"- Base model: `{base_model}`, revision `{base_revision}`\n"
    )
    if training:
        if training.get("method") == "kto":
            unpaired = training["unpaired"]
            text += (
                "\n## Training recipe (hfpref)\n\n- Method: KTO (`trl.KTOTrainer`) on unpaired rows made by "
                f"`{unpaired['helper']}`: {unpaired['pairs']} pairs -> {unpaired['rows']} rows (chosen desirable, "
                f"rejected undesirable), shuffled with seed {unpaired['shuffle_seed']}\n"
            )
        else:
            text += f"\n## Training recipe (hfpref)\n\n- Preset: `{training.get('preset') or 'none (DCRM defaults)'}`\n"
        best = training.get("best_checkpoint")
        if best:
            text += (
                f"- Kept checkpoint: `{best['checkpoint']}` (step {best['step']}), the best "
                f"`{best['metric']}` = {best['value']} on held-out pairs ({training['held_out']})\n"
            )
        text += "\n| hyperparameter | value | source |\n|---|---|---|\n"
        for name, entry in training["hyperparameters"].items():
            text += f"| `{name}` | `{entry['value']}` | {entry['source']} |\n"
    card.text = card.text.rstrip() + text
    card.save(path)
    return path
