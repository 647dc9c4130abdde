"""hfpref train kto: TRL's KTOTrainer on the unpaired rows of a pairs release; the policy moves towards chosen."""

from __future__ import annotations

import datasets
import torch
import yaml

from hfpref.cli.main import build_parser, main
from hfpref.training.kto import KTO_DEFAULTS, unpaired_rows
from tests.test_train import PAIRS, summed_logps, train_with_the_cli, write_release


def test_unpaired_rows_are_trls_unpairing_shuffled():
    pairs = datasets.Dataset.from_dict(PAIRS)
    rows = unpaired_rows(pairs, seed=42)
    # every pair gives (prompt, chosen, True) and (prompt, rejected, False), nothing else
    expected = {(p, c, True) for p, c in zip(PAIRS["prompt"], PAIRS["chosen"], strict=True)}
    expected |= {(p, r, False) for p, r in zip(PAIRS["prompt"], PAIRS["rejected"], strict=True)}
    got = list(zip(rows["prompt"], rows["completion"], rows["label"], strict=True))
    assert len(got) == 8 and set(got) == expected
    assert set(rows.column_names) == {"prompt", "completion", "label"}  # metadata is not unpaired
    # TRL lists a batch's chosen rows first; the shuffle mixes the labels so sequential batches hold both
    assert rows["label"] != [True] * 4 + [False] * 4
    assert unpaired_rows(pairs, seed=42)["completion"] == rows["completion"]  # seeded


def test_cli_kto_trains_towards_chosen_and_card_labels_defaults(tiny_models, tmp_path):
    options = ["--max-steps", "8", "--per-device-train-batch-size", "4"]
    out, tokenizer, reference, trained = train_with_the_cli("kto", tiny_models["policy"], tmp_path, *options)

    # log π/π_ref rose for chosen completions and fell for rejected ones, measured without TRL

    def ratio(prompt: str, completion: str) -> float:
        return summed_logps(trained, tokenizer, prompt, completion) - summed_logps(
            reference, tokenizer, prompt, completion
        )

    chosen = [ratio(p, c) for p, c in zip(PAIRS["prompt"], PAIRS["chosen"], strict=True)]
    rejected = [ratio(p, r) for p, r in zip(PAIRS["prompt"], PAIRS["rejected"], strict=True)]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert sum(margins) / 4 > 1.0, margins
    assert all(m > 0 for m in margins), margins

    # flags reached KTOConfig; the rest are hfpref's labelled defaults
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert type(args).__name__ == "KTOConfig"
    assert (args.learning_rate, args.max_steps, args.per_device_train_batch_size) == (1e-3, 8, 4)
    assert (args.beta, args.desirable_weight, args.undesirable_weight) == (0.1, 1.0, 1.0)
    assert args.lr_scheduler_type == "cosine" and args.bf16 is False

    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert "kto" in header["tags"] and "dpo" not in header["tags"]
    info = header["hfpref"]
    assert info["training_data"]["rows"] == 4 and info["unpaired"]["rows"] == 8
    assert info["unpaired"]["helper"] == "trl.data_utils.unpair_preference_dataset"
    hyper = info["hyperparameters"]
    assert hyper["learning_rate"]["source"] == "set by the user"
    assert (
        hyper["beta"]["source"] == KTO_DEFAULTS["beta"].source and "hfpref default" in hyper["beta"]["source"]
    )
    assert hyper["desirable_weight"]["value"] == 1.0


def test_kto_flags_are_ktoconfig_fields(tiny_models, tmp_path, capsys):
    release = write_release(tmp_path / "release")
    common = [
        "--dataset",
        str(release),
        "--model",
        str(tiny_models["policy"]),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    assert main(["train", "kto", *common, "--desireable-weight", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "hfpref train kto: error: unrecognized arguments: --desireable-weight 2; did you mean --desirable-weight? "
        "(see hfpref train kto --help)"
    )
    assert not (tmp_path / "o").exists()  # refused before any model or data loaded
    # desirable_weight, a KTOConfig field that DPOConfig lacks, is a flag of train kto
    args = build_parser().parse_args(["train", "kto", *common, "--desirable-weight", "2"])
    assert args.trainer_fields == {"desirable_weight": 2.0, "output_dir": str(tmp_path / "o")}
