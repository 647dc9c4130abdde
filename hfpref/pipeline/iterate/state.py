"""``iterate_state.json``: the recipe that owns an output folder and what each round has written there.

A round is finished when the state says so and both its release and checkpoint exist; a rerun skips
finished rounds, reuses a round's release when only its training is missing, and recomputes the rest.
A rerun with a different recipe is refused.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hfpref.pipeline.iterate.errors import IterateError
from hfpref.pipeline.iterate.spec import IterateRecipe

STATE_FILE = "iterate_state.json"
STATE_FORMAT = "hfpref-iterate/1"


def _comparable(recipe_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe without the fields that do not change what a round computes."""
    out = copy.deepcopy(dict(recipe_dict))
    out.get("output", {}).pop("folder", None)
    out.pop("description", None)
    return out


class LoopState:
    """``iterate_state.json``: the recipe that owns the folder and what each round has written."""

    def __init__(self, folder: Path, recipe: IterateRecipe) -> None:
        self.folder = folder
        self.path = folder / STATE_FILE
        self.recipe = recipe
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
            if _comparable(self.data.get("recipe", {})) != _comparable(recipe.to_dict()):
                raise IterateError(
                    f"{folder} holds rounds of a different recipe ({STATE_FILE}); use another output "
                    "folder, or delete this one to start over"
                )
        else:
            self.data = {"format": STATE_FORMAT, "recipe": recipe.to_dict(), "rounds": {}}

    def round(self, round_number: int) -> dict[str, Any]:
        return self.data["rounds"].setdefault(str(round_number), {"round": round_number})

    def release_ready(self, round_number: int) -> bool:
        entry = self.data["rounds"].get(str(round_number), {})
        return (
            bool(entry.get("release")) and (self.folder / entry["release"] / "hfpref_manifest.json").exists()
        )

    def finished(self, round_number: int) -> bool:
        entry = self.data["rounds"].get(str(round_number), {})
        return (
            entry.get("status") == "finished"
            and self.release_ready(round_number)
            and (self.folder / entry.get("checkpoint", "") / "config.json").exists()
        )

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: an interruption leaves the old state or the new, never half
