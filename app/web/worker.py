"""What the HTTP views need of the worker they run in.

The views read the worker through this interface only, so the web package
does not import the module that builds the Faust app (which imports the
views to register them): the service passes itself, and any object of this
shape will do (the in-process web tests fill a plain dict instead of a table).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any, Protocol

import aiohttp

from app.metrics import AccountingMetrics
from app.rules import Session
from app.rules.usage import Budget, TenantUsage
from app.settings import Settings

__all__ = ["Worker"]


class Worker(Protocol):
    """One worker of the group, as its web views see it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> AccountingMetrics: ...

    def ready(self) -> bool:
        """The table is recovered and no rebalance runs: the worker may answer for its partitions."""
        ...

    def active_partitions(self) -> Collection[int]:
        """The input partitions this worker is active for now."""
        ...

    def stored_session(self, session_id: str) -> Session | None:
        """The session stored under `session_id`, of whichever partition (the
        store may hold standby and left-over keys: the views check the partition)."""
        ...

    def stored_items_after(self, partitions: Collection[int], after: bytes | None) -> Iterator[tuple[str, Any]]:
        """The stored states (sessions and tombstones) of these partitions
        whose id's UTF-8 sorts after `after`, in that order, read lazily."""
        ...

    def live_sessions(self) -> int:
        """Sessions not yet closed on this worker's partitions."""
        ...

    def stalled_seconds(self) -> float:
        """Seconds since the agent last made progress while input waits for
        it (or since a write failed); 0 when nothing waits."""
        ...

    def own_url(self) -> str:
        """The web address this worker advertises to the group."""
        ...

    def member_urls(self) -> Collection[str]:
        """The web addresses every member of the group advertises, this one's included."""
        ...

    def http_client(self) -> aiohttp.ClientSession:
        """The client to ask the other workers with."""
        ...

    def tenant_partition(self, tenant_id: str) -> int:
        """The partition of the tenant table that holds a tenant."""
        ...

    def tenant_partitions(self) -> Collection[int]:
        """The tenant table partitions this worker is active for now."""
        ...

    def tenant_usage(self, tenant_id: str) -> TenantUsage | None:
        """The tenant's state, if this worker stores it."""
        ...

    def tenants_in(self, partitions: Collection[int]) -> Iterator[TenantUsage]:
        """Every stored tenant of these partitions of the tenant table."""
        ...

    def budget(self, tenant_id: str) -> Budget | None:
        """The tenant's budget, as this worker read it from the budgets topic."""
        ...

    def budget_written(self, tenant_id: str, budget: Budget | None) -> None:
        """The broker acknowledged this budget (None: its deletion) in the
        budgets topic: serve it now, before this worker reads it back."""
        ...
