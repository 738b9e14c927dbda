"""Count the uses of Faust's, mode's and aiokafka's private parts outside
app/faust_compat.py, which is the one module allowed them:

    .venv/bin/python -m tests.support.faust_privates

prints each use and the count (exit 1 when there is any). A use is:
- `x._name` where `x` is not `self` or `cls`;
- in a class that inherits from one of those libraries, a method `_name`
  that overrides theirs, or `self._name` where `_name` is theirs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support import REPO

LIBRARIES = ("faust", "mode", "aiokafka")
#: Underscored names a library documents as what a subclass implements:
#: "A codec subclass requires two methods to be implemented: ``_loads()``
#: and ``_dumps()``" (faust/serializers/codecs.py).
DOCUMENTED_HOOKS = frozenset({"_loads", "_dumps"})
PACKAGES = ("app", "agents", "tables")
ALLOWED = Path("app/faust_compat.py")


def _library_bases(cls: type) -> list[type]:
    return [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in LIBRARIES]


def _library_privates(bases: list[type]) -> set[str]:
    """Private names the library classes define or assign on `self`."""
    names: set[str] = set()
    for base in bases:
        names.update(name for name in vars(base) if name.startswith("_") and not name.startswith("__"))
        try:
            tree = ast.parse(inspect.getsource(base).lstrip())
        except (OSError, TypeError, SyntaxError):
            continue
        names.update(node.attr for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id == "self" and node.attr.startswith("_") and not node.attr.startswith("__"))
    return names


def uses() -> Iterator[str]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative == ALLOWED:
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os"))):
                    yield f"{relative}:{node.lineno}: .{node.attr}"
            module = importlib.import_module(".".join(relative.with_suffix("").parts))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                cls = getattr(module, node.name, None)
                bases = _library_bases(cls) if isinstance(cls, type) else []
                if not bases:
                    continue
                theirs = _library_privates(bases) - DOCUMENTED_HOOKS
                for inner in ast.walk(node):
                    if isinstance(inner, ast.FunctionDef) and inner.name in theirs:
                        yield f"{relative}:{inner.lineno}: {node.name}.{inner.name} overrides a private method"
                    elif (isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name)
                          and inner.value.id == "self" and inner.attr in theirs):
                        yield f"{relative}:{inner.lineno}: self.{inner.attr} is {bases[0].__name__}'s"


def main() -> int:
    found = list(uses())
    for use in found:
        print(use)
    print(f"{len(found)} uses of private Faust, mode or aiokafka parts outside {ALLOWED}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
