"""Fixtures of the ledger tests: ``ledger_deployment`` is in tests/fixtures/ledger.py."""

from tests.integration.conftest import pytest_runtest_makereport  # noqa: F401  (records rep_call)
