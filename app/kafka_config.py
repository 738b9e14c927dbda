"""The one place that turns settings into Kafka client options.

Every Kafka client the project creates takes its connection and security
options from here, so a worker, a reader of its own, the simulator and the
ledger all reach a TLS/SASL cluster the same way:

    AIOKafkaProducer(**client_options(settings), acks="all")
    AIOKafkaAdminClient(**client_options(settings))
    faust.App(..., **faust_options(settings))
    publish(events, servers, topic, security=security_options(settings))  # the simulator

Faust hands `broker_credentials` to every aiokafka client it creates (its
consumer, producers and topic admin) through
`faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth`: a
`SASLCredentials` with an `ssl_context` becomes SASL_SSL, without one
SASL_PLAINTEXT; `SSLCredentials` becomes SSL.

It reads settings through `KafkaClientSettings`, the fields it needs, and
imports nothing of app.settings, which imports it to check the TLS files at
start-up (app.settings.Settings is one).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "SASL_PROTOCOLS",
    "TLS_PROTOCOLS",
    "KafkaClientSettings",
    "TlsFileError",
    "client_options",
    "faust_options",
    "read_secret_file",
    "sasl_password",
    "security_options",
    "tls_context",
]

class KafkaClientSettings(Protocol):
    """The settings a Kafka client is made from (read-only)."""

    @property
    def bootstrap_servers(self) -> list[str]: ...
    @property
    def kafka_security_protocol(self) -> str: ...
    @property
    def kafka_sasl_mechanism(self) -> str: ...
    @property
    def kafka_sasl_username(self) -> str: ...
    @property
    def kafka_sasl_password(self) -> SecretStr: ...
    @property
    def kafka_sasl_password_file(self) -> str: ...
    @property
    def kafka_ssl_ca_file(self) -> str: ...
    @property
    def kafka_ssl_cert_file(self) -> str: ...
    @property
    def kafka_ssl_key_file(self) -> str: ...
    @property
    def kafka_ssl_key_password(self) -> SecretStr: ...
    @property
    def kafka_ssl_key_password_file(self) -> str: ...


SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


class TlsFileError(ValueError):
    """A TLS file that does not load; `field` is the setting to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def client_options(settings: KafkaClientSettings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer,
    AIOKafkaAdminClient and AIOKafkaClient: servers and security."""
    return {"bootstrap_servers": settings.bootstrap_servers, **security_options(settings)}


def security_options(settings: KafkaClientSettings) -> dict[str, Any]:
    """The security part of `client_options`, for a client that is given its
    servers apart (the simulator's `--broker`)."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in TLS_PROTOCOLS:
        options["ssl_context"] = tls_context(settings)
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = sasl_password(settings)
    return options


def faust_options(settings: KafkaClientSettings) -> dict[str, Any]:
    """Keyword arguments for faust.App: the broker URLs and credentials. The
    URLs use the service's transport (app/faust_compat.py), which hands the
    input to the agent in whole fetches."""
    from app.faust_compat import TRANSPORT_SCHEME  # imports Faust: see faust_credentials

    return {
        "broker": [f"{TRANSPORT_SCHEME}://{server}" for server in settings.bootstrap_servers],
        "broker_credentials": faust_credentials(settings),
    }


def faust_credentials(settings: KafkaClientSettings) -> CredentialsT | None:
    import faust  # only the worker needs Faust; the other clients must not pay for importing it

    protocol = settings.kafka_security_protocol
    if protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=sasl_password(settings),
            mechanism=settings.kafka_sasl_mechanism,
            # With a context Faust says SASL_SSL, without one SASL_PLAINTEXT.
            ssl_context=tls_context(settings) if protocol == "SASL_SSL" else None,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(tls_context(settings))
    return None


def sasl_password(settings: KafkaClientSettings) -> str:
    """The SASL password, read from its file each time, so a restarted client
    picks up a rotated secret."""
    if settings.kafka_sasl_password_file:
        return read_secret_file(settings.kafka_sasl_password_file)
    return settings.kafka_sasl_password.get_secret_value()


def read_secret_file(path: str) -> str:
    """A secret file's content without the line end an editor or `echo` adds;
    other whitespace is kept, since it may be part of the secret."""
    return Path(path).read_text().removesuffix("\n").removesuffix("\r")


def tls_context(settings: KafkaClientSettings) -> ssl.SSLContext:
    """A client TLS context: broker certificates checked against the CA file
    (or the system's trust store) with host names verified; the client
    certificate loaded for mutual TLS. Raises TlsFileError naming the setting
    whose file does not load."""
    ca_file = settings.kafka_ssl_ca_file or None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise TlsFileError("kafka_ssl_ca_file", f"{ca_file} holds no usable PEM CA certificate ({error})") from None
    if settings.kafka_ssl_cert_file:
        key_password = settings.kafka_ssl_key_password.get_secret_value()
        if settings.kafka_ssl_key_password_file:
            key_password = read_secret_file(settings.kafka_ssl_key_password_file)
        _load_client_certificate(context, settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file,
                                 key_password or None)
    return context


def _load_client_certificate(context: ssl.SSLContext, cert_file: str, key_file: str, password: str | None) -> None:
    # OpenSSL's error says little about which file is wrong; load them one at a
    # time to name the right setting.
    cert_text = Path(cert_file).read_text(errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsFileError("kafka_ssl_cert_file", f"{cert_file} holds no PEM certificate")
    key_text = Path(key_file).read_text(errors="replace")
    if "PRIVATE KEY-----" not in key_text:
        raise TlsFileError("kafka_ssl_key_file", f"{key_file} holds no PEM private key")
    encrypted = "ENCRYPTED" in key_text
    if encrypted and password is None:
        raise TlsFileError("kafka_ssl_key_password", f"{key_file} is encrypted; set ACCOUNTANT_KAFKA_SSL_KEY_PASSWORD "
                                                     "or ACCOUNTANT_KAFKA_SSL_KEY_PASSWORD_FILE")
    try:
        # A password callable never prompts on the terminal, unlike None for an encrypted key.
        context.load_cert_chain(cert_file, key_file, password=lambda: (password or "").encode())
    except ssl.SSLError as error:
        if encrypted and ("BAD DECRYPT" in str(error).upper() or "PEM LIB" in str(error).upper()):
            raise TlsFileError("kafka_ssl_key_password", f"does not decrypt {key_file} (or that file is damaged)") \
                from None
        if "KEY_VALUES_MISMATCH" in str(error).upper():
            raise TlsFileError("kafka_ssl_key_file", f"{key_file} is not the key of the certificate in "
                                                     f"{cert_file}") from None
        raise TlsFileError("kafka_ssl_cert_file", f"{cert_file} with key {key_file} does not load ({error})") from None
