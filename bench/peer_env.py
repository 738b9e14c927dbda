"""The peer's own virtualenv.

Quix Streams 3.28 pins older pydantic, pydantic-settings and confluent-kafka
than the service's locked test environment, so the peer runs from a venv of
its own, `.venv-peer`, made on first use with the project's `bench` extra
(`pip install -e '.[bench]'`). The service never depends on it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support import REPO

PEER_VENV = REPO / ".venv-peer"


def peer_python(log: Callable[[str], None]) -> Path:
    """The peer venv's interpreter, made (once, about a minute) if missing."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        log(f"making the peer's venv in {PEER_VENV} (once): pip install -e '.[bench]'")
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e",
                        f"{REPO}[bench]"], check=True, cwd=REPO)
    return python
