"""A SASL_SSL (and mutual-TLS SSL) listener for the local Kafka broker.

`BrokerSecurity` makes, at run time, what a secured cluster has: a CA, a
broker certificate signed by it (for 127.0.0.1 and localhost), a client
certificate for mutual TLS, and one SCRAM/PLAIN user with a random password.
It renders the broker properties for the listeners and the arguments that
create the SCRAM credentials when the storage is formatted (KRaft keeps them
in its metadata log, so no admin call is needed). `LocalKafka(security=...)`
takes one; `accountant dev --secure` and the tests use it.

Listeners of a secured local broker, all on 127.0.0.1:
  SASL_SSL  the bootstrap address; PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
  SSL       mutual TLS: a client certificate signed by the CA is required
  INTERNAL  PLAINTEXT, only for the broker's own inter-broker traffic

The certificates are made with the `cryptography` library rather than the
`openssl` command line: no child processes, no dependence on an openssl
binary's version or configuration, and the same code on every platform.
Files already in the directory are reused, so a restarted `accountant dev
--secure` keeps its users (their SCRAM credentials live in the broker's data)
and its CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SASL_MECHANISMS", "BrokerSecurity", "CertificateAuthority", "write_certificate_authority"]

#: What the SASL_SSL listener offers; SCRAM users are created for both SCRAM hashes.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
#: Long enough for any dev data directory; expired files are made anew.
CERTIFICATE_LIFETIME = datetime.timedelta(days=365)
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's files: `cert` (PEM, what clients trust) and `key` (PEM, PKCS#8)."""

    cert: Path
    key: Path

    def issue(self, key_path: Path, cert_path: Path, common_name: str, *, hosts: tuple[str, ...] = (),
              client: bool = False, key_password: str | None = None) -> None:
        """Write a key and a certificate signed by this CA: for a server with
        `hosts` as its names, or for a client (mutual TLS)."""
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        names = [x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host) for host in hosts]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _certificate_builder(common_name, key).issuer_name(ca_cert.subject)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write_private(key_path, _pkcs8(key, key_password))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_certificate_authority(directory: Path, name: str = "usage-accountant local CA") -> CertificateAuthority:
    """Make a new self-signed CA in `directory` (ca.pem, ca.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        _certificate_builder(name, key)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    authority = CertificateAuthority(cert=directory / "ca.pem", key=directory / "ca.key")
    _write_private(authority.key, _pkcs8(key, None))
    authority.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return authority


@dataclass
class BrokerSecurity:
    """TLS material, a user and extra listeners for one LocalKafka.

    The extra ports are chosen on first use and kept for the object's life,
    like LocalKafka's own, so a restarted broker has the same addresses.
    """

    directory: Path
    username: str = "accountant"
    ssl_port: int | None = None
    internal_port: int | None = None
    _ready: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        # Absolute: the broker's JVM reads these files from its own working directory.
        self.directory = self.directory.resolve()

    # -- files (made on first use)

    @property
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority(cert=self.directory / "ca.pem", key=self.directory / "ca.key")

    @property
    def password_file(self) -> Path:
        return self.directory / f"{self.username}.password"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def password(self) -> str:
        self.prepare()
        return self.password_file.read_text().strip()

    def prepare(self) -> None:
        """Make the CA, the certificates and the password unless the
        directory already holds valid ones."""
        if self._ready:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if not _valid_for_a_day(self.ca.cert) or not self.ca.key.is_file():
            write_certificate_authority(self.directory)
        if not _valid_for_a_day(self.directory / "broker.pem", issuer=self.ca.cert):
            self.ca.issue(self.directory / "broker.key", self.directory / "broker.pem", "local kafka broker",
                          hosts=LOCAL_HOSTS)
            # Kafka's PEM keystore: the PKCS#8 key followed by the certificate chain.
            (self.directory / "broker-keystore.pem").write_bytes(
                (self.directory / "broker.key").read_bytes() + (self.directory / "broker.pem").read_bytes())
            os.chmod(self.directory / "broker-keystore.pem", 0o600)
        if not _valid_for_a_day(self.client_cert, issuer=self.ca.cert):
            self.ca.issue(self.client_key, self.client_cert, self.username, client=True)
        if not self.password_file.is_file():
            # URL-safe: no character the format tool's [name=...,password=...] syntax would split on.
            _write_private(self.password_file, (secrets.token_urlsafe(18) + "\n").encode())
        self._ready = True

    # -- broker side

    def pick_ports(self, pick: Callable[..., int], taken: tuple[int, ...]) -> None:
        """Choose the SSL and INTERNAL ports (once), avoiding `taken`."""
        if self.ssl_port is None:
            self.ssl_port = pick(exclude=taken)
        if self.internal_port is None:
            self.internal_port = pick(exclude=(*taken, self.ssl_port))

    def server_properties(self, host: str, client_port: int, controller_port: int) -> dict[str, str]:
        """Broker properties replacing the PLAINTEXT client listener with
        SASL_SSL on `client_port`, plus the SSL and INTERNAL listeners."""
        self.prepare()
        password = self.password
        listeners = {
            "SASL_SSL": f"{host}:{client_port}",
            "SSL": f"{host}:{self.ssl_port}",
            "INTERNAL": f"{host}:{self.internal_port}",
        }
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain_login = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                       f'user_{self.username}="{password}";')
        return {
            "listeners": ",".join(f"{name}://{address}" for name, address in listeners.items())
                         + f",CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": ",".join(f"{name}://{address}" for name, address in listeners.items()),
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
            "inter.broker.listener.name": "INTERNAL",
            "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            "listener.name.sasl_ssl.plain.sasl.jaas.config": plain_login,
            **{f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config": scram_login
               for mechanism in SCRAM_MECHANISMS},
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.directory / "broker-keystore.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca.cert),
            "listener.name.ssl.ssl.client.auth": "required",
        }

    def format_arguments(self) -> list[str]:
        """`kafka-storage format` arguments that create the SCRAM user."""
        self.prepare()
        arguments = []
        for mechanism in SCRAM_MECHANISMS:
            arguments += ["--add-scram", f"{mechanism}=[name={self.username},password={self.password}]"]
        return arguments

    # -- client side

    def settings_env(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The ACCOUNTANT_* variables of a client of the SASL_SSL listener."""
        self.prepare()
        return {
            "ACCOUNTANT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ACCOUNTANT_KAFKA_SASL_MECHANISM": mechanism,
            "ACCOUNTANT_KAFKA_SASL_USERNAME": self.username,
            "ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE": str(self.password_file),
            "ACCOUNTANT_KAFKA_SSL_CA_FILE": str(self.ca.cert),
        }

    def client_options(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
        """aiokafka options of a client of the SASL_SSL listener, for the
        launcher's own readiness probe (services go through app/kafka_config.py)."""
        self.prepare()
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl.create_default_context(cafile=str(self.ca.cert)),
            "sasl_mechanism": mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }

    def settings_overrides(self, mechanism: str = "SCRAM-SHA-512") -> Mapping[str, str]:
        """The same as Settings field values (for load_settings(**...))."""
        prefix = "ACCOUNTANT_"
        return {name.removeprefix(prefix).lower(): value for name, value in self.settings_env(mechanism).items()}


def _certificate_builder(common_name: str, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little in the past: a clock a few seconds behind must not see a certificate from the future.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
    )


def _pkcs8(key: rsa.RSAPrivateKey, password: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_bytes(data)


def _valid_for_a_day(cert_path: Path, issuer: Path | None = None) -> bool:
    """The certificate exists, has a day left, and (if given) was signed by `issuer`."""
    if not cert_path.is_file():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    if cert.not_valid_after_utc < tomorrow:
        return False
    if issuer is not None:
        if not issuer.is_file():
            return False
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(issuer.read_bytes()))
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
