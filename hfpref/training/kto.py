"""``hfpref train kto``: KTO (Ethayarajh et al. 2024) with ``trl.KTOTrainer`` on a pairs config of a release.

"Decomposing the Delta" (arXiv 2604.08723) trains on its delta-controlled datasets with DPO and with KTO.
KTO learns from *unpaired* rows — a prompt, one completion and a label (desirable or not) — so each pair
of a release config becomes two rows with TRL's own helper, ``trl.data_utils.unpair_preference_dataset``:
(prompt, chosen, label True) and (prompt, rejected, label False). Only ``prompt``, ``chosen`` and
``rejected`` are unpaired (our metadata columns would be duplicated into rows the trainer drops anyway).

The unpaired rows are shuffled once with the training seed: TRL's helper lists a batch's chosen rows
before its rejected ones, and ``KTOConfig`` samples sequentially (its KL estimate pairs each row with its
neighbour's completion), so without the shuffle a batch would hold one label only.

Defaults (``KTO_DEFAULTS``), each with its source in the model card: the summary of arXiv 2604.08723 we
work from names DPO and KTO but no hyperparameter, so every value is ours and labelled as such — β = 0.1
(TRL's and the KTO paper's default), desirable and undesirable weights 1.0 (one desirable and one
undesirable row per pair, so the KTO paper's λ_D·n_D / λ_U·n_U ratio is 1, inside its recommended
[1, 4/3]), and for the schedule the values ``hfpref train dpo`` uses (lr 5e-7, 2 epochs, cosine, warmup
0.1), so DPO and KTO runs on the same release differ in the loss only. Every ``trl.KTOConfig`` field can
be overridden by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfpref.models.hub import resolve_revision
from hfpref.training.data import load_pairs
from hfpref.training.hyperparameters import USER, Setting, card_hyperparameters
from hfpref.training.trainer import train_and_save, write_model_card

_SILENT = "arXiv 2604.08723 (seed 001) gives no KTO hyperparameters in the summary we have"
KTO_DEFAULTS: dict[str, Setting] = {
    "beta": Setting(0.1, f"{_SILENT}; hfpref default: 0.1, TRL's and the KTO paper's default"),
    "desirable_weight": Setting(
        1.0,
        f"{_SILENT}; hfpref default: one desirable and one undesirable row per pair, so λ_D n_D / λ_U n_U = 1",
    ),
    "undesirable_weight": Setting(1.0, f"{_SILENT}; hfpref default: balanced labels (see desirable_weight)"),
    "learning_rate": Setting(5e-7, f"{_SILENT}; hfpref default: the DPO default (DCRM paper, appendix B)"),
    "num_train_epochs": Setting(2, f"{_SILENT}; hfpref default: the DPO default (DCRM paper, appendix B)"),
    "lr_scheduler_type": Setting("cosine", f"{_SILENT}; hfpref default: the DPO default (DCRM paper)"),
    "warmup_steps": Setting(
        0.1, f"{_SILENT}; hfpref default: warmup ratio 0.1, the DPO default (DCRM paper)"
    ),
}
MODEL_CARD_TAGS = ["hfpref", "kto", "trl"]


def unpaired_rows(pairs: Any, seed: int = 42) -> Any:
    """KTO rows (``prompt``, ``completion``, ``label``) from pairs rows, by ``trl.data_utils.unpair_preference_dataset``,
    shuffled with ``seed`` (see the module notes)."""
    from trl.data_utils import unpair_preference_dataset

    unpaired = unpair_preference_dataset(pairs.select_columns(["prompt", "chosen", "rejected"]))
    return unpaired.shuffle(seed=seed).flatten_indices()


def train_kto(
    dataset: str,
    model: str,
    output_dir: str | Path,
    *,
    config: str | None = None,
    split: str = "train",
    model_revision: str | None = None,
    **overrides: Any,
) -> Path:
    """Train ``model`` with KTO on the unpaired rows of a pairs release config; return the output folder.

    ``dataset``: a release folder or Hub repo id (``repo@revision``); ``config``: which pairs config (e.g. a
    sweep level); ``overrides``: ``trl.KTOConfig`` fields, which win over ``KTO_DEFAULTS``.
    """
    from trl import KTOConfig, KTOTrainer

    output_dir = Path(output_dir)
    pairs, source = load_pairs(dataset, config=config, split=split)
    base_revision = resolve_revision(model, model_revision)  # fails before training, not after
    settings = {**KTO_DEFAULTS, **{field: Setting(value, USER) for field, value in overrides.items()}}
    rows = unpaired_rows(pairs, seed=overrides.get("seed", 42))
    args = KTOConfig(output_dir=str(output_dir), **{k: s.value for k, s in settings.items()})
    trainer = train_and_save(KTOTrainer, args, model, model_revision, rows)
    hyperparameters = card_hyperparameters(args, settings)
    for name in ("desirable_weight", "undesirable_weight"):
        hyperparameters.setdefault(name, {"value": getattr(args, name), "source": settings[name].source})
    training = {
        "method": "kto",
        "preset": None,
        "unpaired": {
            "helper": "trl.data_utils.unpair_preference_dataset",
            "pairs": pairs.num_rows,
            "rows": rows.num_rows,
            "shuffle_seed": overrides.get("seed", 42),
        },
        "hyperparameters": hyperparameters,
    }
    write_model_card(
        trainer, output_dir, source, model, base_revision, training=training, tags=MODEL_CARD_TAGS
    )
    return output_dir


__all__ = ["KTO_DEFAULTS", "train_kto", "unpaired_rows"]
