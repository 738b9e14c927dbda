"""Kafka security settings: each bad combination or file stops start-up naming
the variable; good ones become the options every client and Faust get."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from app.dev.kafka_security import BrokerSecurity, write_certificate_authority
from app.faust_compat import TRANSPORT_SCHEME
from app.kafka_config import client_options, faust_options
from app.settings import NOT_SETTINGS, SettingsError, load_settings, unknown_variable_problems


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> BrokerSecurity:
    security = BrokerSecurity(tmp_path_factory.mktemp("tls"))
    security.prepare()
    return security


@pytest.fixture
def sasl_ssl(tls: BrokerSecurity) -> dict[str, str]:
    return {"broker": "127.0.0.1:9093", **tls.settings_overrides("SCRAM-SHA-256")}


def test_plaintext_is_the_default_and_needs_no_security_options() -> None:
    assert client_options(load_settings(broker="127.0.0.1:9092")) == {
        "bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}
    assert faust_options(load_settings(broker="127.0.0.1:9092"))["broker_credentials"] is None


def test_sasl_ssl_options_carry_the_login_and_a_context_that_checks_the_broker(
        sasl_ssl: dict[str, str], tls: BrokerSecurity) -> None:
    options = client_options(load_settings(**sasl_ssl))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == tls.username
    assert options["sasl_plain_password"] == tls.password  # read from the file, without its line end
    context: ssl.SSLContext = options["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_faust_gets_the_same_login_as_sasl_ssl_credentials(sasl_ssl: dict[str, str], tls: BrokerSecurity) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    credentials = faust_options(load_settings(**sasl_ssl))["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    # What Faust's aiokafka driver hands its consumer, producers and admin.
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == (tls.username, tls.password)
    assert isinstance(auth["ssl_context"], ssl.SSLContext)


def test_the_worker_app_is_built_with_the_service_transport_and_the_login(
        sasl_ssl: dict[str, str], tls: BrokerSecurity, tmp_path: Path) -> None:
    from app.service import build_app
    from tables.table import table_settings

    settings = load_settings(**{**sasl_ssl, "broker": "127.0.0.1:9093,127.0.0.2:9093"}, data_dir=str(tmp_path))
    assert faust_options(settings)["broker"] == [f"{TRANSPORT_SCHEME}://127.0.0.1:9093",
                                                 f"{TRANSPORT_SCHEME}://127.0.0.2:9093"]
    service = build_app(settings)
    assert [url.scheme for url in service.app.conf.broker] == [TRANSPORT_SCHEME, TRANSPORT_SCHEME]
    credentials = service.app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials) and credentials.username == tls.username
    # The stores' bulk loads (tables/changelog.py) log in with the same settings.
    assert table_settings(service.table) is settings


def test_sasl_plaintext_has_no_tls_context() -> None:
    settings = load_settings(broker="127.0.0.1:9092", kafka_security_protocol="SASL_PLAINTEXT",
                             kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u", kafka_sasl_password="p")
    assert "ssl_context" not in client_options(settings)
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(faust_options(settings)["broker_credentials"])
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None


def test_mutual_tls_loads_the_client_certificate(tls: BrokerSecurity) -> None:
    settings = load_settings(broker="127.0.0.1:9093", kafka_security_protocol="SSL",
                             kafka_ssl_ca_file=str(tls.ca.cert), kafka_ssl_cert_file=str(tls.client_cert),
                             kafka_ssl_key_file=str(tls.client_key))
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(faust_options(settings)["broker_credentials"])
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    assert client_options(settings)["security_protocol"] == "SSL"


def test_an_encrypted_client_key_needs_its_password(tls: BrokerSecurity, tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    tls.ca.issue(key, cert, "client", client=True, key_password="s3cret")
    common = {"broker": "127.0.0.1:9093", "kafka_security_protocol": "SSL", "kafka_ssl_ca_file": str(tls.ca.cert),
              "kafka_ssl_cert_file": str(cert), "kafka_ssl_key_file": str(key)}
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_KAFKA_SSL_KEY_PASSWORD: .* is encrypted"):
        load_settings(**common)
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_KAFKA_SSL_KEY_PASSWORD: does not decrypt"):
        load_settings(**common, kafka_ssl_key_password="wrong")
    password_file = tmp_path / "key.password"
    password_file.write_text("s3cret\n")
    assert client_options(load_settings(**common, kafka_ssl_key_password_file=str(password_file)))["ssl_context"]


@pytest.mark.parametrize(("overrides", "says"), [
    ({"kafka_security_protocol": "SASL_SSL"},
     ["ACCOUNTANT_KAFKA_SASL_MECHANISM: must be set", "ACCOUNTANT_KAFKA_SASL_USERNAME: must be set",
      "ACCOUNTANT_KAFKA_SASL_PASSWORD: (or ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE) must be set"]),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"},
     ["ACCOUNTANT_KAFKA_SASL_MECHANISM: Input should be '', 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"]),
    ({"kafka_security_protocol": "TLS"}, ["ACCOUNTANT_KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT'"]),
    ({"kafka_sasl_username": "u"},
     ["ACCOUNTANT_KAFKA_SASL_USERNAME: is only used with ACCOUNTANT_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or "
      "SASL_SSL, not PLAINTEXT"]),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u",
      "kafka_sasl_password": "p", "kafka_ssl_ca_file": "/etc/hostname"},
     ["ACCOUNTANT_KAFKA_SSL_CA_FILE: is only used with ACCOUNTANT_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"]),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u",
      "kafka_sasl_password": "p", "kafka_sasl_password_file": "/etc/hostname"},
     ["ACCOUNTANT_KAFKA_SASL_PASSWORD: and ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE are both set; set only one"]),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u",
      "kafka_sasl_password_file": "/nonexistent/password"},
     ["ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE: /nonexistent/password does not exist"]),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nonexistent/ca.pem"},
     ["ACCOUNTANT_KAFKA_SSL_CA_FILE: /nonexistent/ca.pem does not exist"]),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/etc/hostname"},
     ["ACCOUNTANT_KAFKA_SSL_KEY_FILE: must be set too"]),
    ({"kafka_security_protocol": "SSL", "kafka_connect_timeout_secs": "0"},
     ["ACCOUNTANT_KAFKA_CONNECT_TIMEOUT_SECS: Input should be greater than 0"]),
])
def test_a_security_setting_that_cannot_work_is_named(overrides: dict[str, str], says: list[str]) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(broker="127.0.0.1:9093", **overrides)
    for line in says:
        assert line in str(refused.value)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "password"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_KAFKA_SASL_PASSWORD_FILE: .* is empty"):
        load_settings(broker="127.0.0.1:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                      kafka_sasl_username="u", kafka_sasl_password_file=str(empty))


def test_tls_files_that_do_not_load_are_named(tls: BrokerSecurity, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_KAFKA_SSL_CA_FILE: .*no usable PEM CA certificate"):
        load_settings(broker="127.0.0.1:9093", kafka_security_protocol="SSL", kafka_ssl_ca_file=str(not_pem))
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_KAFKA_SSL_CERT_FILE: .*holds no PEM certificate"):
        load_settings(broker="127.0.0.1:9093", kafka_security_protocol="SSL", kafka_ssl_cert_file=str(not_pem),
                      kafka_ssl_key_file=str(tls.client_key))
    other = write_certificate_authority(tmp_path / "other")  # a key that is not the certificate's
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_KAFKA_SSL_KEY_FILE: .*is not the key of the certificate"):
        load_settings(broker="127.0.0.1:9093", kafka_security_protocol="SSL",
                      kafka_ssl_cert_file=str(tls.client_cert), kafka_ssl_key_file=str(other.key))


def test_a_misspelt_variable_names_the_closest_setting() -> None:
    problems = unknown_variable_problems({"ACCOUNTANT_PARTITONS": "4", "ACCOUNTANT_KAFKA_SASL_PASWORD": "x",
                                          "ACCOUNTANT_PARTITIONS": "4", "OTHER_THING": "1"})
    assert problems == [
        "  ACCOUNTANT_KAFKA_SASL_PASWORD: unknown variable; did you mean ACCOUNTANT_KAFKA_SASL_PASSWORD?",
        "  ACCOUNTANT_PARTITONS: unknown variable; did you mean ACCOUNTANT_PARTITIONS?",
    ]


def test_a_variable_far_from_any_setting_points_to_the_table() -> None:
    assert unknown_variable_problems({"ACCOUNTANT_XYZZY": "1"}) == [
        "  ACCOUNTANT_XYZZY: unknown variable; it is not a setting (see the README's settings table)"]


def test_variables_of_the_tests_and_tools_are_not_settings_but_allowed() -> None:
    assert unknown_variable_problems(dict.fromkeys(NOT_SETTINGS, "x")) == []


def test_load_settings_refuses_an_unknown_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNTANT_PARTITONS", "4")
    with pytest.raises(SettingsError, match="ACCOUNTANT_PARTITONS: unknown variable; did you mean "
                                            "ACCOUNTANT_PARTITIONS"):
        load_settings()


def test_a_relative_tls_directory_gives_the_broker_absolute_paths(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`accountant dev --secure` defaults to ./data: the JVM runs elsewhere."""
    monkeypatch.chdir(tmp_path)
    security = BrokerSecurity(Path("data/kafka/tls"))
    security.pick_ports(lambda exclude: 20_000 + len(exclude), taken=(19_000, 19_001))
    properties = security.server_properties("127.0.0.1", 19_000, 19_001)
    for name in ("ssl.keystore.location", "ssl.truststore.location"):
        assert Path(properties[name]).is_absolute() and Path(properties[name]).is_file(), properties[name]
    assert security.password_file.is_absolute()
