"""The rules package stays pure: it imports the standard library, orjson and
itself, nothing else (no Faust, no aiokafka, no other part of the service)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import app.rules

PACKAGE = "app.rules"
ALLOWED_THIRD_PARTY = {"orjson"}


def imported_modules(source: str) -> set[str]:
    """Every absolute module name an import statement in `source` names
    (conditional and function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the package by construction
                names.add(PACKAGE)
            elif node.module is not None:
                names.add(node.module)
    return names


def foreign(module: str) -> bool:
    top = module.split(".")[0]
    if module == PACKAGE or module.startswith(PACKAGE + "."):
        return False
    return top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY


def package_sources() -> list[Path]:
    return sorted(Path(app.rules.__file__).parent.glob("*.py"))


def test_the_package_has_modules_to_check() -> None:
    assert {path.stem for path in package_sources()} >= {"__init__", "apply", "decode", "model", "codec"}


@pytest.mark.parametrize("path", package_sources(), ids=lambda path: path.name)
def test_the_rules_import_only_the_standard_library_and_orjson(path: Path) -> None:
    bad = sorted(module for module in imported_modules(path.read_text()) if foreign(module))
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize("line", [
    "import faust",
    "from aiokafka import AIOKafkaProducer",
    "import aiokafka.errors",
    "from app.settings import Settings",
    "from app import metrics",
    "def f():\n    import faust\n",
    "try:\n    import pydantic\nexcept ImportError:\n    pass\n",
])
def test_the_check_catches_a_foreign_import(line: str) -> None:
    assert any(foreign(module) for module in imported_modules(line))


@pytest.mark.parametrize("line", ["import base64", "from dataclasses import replace", "import orjson",
                                  "from app.rules.model import Session", "from . import model"])
def test_the_check_allows_the_standard_library_orjson_and_the_package(line: str) -> None:
    assert not any(foreign(module) for module in imported_modules(line))
