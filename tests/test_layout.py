"""The layout rules of docs/architecture.md §2, checked on the source tree: imports point down, recipes
stay thin, nothing edits the import path, nothing cites a file outside the repository."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# below the model: may not import families, the model, the HF wrappers, training or recipes
FORBIDDEN_BELOW = {
    "kernels": ("seqmodels.layers", "seqmodels.model", "seqmodels.hf", "seqmodels.modules", "seqmodels.train",
                "seqmodels.data", "recipes"),
    "data": ("seqmodels.layers", "seqmodels.model", "seqmodels.hf", "seqmodels.modules", "recipes"),
    "seqmodels/modules": ("seqmodels.model", "seqmodels.hf", "seqmodels.train", "recipes"),
}
MAX_RECIPE_LINES = 200


def python_files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_BELOW))
def test_imports_point_down(folder):
    bad = [f"{path.relative_to(ROOT)} imports {name}"
           for path in python_files(folder) for name in imported_modules(path)
           if name.startswith(FORBIDDEN_BELOW[folder])]
    assert not bad, bad


def test_recipes_are_thin_and_import_no_recipe():
    for path in python_files("recipes"):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_RECIPE_LINES, f"{path.name} has {lines} lines: move the logic into the package"
        assert not [name for name in imported_modules(path) if name.startswith("recipes") or name in
                    {p.stem for p in python_files("recipes")}], path.name


def test_no_import_path_edits():
    path_attribute = ".".join(("sys", "path")) + "."  # spelled in pieces so this file does not match itself
    folders = ("seqmodels", "kernels", "data", "recipes", "scripts", "tests")
    bad = [str(path.relative_to(ROOT)) for folder in folders for path in python_files(folder)
           if path != Path(__file__).resolve() and path_attribute in path.read_text()]
    assert not bad, bad


def test_no_reference_outside_the_repository():
    suffixes = {".py", ".md", ".yaml", ".sh"}
    design = "".join(("DES", "IGN"))  # spelled in pieces so this file does not match itself
    needles = (design + ".md", design + " §", "../" + "".join(("sha", "red/")))
    bad = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*") if path.suffix in suffixes
           and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
           and any(needle in path.read_text(errors="ignore") for needle in needles)]
    assert not bad, bad
