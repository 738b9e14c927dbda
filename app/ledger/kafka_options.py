"""How every Kafka client of the ledger connects: the consumer of `accountant
ledger`, its admin client, and the lag reader of the worker's dashboard."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

__all__ = ["kafka_client_options"]


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """The connection options (bootstrap servers; TLS and SASL once configured)
    that every aiokafka client of the ledger is built with.

    The one place to change when app/kafka_config.py arrives: this becomes
    ``return client_options(settings)``.
    """
    return {"bootstrap_servers": settings.bootstrap_servers}
