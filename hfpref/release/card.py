"""The dataset card (README.md) of a release, rendered from its manifest alone.

``render_card`` fills ``cards/dataset_card.md.j2``; ``card_header`` is the card's YAML metadata, whose
``configs`` tell ``load_dataset`` (and ``load_release``) which files each config has. The human-labels
release (``hfpref.human.labelstudio``) renders its own template with the same environment and configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from hfpref.core.columns import CANDIDATES_CONFIG
from hfpref.release.folder import CARD_FILE, MANIFEST_FILE, replace_text
from hfpref.release.manifest import strategy_groups
from hfpref.release.summary import METRICS

CARD_TEMPLATE = "dataset_card.md.j2"


def _size_category(rows: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return label
    return "n>1M"


def card_configs(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The card header's ``configs``: each config's train split files; the default config marked."""
    configs = []
    for name, config in manifest["configs"].items():
        entry: dict[str, Any] = {
            "config_name": name,
            "data_files": [{"split": "train", "path": config["data_files"]}],
        }
        if name == manifest["default_config"]:
            entry["default"] = True
        configs.append(entry)
    return configs


def card_header(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata: license, tags and the configs that ``load_dataset`` reads."""
    largest = max((c["rows"] for c in manifest["configs"].values()), default=0)
    return {
        "license": manifest["license"],
        "pretty_name": manifest["name"],
        "tags": ["dpo", "preference", "hfpref", "dcrm"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(largest)],
        "configs": card_configs(manifest),
    }


def _fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (DCRM values are small, distances large)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_template(template: str, header: Mapping[str, Any], **context: Any) -> str:
    """A card from the template ``cards/<template>``: ``header`` becomes its YAML metadata (``header`` in
    the template), ``context`` the other variables. Undefined variables are errors, not blanks."""
    import jinja2
    import yaml

    text = (resources.files("hfpref.cards") / template).read_text(encoding="utf-8")
    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    env.filters["fmt"] = _fmt
    # embedded markdown (provenance notes) must not open new top-level sections of the card
    env.filters["demote_headings"] = lambda text: re.sub(r"(?m)^(#+) ", r"###\1 ", text)
    header_text = yaml.safe_dump(dict(header), sort_keys=False, allow_unicode=True).strip()
    return env.from_string(text).render(header=header_text, **context)


def render_card(manifest: Mapping[str, Any]) -> str:
    """The dataset card (README.md) for a manifest, from ``cards/dataset_card.md.j2``."""
    pairs_configs = {k: v for k, v in manifest["configs"].items() if v["kind"] == "pairs"}
    return render_template(
        CARD_TEMPLATE,
        card_header(manifest),
        m=manifest,
        pairs_configs=pairs_configs,
        made={name: c["made_by"] for name, c in pairs_configs.items() if "made_by" in c},
        candidates=manifest["configs"][CANDIDATES_CONFIG],
        metrics=METRICS,
        groups=strategy_groups(manifest["configs"]),
        manifest_file=MANIFEST_FILE,
        tag=f"v{manifest['version']}",
    )


def write_manifest_and_card(folder: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest, then the card rendered from it; each file is replaced whole (temporary file,
    then rename), so a reader or a kill never meets half a manifest."""
    folder = Path(folder)
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    replace_text(folder / MANIFEST_FILE, text)
    replace_text(folder / CARD_FILE, render_card(manifest))
