"""Service settings, read from `ACCOUNTANT_*` environment variables.

Validated once at start-up: a bad value stops the service with a message that
names the variable, instead of surfacing later as a confusing Faust error.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ACCOUNTANT_"
#: Bind addresses that mean "every interface": no peer can use them as a URL.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


class SettingsError(SystemExit):
    """Start-up refused because of a bad setting; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: Kafka bootstrap servers, comma separated. Empty: `accountant dev` starts a local broker.
    broker: str = ""
    #: Faust application id: consumer group, changelog and internal topic names.
    app_id: str = Field("usage-accountant", min_length=1, max_length=100)
    #: Prefix for the public topic names (session-events, session-closures, ...).
    topic_prefix: str = ""
    #: Partitions of the input, command and changelog topics (all must match).
    partitions: int = Field(8, ge=1, le=10_000)
    #: Replication factor of the topics the service creates.
    replication: int = Field(1, ge=1, le=16)
    #: Table store: memory (default) or rocksdb.
    store: Literal["memory", "rocksdb"] = "memory"
    #: Directory for worker state (RocksDB files, Faust data).
    data_dir: str = "./data"
    #: Address the web server binds to.
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    #: URL other workers (and the printed dashboard link) use to reach this
    #: one; empty: http://WEB_HOST:WEB_PORT. Required when binding 0.0.0.0 or ::.
    web_advertised_url: str = Field("", validate_default=True)
    #: at_least_once (default). exactly_once is not offered: see docs/guarantees.md.
    processing_guarantee: Literal["at_least_once"] = "at_least_once"
    #: Seconds after expires_at before an idle session is closed.
    grace_secs: float = Field(5.0, ge=0, le=86_400)
    #: Seconds a closed record stays in the table for inspection.
    retention_secs: float = Field(3600.0, ge=0, le=30 * 86_400)
    #: Events this far ahead of the worker's clock are rejected clock_skew.
    max_clock_skew_secs: float = Field(300.0, ge=0, le=86_400)
    #: Largest accepted `metadata`, encoded, in bytes.
    metadata_max_bytes: int = Field(16 * 1024, ge=0, le=1024 * 1024)
    #: How often the expiry timer looks at its deadline heaps.
    timer_interval_secs: float = Field(0.5, gt=0, le=60)
    #: Bearer token for the HTTP API; empty: no authentication.
    api_token: str = ""
    #: Faust commit interval; each is the replay window after a crash.
    commit_interval_secs: float = Field(1.0, gt=0, le=60)
    #: Kafka consumer session timeout; a killed worker is evicted after it.
    session_timeout_secs: float = Field(10.0, ge=1, le=300)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: PostgreSQL connection string of the ledger (postgresql://user@host:port/db or key=value pairs).
    #: Empty: no ledger (`accountant dev` then starts a local PostgreSQL).
    ledger_dsn: str = ""
    #: Consumer group of the `accountant ledger` processes; also the key of their offsets in the database.
    ledger_group: str = Field("usage-accountant-ledger", min_length=1, max_length=200)
    #: Most closures one ledger transaction writes.
    ledger_batch_max_records: int = Field(5000, ge=1, le=100_000)
    #: Address and port of the ledger's /metrics and /healthz.
    ledger_web_host: str = "127.0.0.1"
    ledger_web_port: int = Field(6067, ge=1, le=65535)

    @field_validator("broker")
    @classmethod
    def _broker_list(cls, value: str) -> str:
        for server in filter(None, (part.strip() for part in value.split(","))):
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("ledger_dsn")
    @classmethod
    def _conninfo(cls, value: str) -> str:
        if value:
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(value)
            except Exception:  # psycopg's message may quote the string, password and all
                raise ValueError("is not a PostgreSQL connection string (postgresql://user@host:5432/db "
                                 "or 'host=... dbname=...')") from None
        return value

    @field_validator("topic_prefix", "app_id", "ledger_group")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may only contain letters, digits, '.', '_' and '-'")
        return value

    @field_validator("web_host", "ledger_web_host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not value or " " in value:
                raise ValueError("must be an IP address or host name") from None
        return value

    @field_validator("web_advertised_url")
    @classmethod
    def _advertised(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            host = info.data.get("web_host")
            if host is not None and host in WILDCARD_HOSTS:
                raise ValueError(f"must be set when ACCOUNTANT_WEB_HOST is {host}: other workers cannot reach "
                                 "a wildcard address (e.g. http://10.0.0.5:6066)")
            return value
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query:
            raise ValueError("must be an http(s) URL with a host and no path, e.g. http://10.0.0.5:6066")
        try:
            _ = url.port  # reading it checks it
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value.rstrip("/")

    @property
    def advertised_url(self) -> str:
        return self.web_advertised_url or f"http://{self.web_host}:{self.web_port}"

    # Topic names (SPEC §2).
    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}session-events"

    @property
    def closures_topic(self) -> str:
        return f"{self.topic_prefix}session-closures"

    @property
    def rejected_topic(self) -> str:
        return f"{self.topic_prefix}session-events-rejected"

    @property
    def table_name(self) -> str:
        return "sessions"

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-{self.table_name}-changelog"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [part.strip() for part in self.broker.split(",") if part.strip()]


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, or stop with a message naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = ENV_PREFIX + "_".join(str(part) for part in problem["loc"]).upper() if problem["loc"] else ""
            lines.append(f"  {name or 'settings'}: {problem['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
