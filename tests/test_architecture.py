"""The layout a newcomer relies on (README, Architecture): which package may import which, and sizes.

``core`` is the step protocol, column names and registry; ``models`` loads and runs models; ``steps`` are
the transforms; ``pipeline`` runs recipes on engines; ``release`` writes and pushes; ``cli`` and
``training`` sit on top. Imports (including the lazy ones inside functions) may only point down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hfpref"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_REASON = "# long:"  # a function over the limit says why on the line above its def

# package -> the hfpref packages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "steps": {"core", "models", "metrics"},
    "human": {"core", "steps", "release"},
    "pipeline": {"core", "models", "steps", "human", "release", "training", "metrics"},
    "release": {"core", "steps", "metrics"},
    "training": {"core", "models", "steps", "release", "metrics", "pipeline"},
    "cli": {"core", "models", "steps", "human", "pipeline", "release", "training", "metrics"},
    "metrics": {"core", "steps"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def _hfpref_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hfpref.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hfpref":
                found += [(node.lineno, f"hfpref.{a.name}") for a in node.names]
            elif node.module.startswith("hfpref."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # registry targets and importlib strings: "hfpref.steps.x:Class"
            value = node.value
            if value.startswith("hfpref.") and ":" in value and " " not in value:
                found.append((node.lineno, value.partition(":")[0]))
    return found


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in _modules():
        package = _package_of(path)
        if package not in ALLOWED:
            continue
        for line, module in _hfpref_imports(ast.parse(path.read_text())):
            target = module.split(".")[1]
            if target != package and target not in ALLOWED[package] and target != "cards":
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({package}) imports {module}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_every_package_is_in_a_layer() -> None:
    packages = {
        p.parent.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE
    }
    assert packages <= set(ALLOWED), f"packages without a layer in ALLOWED: {packages - set(ALLOWED)}"


def test_no_module_over_the_line_limit() -> None:
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_long_functions_say_why() -> None:
    long = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - node.lineno + 1
                reason = first >= 2 and lines[first - 2].strip().startswith(LONG_REASON)
                if size > MAX_FUNCTION_LINES and not reason:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size} lines")
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_REASON} <reason>' line above:\n"
        + "\n".join(long)
    )


def test_pyproject_lists_every_package() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("name", ["PairSelector", "Recipe", "write_release", "train_dpo", "IFEvalVerifier"])
def test_public_api_is_lazy_and_unchanged(name: str) -> None:
    import hfpref

    assert name in hfpref.__all__ and getattr(hfpref, name) is not None
