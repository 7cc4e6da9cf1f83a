"""Imports run only downward through the layers docs/architecture.md draws: models and data
never import the engine, the engine never imports the config, command-line or report
modules, and the command-line glue never imports the reports built on it."""

import ast
from pathlib import Path

import emanet

PACKAGE = Path(emanet.__file__).parent

# Higher numbers sit above lower ones; a module may import its own layer and the ones below.
LAYERS = {
    "emanet.io": 0, "emanet.errors": 0, "emanet.plots": 0, "emanet.renamed_keys": 0,
    "emanet.models": 1, "emanet.data": 1,
    "emanet.engine": 2,
    "emanet.config_schema": 3, "emanet.config_checks": 3, "emanet.config_keys": 3,
    "emanet.cli": 4,
}
REPORTS = 5  # tables, reproduce, benchmarks, importers...: they compose configs through the cli
ENTRY_POINTS = 6  # emanet.entry_points, emanet.prepare_dataset


def layer(module: str) -> int:
    for prefix, number in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return number
    return ENTRY_POINTS if module in ("emanet.entry_points", "emanet.prepare_dataset") else REPORTS


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "emanet" or name.startswith("emanet.")}


def test_every_import_of_the_package_runs_downward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        upward += [f"{module} -> {name}" for name in imports(path) if layer(name) > layer(module)]
    assert upward == []


def test_the_layer_table_names_modules_that_exist():
    for prefix in LAYERS:
        relative = Path(*prefix.split(".")[1:])
        assert (PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(".py").is_file(), prefix
