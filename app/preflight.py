"""Start-up checks: can this process use the Kafka cluster the settings name?

Without them a bad address, password or CA ends in an aiokafka retry loop and
then a traceback ("KafkaConnectionError: Unable to bootstrap from ..."), which
names neither the cause nor the setting. `check_kafka` connects to every
bootstrap server itself, one step at a time (TCP, TLS, SASL, a metadata
request), then to every broker the cluster advertises, all within
ACCOUNTANT_KAFKA_CONNECT_TIMEOUT_SECS, and stops start-up with one message
that says what failed and which ACCOUNTANT_* setting to look at:

    Kafka start-up check failed:
      ACCOUNTANT_KAFKA_SASL_PASSWORD: 127.0.0.1:9093 refused user 'billing' with
      SCRAM-SHA-512 (...); check ACCOUNTANT_KAFKA_SASL_USERNAME and ACCOUNTANT_KAFKA_SASL_PASSWORD

An unreachable server is tried again until the time is up (the cluster may be
starting beside us); a refused TLS handshake or login fails at once, since
waiting does not fix a setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from app.kafka_config import SASL_PROTOCOLS, TLS_PROTOCOLS, client_options
from app.settings import ENV_PREFIX, Settings

__all__ = ["Finding", "KafkaCheckError", "check_kafka", "run_kafka_check", "split_host_port"]

#: Between tries of servers that cannot be reached yet.
RETRY_INTERVAL_SECS = 0.5
#: One TCP connect, TLS handshake or request; the overall deadline still rules.
STEP_TIMEOUT_SECS = 10.0


class KafkaCheckError(SystemExit):
    """Start-up refused: the Kafka cluster cannot be used with these settings."""


@dataclass(frozen=True)
class Finding:
    """What went wrong with one server, and the setting to look at."""

    setting: str
    message: str
    #: True when trying again later may succeed (nothing answered yet).
    transient: bool = False

    def __str__(self) -> str:
        return f"{ENV_PREFIX}{self.setting}: {self.message}"


def run_kafka_check(settings: Settings) -> None:
    """check_kafka from synchronous code (the CLI, before Faust's loop exists)."""
    asyncio.run(check_kafka(settings))


async def check_kafka(settings: Settings, timeout: float | None = None) -> None:
    """Return once every bootstrap server and every advertised broker accepts
    a connection, the TLS handshake, the login and a metadata request; else
    raise KafkaCheckError with the findings."""
    timeout = settings.kafka_connect_timeout_secs if timeout is None else timeout
    deadline = time.monotonic() + timeout
    options = client_options(settings)
    servers = [split_host_port(server) for server in settings.bootstrap_servers]
    findings = await _until_reachable(servers, settings, options, deadline)
    if findings is None:
        advertised = await _advertised_brokers(options, deadline)
        findings = await _until_reachable(advertised, settings, options, deadline, advertised=True)
    if findings is not None:
        tried = f" (tried for {timeout:g} s; ACCOUNTANT_KAFKA_CONNECT_TIMEOUT_SECS)" \
            if any(finding.transient for finding in findings) else ""
        lines = "\n".join(f"  {finding}" for finding in _unique(findings))
        raise KafkaCheckError(f"Kafka start-up check failed{tried}:\n{lines}")


async def _until_reachable(servers: list[tuple[str, int]], settings: Settings, options: dict[str, Any],
                           deadline: float, *, advertised: bool = False) -> list[Finding] | None:
    """None once every server passes; the findings of the last try when a
    server fails for good or the deadline passes."""
    while True:
        findings = [finding for finding in await asyncio.gather(
            *(_diagnose(host, port, settings, options, deadline, advertised) for host, port in servers))
            if finding is not None]
        if not findings:
            return None
        if not all(finding.transient for finding in findings) or time.monotonic() + RETRY_INTERVAL_SECS > deadline:
            return findings
        await asyncio.sleep(RETRY_INTERVAL_SECS)


async def _advertised_brokers(options: dict[str, Any], deadline: float) -> list[tuple[str, int]]:
    """The brokers the cluster's metadata names: clients connect to these,
    not to the bootstrap addresses, after the first request."""
    client = AIOKafkaClient(**options, request_timeout_ms=_step_ms(deadline))
    try:
        await asyncio.wait_for(client.bootstrap(), _step(deadline))
        return sorted({(broker.host, broker.port) for broker in client.cluster.brokers()})
    except (TimeoutError, KafkaError, OSError):
        # Every bootstrap server just passed the same steps; a failure now is
        # a race with a restarting broker, which the clients themselves retry.
        return []
    finally:
        await client.close()


async def _diagnose(host: str, port: int, settings: Settings, options: dict[str, Any], deadline: float,
                    advertised: bool) -> Finding | None:
    where = f"{host}:{port}"
    if advertised:
        where = f"{where} (a broker the cluster advertises; its advertised.listeners must be reachable from here)"
    protocol = settings.kafka_security_protocol
    try:
        await _close(await asyncio.wait_for(asyncio.open_connection(host, port), _step(deadline)))
    except socket.gaierror:
        return Finding("BROKER", f"{where}: the host name does not resolve", transient=True)
    except (TimeoutError, OSError) as error:
        return Finding("BROKER", f"{where}: cannot connect ({_describe(error)})", transient=True)

    security = {key: value for key, value in options.items() if key != "bootstrap_servers"}
    try:
        conn = await asyncio.wait_for(create_conn(host, port, request_timeout_ms=_step_ms(deadline), **security),
                                      _step(deadline))
    except ssl.SSLCertVerificationError as error:
        return _untrusted_certificate(where, error, settings)
    except SaslAuthenticationFailed as error:
        password = "SASL_PASSWORD_FILE" if settings.kafka_sasl_password_file else "SASL_PASSWORD"
        return Finding(f"KAFKA_{password}",
                       f"{where} refused user {settings.kafka_sasl_username!r} with {settings.kafka_sasl_mechanism} "
                       f"({error}); check ACCOUNTANT_KAFKA_SASL_USERNAME and ACCOUNTANT_KAFKA_{password}")
    except UnsupportedSaslMechanismError as error:
        return Finding("KAFKA_SASL_MECHANISM", f"{where}: {error}")
    except IllegalSaslStateError:
        return Finding("KAFKA_SECURITY_PROTOCOL",
                       f"{where} does not use SASL, but ACCOUNTANT_KAFKA_SECURITY_PROTOCOL is {protocol}; "
                       f"try {'SSL' if protocol == 'SASL_SSL' else 'PLAINTEXT'}")
    except (TimeoutError, KafkaError, OSError, asyncio.IncompleteReadError) as error:
        return await _failed_handshake(host, port, where, error, settings, deadline)

    try:
        await asyncio.wait_for(conn.send(MetadataRequest([])), _step(deadline))
    except KafkaConnectionError:
        if protocol in SASL_PROTOCOLS:
            return Finding("BROKER", f"{where} closed the connection after the login", transient=True)
        return Finding("KAFKA_SECURITY_PROTOCOL",
                       f"{where} closed the connection at the first request: the listener expects a SASL "
                       f"login, but ACCOUNTANT_KAFKA_SECURITY_PROTOCOL is {protocol}; "
                       f"try {'SASL_SSL' if protocol == 'SSL' else 'SASL_PLAINTEXT'}")
    except (TimeoutError, KafkaError) as error:
        return Finding("BROKER", f"{where} did not answer a metadata request ({_describe(error)})", transient=True)
    finally:
        conn.close()
    return None


def _untrusted_certificate(where: str, error: ssl.SSLCertVerificationError, settings: Settings) -> Finding:
    reason = error.verify_message or str(error)
    if "mismatch" in reason.lower():
        return Finding("BROKER", f"{where}: the broker's certificate is not for this host name ({reason}); use "
                                 f"the name the certificate holds")
    trusted = settings.kafka_ssl_ca_file or "the system's trust store (ACCOUNTANT_KAFKA_SSL_CA_FILE is not set)"
    return Finding("KAFKA_SSL_CA_FILE", f"{where}: the broker's certificate is not trusted ({reason}); it is "
                                        f"checked against {trusted}")


async def _failed_handshake(host: str, port: int, where: str, error: BaseException, settings: Settings,
                            deadline: float) -> Finding:
    """The TCP connection opened but the TLS handshake or the first Kafka
    exchange broke: tell a listener of another protocol from a rejected
    client certificate."""
    protocol = settings.kafka_security_protocol
    cause = error.__cause__ or error
    if protocol in TLS_PROTOCOLS:
        text = str(cause).upper()
        if isinstance(cause, ssl.SSLError) and any(
                alert in text for alert in ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "UNKNOWN_CA",
                                            "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE")):
            if settings.kafka_ssl_cert_file:
                return Finding("KAFKA_SSL_CERT_FILE", f"{where} rejected the client certificate "
                                                      f"{settings.kafka_ssl_cert_file} ({_describe(cause)})")
            return Finding("KAFKA_SSL_CERT_FILE",
                           f"{where} wants a client certificate (mutual TLS; {_describe(cause)}); set "
                           f"ACCOUNTANT_KAFKA_SSL_CERT_FILE and ACCOUNTANT_KAFKA_SSL_KEY_FILE")
        return Finding("KAFKA_SECURITY_PROTOCOL",
                       f"{where} did not complete a TLS handshake ({_describe(cause)}): it looks like a listener "
                       f"without TLS (PLAINTEXT or SASL_PLAINTEXT), but ACCOUNTANT_KAFKA_SECURITY_PROTOCOL is "
                       f"{protocol}; check the port in ACCOUNTANT_BROKER")
    if await _speaks_tls(host, port, deadline):
        return Finding("KAFKA_SECURITY_PROTOCOL",
                       f"{where} expects TLS, but ACCOUNTANT_KAFKA_SECURITY_PROTOCOL is {protocol}; "
                       f"try {'SASL_SSL' if protocol == 'SASL_PLAINTEXT' else 'SSL or SASL_SSL'}")
    return Finding("BROKER", f"{where} closed the connection ({_describe(cause)})", transient=True)


async def _speaks_tls(host: str, port: int, deadline: float) -> bool:
    """Whether the listener completes a TLS handshake (certificate unchecked:
    this only tells the protocol apart, nothing is sent over it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        await _close(await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), _step(deadline)))
    except (TimeoutError, OSError):
        return False
    return True


async def _close(streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    writer = streams[1]
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _step(deadline: float) -> float:
    return max(0.1, min(STEP_TIMEOUT_SECS, deadline - time.monotonic()))


def _step_ms(deadline: float) -> int:
    return int(_step(deadline) * 1000)


def split_host_port(server: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port)."""
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error) or type(error).__name__
    return text


def _unique(findings: Iterable[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))
