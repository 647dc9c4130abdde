"""The column contract has one home: ``hfpref.core.columns`` (issue 14, "columns in one place")."""

from __future__ import annotations

import ast
from pathlib import Path

from hfpref.core import columns as C

PACKAGE = Path(__file__).resolve().parents[1] / "hfpref"
COLUMN_NAMES = {value: name for name, value in vars(C).items() if name.isupper() and isinstance(value, str)}
# constants whose value equals a column name but that name a value, not a column
NOT_COLUMNS = {"ROW_ERROR_REASON"}  # hfpref.core.step: the drop_reason of a row a step dropped


def _string_constants(path: Path) -> list[tuple[int, str, str]]:
    """(line, name, value) of each module-level ``NAME = "text"`` assignment."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            value = node.value.value
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.isupper() and isinstance(value, str):
                    found.append((node.lineno, target.id, value))
    return found


def test_no_module_spells_a_shared_column_name_again():
    again = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} = {value!r} (columns.{COLUMN_NAMES[value]})"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "columns.py"
        for line, name, value in _string_constants(path)
        if value in COLUMN_NAMES and name not in NOT_COLUMNS
    ]
    assert not again, "import these from hfpref.core.columns instead:\n" + "\n".join(again)


def test_step_modules_keep_their_old_column_names_importable():
    from hfpref.steps import annotate, contrast, margins

    assert margins.SELECTED_FOR_ANNOTATION == C.SELECTED_FOR_ANNOTATION == "selected_for_annotation"
    assert margins.IMPLICIT_REWARDS == C.IMPLICIT_REWARDS and margins.PAIR_INDICES == C.PAIR_INDICES
    assert contrast.CONTRAST_LEVEL == C.CONTRAST_LEVEL and annotate.RESPONSE_ANNOTATED == C.RESPONSE_ANNOTATED
    assert C.CANDIDATES_CONFIG == "candidates"


def test_pair_columns_are_the_pair_row_schema():
    import datasets

    from hfpref.steps.pair_rows import pairs_features
    from hfpref.steps.selection import PAIR_COLUMNS, PairSelector

    assert PAIR_COLUMNS is C.PAIR_COLUMNS
    features = pairs_features(datasets.Features({"prompt": datasets.Value("string")}), [])
    assert list(features) == ["prompt", *C.PAIR_COLUMNS, C.PAIR_STRATEGY, C.DROP_REASON]
    assert PairSelector().output_columns() == list(features)
