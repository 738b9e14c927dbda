"""The dashboard's files, shipped in the package (`app/web/static/`): no internet needed."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

__all__ = ["STATIC_DIR", "static_file"]

STATIC_DIR: Traversable = resources.files(__package__).joinpath("static")


def static_file(name: str) -> bytes:
    return STATIC_DIR.joinpath(name).read_bytes()
