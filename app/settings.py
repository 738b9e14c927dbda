"""Service settings, read from `ACCOUNTANT_*` environment variables.

Validated once at start-up: a bad value stops the service with a message that
names the variable, instead of surfacing later as a confusing Faust error.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.kafka_config import SASL_PROTOCOLS, TLS_PROTOCOLS, TlsFileError, read_secret_file, tls_context

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
    #: at_least_once: outputs, changelog and offsets are written in that order,
    #: and a crash may repeat closures. exactly_once: each input partition's
    #: outputs, changelog and offsets commit in one Kafka transaction
    #: (docs/guarantees.md).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: exactly_once: how long a partition's transaction stays open. Closures
    #: reach read_committed readers (the ledger) when it commits.
    transaction_commit_interval_secs: float = Field(0.1, gt=0, le=60)
    #: exactly_once: the broker aborts a transaction open this long (a worker
    #: that died without a successor); read_committed readers wait until then.
    transaction_timeout_secs: float = Field(60.0, ge=1, le=900)
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
    #: Bearer token workers send each other when they forward a request (and
    #: accept on forwarded requests only); empty: the API token.
    peer_token: SecretStr = SecretStr("")
    #: Requests the web server answers at once; beyond: 503 with Retry-After.
    web_max_concurrent_requests: int = Field(256, ge=1, le=100_000)
    #: POST /events: at most this many events, and bytes, per request (413 beyond).
    ingest_max_events: int = Field(1000, ge=1, le=100_000)
    ingest_max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: POST /events waits this long for the broker's acknowledgements, then answers 503.
    ingest_delivery_timeout_secs: float = Field(10.0, gt=0, le=300)
    #: POST /events answers 503 at once while this many events already wait for the broker.
    ingest_max_pending_events: int = Field(100_000, ge=1, le=10_000_000)
    #: /readyz answers 503 once the ingest producer has not reached the broker for this long.
    ingest_broker_unreachable_secs: float = Field(30.0, gt=0, le=3600)
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
    #: A file holding the ledger's DSN (e.g. a mounted secret), so its password
    #: stays out of the environment listing. Setting both it and the DSN is an error.
    ledger_dsn_file: str = ""
    #: The ledger's database waits (what the DSN says wins): connecting; one
    #: statement; waiting for a lock; a transaction left idle by a stuck client.
    ledger_connect_timeout_secs: int = Field(5, ge=2, le=600)
    ledger_statement_timeout_secs: float = Field(300.0, gt=0, le=86_400)
    ledger_lock_timeout_secs: float = Field(30.0, gt=0, le=86_400)
    ledger_idle_in_transaction_timeout_secs: float = Field(120.0, gt=0, le=86_400)
    #: TCP keepalive: probes start after this many idle seconds, so a half-dead
    #: connection to the database is dropped (then retried) within about twice it.
    ledger_tcp_keepalive_secs: int = Field(30, ge=1, le=7200)
    #: The ledger's /healthz answers 503 once no batch has committed for this
    #: long while closures wait to be written: a stuck ledger gets restarted.
    ledger_stall_timeout_secs: float = Field(120.0, gt=0, le=86_400)
    #: text (default, for people) or json (one object per line, for log collectors).
    log_format: Literal["text", "json"] = "text"
    #: /healthz answers 503 once the agent has made no progress for this long
    #: while input waits (or since a write failed): a stuck worker gets restarted.
    stall_timeout_secs: float = Field(120.0, gt=0, le=86_400)

    # Kafka security (app/kafka_config.py turns these into client options).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: Required with SASL_*; no default, so a cluster's mechanism is never guessed.
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    #: A file holding the password (e.g. a mounted secret), so it stays out of
    #: the environment listing. Setting both it and the password is an error.
    kafka_sasl_password_file: str = ""
    #: CA bundle (PEM) the broker certificates are checked against; empty: the system's.
    kafka_ssl_ca_file: str = ""
    #: Client certificate and key (PEM) for mutual TLS.
    kafka_ssl_cert_file: str = ""
    kafka_ssl_key_file: str = ""
    kafka_ssl_key_password: SecretStr = SecretStr("")
    kafka_ssl_key_password_file: str = ""
    #: How long start-up waits for the brokers before it stops, naming what failed.
    kafka_connect_timeout_secs: float = Field(30.0, gt=0, le=600)

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

    @model_validator(mode="before")
    @classmethod
    def _ledger_dsn_from_file(cls, data: Any) -> Any:
        """ACCOUNTANT_LEDGER_DSN_FILE read into ledger_dsn, so every user of the DSN gets it."""
        if not isinstance(data, dict) or not data.get("ledger_dsn_file"):
            return data
        path = data["ledger_dsn_file"]
        if data.get("ledger_dsn"):
            raise ValueError(f"{ENV_PREFIX}LEDGER_DSN and {ENV_PREFIX}LEDGER_DSN_FILE are both set; set only one")
        problems = _file_problems("ledger_dsn_file", path)
        if problems:
            raise ValueError(f"{ENV_PREFIX}LEDGER_DSN_FILE: {problems[0][1]}")
        dsn = read_secret_file(path).strip()
        if not dsn:
            raise ValueError(f"{ENV_PREFIX}LEDGER_DSN_FILE: {path} is empty")
        return {**data, "ledger_dsn": dsn}

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = kafka_security_problems(self) + ingest_limit_problems(self)
        if problems:
            raise ValueError("\n".join(f"{ENV_PREFIX}{name.upper()}: {message}" for name, message in problems))
        return self

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
    def budgets_topic(self) -> str:
        return f"{self.topic_prefix}tenant-budgets"

    @property
    def alerts_topic(self) -> str:
        return f"{self.topic_prefix}tenant-usage-alerts"

    @property
    def usage_topic(self) -> str:
        """Usage deltas by tenant: the repartition topic of the tenant table."""
        return f"{self.app_id}-tenant-usage-repartition"

    @property
    def tenant_table_name(self) -> str:
        return "tenants"

    @property
    def tenant_changelog_topic(self) -> str:
        return f"{self.app_id}-{self.tenant_table_name}-changelog"

    @property
    def table_name(self) -> str:
        return "sessions"

    @property
    def changelog_topic(self) -> str:
        return f"{self.app_id}-{self.table_name}-changelog"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [part.strip() for part in self.broker.split(",") if part.strip()]


def exposure_warnings(settings: Settings) -> list[str]:
    """What start-up warns of: settings that work, but leave the API open to more than its owner."""
    warnings = []
    if settings.web_host in WILDCARD_HOSTS and not settings.api_token:
        warnings.append(f"ACCOUNTANT_WEB_HOST is {settings.web_host} and ACCOUNTANT_API_TOKEN is not set: every "
                        "interface serves the API, POST /events included, to anyone who reaches it")
    return warnings


def ingest_limit_problems(settings: Settings) -> list[tuple[str, str]]:
    """(field, problem) for ingest limits that contradict each other."""
    if settings.ingest_max_pending_events < settings.ingest_max_events:
        # Every request of more events than the pending cap would be answered
        # 503 "retry" for ever: a permanent refusal disguised as a passing one.
        return [("ingest_max_pending_events",
                 f"({settings.ingest_max_pending_events}) is below ACCOUNTANT_INGEST_MAX_EVENTS "
                 f"({settings.ingest_max_events}): a full request could never be accepted; raise the first "
                 "or lower the second")]
    return []


def kafka_security_problems(settings: Settings) -> list[tuple[str, str]]:
    """(field, problem) for every Kafka security setting that cannot work
    with the others, or whose file is missing or does not parse."""
    problems: list[tuple[str, str]] = []
    protocol = settings.kafka_security_protocol
    sasl_fields = {
        "kafka_sasl_mechanism": settings.kafka_sasl_mechanism,
        "kafka_sasl_username": settings.kafka_sasl_username,
        "kafka_sasl_password": settings.kafka_sasl_password.get_secret_value(),
        "kafka_sasl_password_file": settings.kafka_sasl_password_file,
    }
    tls_fields = {
        "kafka_ssl_ca_file": settings.kafka_ssl_ca_file,
        "kafka_ssl_cert_file": settings.kafka_ssl_cert_file,
        "kafka_ssl_key_file": settings.kafka_ssl_key_file,
        "kafka_ssl_key_password": settings.kafka_ssl_key_password.get_secret_value(),
        "kafka_ssl_key_password_file": settings.kafka_ssl_key_password_file,
    }
    # A setting that would be silently ignored is a mistake the operator should hear about.
    if protocol not in SASL_PROTOCOLS:
        problems += [(name, f"is only used with ACCOUNTANT_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL, "
                            f"not {protocol}") for name, value in sasl_fields.items() if value]
    if protocol not in TLS_PROTOCOLS:
        problems += [(name, f"is only used with ACCOUNTANT_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, not {protocol}")
                     for name, value in tls_fields.items() if value]
    if problems:
        return problems

    if protocol in SASL_PROTOCOLS:
        for name in ("kafka_sasl_mechanism", "kafka_sasl_username"):
            if not sasl_fields[name]:
                problems.append((name, f"must be set with ACCOUNTANT_KAFKA_SECURITY_PROTOCOL={protocol}"))
        problems += _secret_problems("kafka_sasl_password", settings.kafka_sasl_password,
                                     settings.kafka_sasl_password_file, required=True)
    if protocol in TLS_PROTOCOLS:
        problems += _secret_problems("kafka_ssl_key_password", settings.kafka_ssl_key_password,
                                     settings.kafka_ssl_key_password_file, required=False)
        cert, key = settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file
        if bool(cert) != bool(key):
            missing = "kafka_ssl_key_file" if cert else "kafka_ssl_cert_file"
            problems.append((missing, "must be set too: mutual TLS needs both the certificate and its key"))
        key_password = (tls_fields["kafka_ssl_key_password"] or tls_fields["kafka_ssl_key_password_file"])
        if key_password and not key:
            problems.append(("kafka_ssl_key_password", "is set but ACCOUNTANT_KAFKA_SSL_KEY_FILE is not"))
        for name in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file"):
            problems += _file_problems(name, tls_fields[name])
        if not problems:
            try:
                tls_context(settings)
            except TlsFileError as error:
                problems.append((error.field, str(error)))
    return problems


def _secret_problems(name: str, value: SecretStr, file: str, *, required: bool) -> list[tuple[str, str]]:
    """A secret comes from its variable or from its _FILE variable, never both:
    a silent precedence would hide a stale copy of the secret."""
    if value.get_secret_value() and file:
        return [(name, f"and ACCOUNTANT_{name.upper()}_FILE are both set; set only one")]
    if file:
        problems = _file_problems(f"{name}_file", file)
        if not problems and not read_secret_file(file):
            problems.append((f"{name}_file", f"{file} is empty"))
        return problems
    if required and not value.get_secret_value():
        return [(name, f"(or ACCOUNTANT_{name.upper()}_FILE) must be set")]
    return []


def _file_problems(name: str, path: str) -> list[tuple[str, str]]:
    if not path:
        return []
    file = Path(path)
    if not file.is_file():
        return [(name, f"{path} does not exist or is not a file")]
    if not os.access(file, os.R_OK):
        return [(name, f"{path} is not readable by this user")]
    return []


# --------------------------------------------------------------------------
# Unknown variables

#: ACCOUNTANT_* variables that are not service settings, and why they exist.
#: Any other unknown ACCOUNTANT_* variable stops start-up: it is almost always
#: a misspelt setting that would otherwise be silently ignored.
NOT_SETTINGS: Mapping[str, str] = {
    "ACCOUNTANT_TEST_BOOTSTRAP": "tests: a Kafka broker to use instead of starting one",
    "ACCOUNTANT_TEST_POSTGRES_DSN": "tests: a PostgreSQL server to use instead of starting one",
    "ACCOUNTANT_KAFKA_CACHE": "dev/tests: where the local broker's jars are cached (app/dev/kafka.py)",
    "ACCOUNTANT_MAVEN_REPO": "dev/tests: the Maven repository the broker jars are fetched through",
    "ACCOUNTANT_FAULT_FIGURES": "fault suite: file its figures are appended to",
    "ACCOUNTANT_DASHBOARD_SCREENSHOT": "browser test: where the dashboard screenshot is saved",
}


def setting_variables() -> set[str]:
    """Every environment variable that is a setting."""
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def unknown_variable_problems(environ: Mapping[str, str]) -> list[str]:
    known = setting_variables()
    candidates = sorted(known | set(NOT_SETTINGS))
    problems = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in known or variable in NOT_SETTINGS:
            continue
        # Compared without the prefix all of them share, which would make any two look alike.
        closest = difflib.get_close_matches(variable.removeprefix(ENV_PREFIX),
                                            [name.removeprefix(ENV_PREFIX) for name in candidates], n=1, cutoff=0.6)
        hint = (f"did you mean {ENV_PREFIX}{closest[0]}?" if closest
                else "it is not a setting (see the README's settings table)")
        problems.append(f"  {variable}: unknown variable; {hint}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, or stop with a message naming the variable."""
    lines = unknown_variable_problems(os.environ)
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        for problem in error.errors():
            if problem["loc"]:
                name = ENV_PREFIX + "_".join(str(part) for part in problem["loc"]).upper()
                lines.append(f"  {name}: {problem['msg']}")
            else:  # a cross-field check: its message names the variables itself
                message = problem["ctx"]["error"] if "ctx" in problem else problem["msg"]
                lines += [f"  {line}" for line in str(message).splitlines()]
    else:
        if not lines:
            return settings
    raise SettingsError("invalid settings:\n" + "\n".join(lines))
