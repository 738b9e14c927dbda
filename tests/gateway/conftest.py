"""Fixtures of the gateway-side tests (schemas, publisher, HTTP ingest)."""

from tests.faults.conftest import private_kafka  # noqa: F401  (re-exported: a broker a test may stop)
