"""Closures as the worker publishes them (SPEC §6), for the ledger's tests and benchmark."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

#: Two hours before a UTC month turns: populations span days and a month boundary.
BASE_TIME = datetime(2026, 1, 30, 22, 0, tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def closure(closure_id: str, *, tenant_id: str = "tenant-a", provider_id: str = "provider-a",
            model: str = "model-a", initial: int = 100, delta: int = 50, round_count: int = 3,
            missing_rounds: int = 0, reason: str = "closed", closed_at: datetime | None = None,
            emitted_at: datetime | None = None, metadata: Any = None) -> dict[str, Any]:
    closed_at = closed_at or BASE_TIME
    created_at = closed_at - timedelta(minutes=5)
    return {
        "closure_id": closure_id,
        "reason": reason,
        "record": {
            "session_id": closure_id,
            "tenant_id": tenant_id,
            "provider_id": provider_id,
            "model": model,
            "created_at": rfc3339(created_at),
            "activated_at": rfc3339(created_at + timedelta(seconds=1)),
            "closed_at": rfc3339(closed_at),
            "ttl_secs": 3600,
            "round_count": round_count,
            "initial_token_count": initial,
            "delta_token_count": delta,
            "metadata": {} if metadata is None else metadata,
        },
        "total_token_count": initial + delta,
        "missing_rounds": missing_rounds,
        "emitted_at": rfc3339(emitted_at or closed_at + timedelta(seconds=2)),
    }


def encode(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


@dataclass
class ClosureSet:
    """A reproducible population of closures over a few tenants, providers,
    models and UTC days, and the figures a ledger must show for it."""

    count: int
    seed: int = 1
    prefix: str = "s"
    closures: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.closures = []
        for index in range(self.count):
            provider = rng.choice(["openai", "anthropic", "local"])
            # Around the turn of a UTC month and day, so day and month groupings are exercised.
            closed_at = BASE_TIME + timedelta(seconds=rng.randrange(0, 3 * 86_400), microseconds=rng.randrange(10**6))
            self.closures.append(closure(
                f"{self.prefix}-{index:07d}",
                tenant_id=f"tenant-{rng.randrange(4)}",
                provider_id=provider,
                model=f"{provider}-m{rng.randrange(2)}",
                initial=rng.randrange(0, 10_000),
                delta=rng.randrange(0, 100_000),
                round_count=(rounds := rng.randrange(0, 40)),
                missing_rounds=rng.randrange(0, rounds + 1) if rng.random() < 0.1 else 0,
                reason=rng.choice(["closed", "closed", "ttl_expired"]),
                closed_at=closed_at,
                metadata={"run": self.prefix, "n": index},
            ))

    def totals_by_tenant(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for item in self.closures:
            tenant = item["record"]["tenant_id"]
            totals[tenant] = totals.get(tenant, 0) + item["total_token_count"]
        return totals
