"""The README's settings table lists every setting, and only settings."""

from __future__ import annotations

import re

from app.settings import setting_variables
from tests.support import REPO

README = REPO / "README.md"


def test_the_readme_settings_table_lists_every_setting() -> None:
    section = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `ACCOUNTANT_")]
    documented = {name for row in rows for name in re.findall(r"`(ACCOUNTANT_[A-Z0-9_]+)`", row.split(" | ")[0])}
    assert documented == setting_variables(), (
        f"missing from the README: {sorted(setting_variables() - documented)}; "
        f"not settings: {sorted(documented - setting_variables())}")
