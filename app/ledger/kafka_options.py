"""How every Kafka client of the ledger connects: the consumer of `accountant
ledger`, its admin client, and the lag reader of the worker's dashboard."""

from __future__ import annotations

from typing import Any

from app.kafka_config import client_options
from app.settings import Settings

__all__ = ["kafka_client_options"]


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """The connection options (bootstrap servers, TLS and SASL) that every
    aiokafka client of the ledger is built with: the service's own
    (app/kafka_config.py), so the ledger logs in wherever the workers do."""
    return client_options(settings)
