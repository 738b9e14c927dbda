"""`accountant ledger` refuses to start on a bad or missing setting, naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.settings import SettingsError, load_settings
from tests.support import REPO

#: Addresses that are never contacted: start-up stops before.
UNUSED_BROKER = "127.0.0.1:1"
UNUSED_DSN = "postgresql://nobody@127.0.0.1:1/ledger"


@pytest.mark.parametrize(("env", "says"), [
    ({"ACCOUNTANT_LEDGER_DSN": UNUSED_DSN}, "ACCOUNTANT_BROKER is not set"),
    ({"ACCOUNTANT_BROKER": UNUSED_BROKER}, "ACCOUNTANT_LEDGER_DSN is not set"),
    ({"ACCOUNTANT_BROKER": UNUSED_BROKER, "ACCOUNTANT_LEDGER_DSN": "host=db port"},
     "ACCOUNTANT_LEDGER_DSN: Value error, is not a PostgreSQL connection string"),
    ({"ACCOUNTANT_BROKER": UNUSED_BROKER, "ACCOUNTANT_LEDGER_DSN": UNUSED_DSN, "ACCOUNTANT_LEDGER_GROUP": "a b"},
     "ACCOUNTANT_LEDGER_GROUP: Value error, may only contain"),
    ({"ACCOUNTANT_BROKER": UNUSED_BROKER, "ACCOUNTANT_LEDGER_DSN": UNUSED_DSN,
      "ACCOUNTANT_LEDGER_BATCH_MAX_RECORDS": "0"}, "ACCOUNTANT_LEDGER_BATCH_MAX_RECORDS: "),
    ({"ACCOUNTANT_BROKER": UNUSED_BROKER, "ACCOUNTANT_LEDGER_DSN": UNUSED_DSN,
      "ACCOUNTANT_LEDGER_WEB_PORT": "http"}, "ACCOUNTANT_LEDGER_WEB_PORT: "),
])
def test_the_ledger_refuses_to_start_and_names_the_setting(env: dict[str, str], says: str) -> None:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")}
    result = subprocess.run([sys.executable, "-m", "app.cli", "ledger"], cwd=REPO, env={**clean, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_dsn_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(ledger_dsn="postgresql://user:s3cret@host:5432/db?sslmode")
    assert "s3cret" not in str(raised.value)
