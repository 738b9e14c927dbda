"""A bad setting stops start-up with a message that names it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.settings import SettingsError, exposure_warnings, load_settings
from tests.support import REPO

#: A broker address that is never contacted: start-up stops before.
UNUSED_BROKER = "127.0.0.1:1"


@pytest.mark.parametrize(("name", "value", "says"), [
    ("ACCOUNTANT_PARTITIONS", "0", "greater than or equal to 1"),
    ("ACCOUNTANT_BROKER", "localhost", "is not host:port"),
    ("ACCOUNTANT_STORE", "redis", "'memory' or 'rocksdb'"),
    ("ACCOUNTANT_GRACE_SECS", "soon", "valid number"),
    ("ACCOUNTANT_TOPIC_PREFIX", "a b", "may only contain"),
    ("ACCOUNTANT_WEB_ADVERTISED_URL", "ftp://10.0.0.5", "http(s) URL"),
])
def test_the_worker_refuses_to_start_and_names_the_setting(name: str, value: str, says: str) -> None:
    env = {key: val for key, val in os.environ.items() if not key.startswith("ACCOUNTANT_")}
    env.update({"ACCOUNTANT_BROKER": UNUSED_BROKER, name: value})
    result = subprocess.run([sys.executable, "-m", "app.cli", "worker"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert f"{name}: " in result.stderr and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_advertised_url_defaults_to_the_bind_address() -> None:
    settings = load_settings(web_host="127.0.0.2", web_port=7000)
    assert settings.advertised_url == "http://127.0.0.2:7000"


def test_an_advertised_url_is_what_peers_and_the_dashboard_link_use() -> None:
    settings = load_settings(web_host="0.0.0.0", web_port=7000, web_advertised_url="http://10.0.0.5:7000/")
    assert settings.advertised_url == "http://10.0.0.5:7000"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_bind_needs_an_advertised_url(host: str) -> None:
    with pytest.raises(SettingsError, match=r"ACCOUNTANT_WEB_ADVERTISED_URL: .*must be set"):
        load_settings(web_host=host)


@pytest.mark.parametrize("url", ["10.0.0.5:7000", "http://", "http://10.0.0.5:7000/api", "http://h:99999"])
def test_a_malformed_advertised_url_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="ACCOUNTANT_WEB_ADVERTISED_URL"):
        load_settings(web_advertised_url=url)


def test_a_wildcard_bind_without_a_token_is_warned_of_and_a_loopback_one_is_not() -> None:
    open_to_all = load_settings(web_host="0.0.0.0", web_advertised_url="http://10.0.0.5:6066")
    [warning] = exposure_warnings(open_to_all)
    assert "ACCOUNTANT_WEB_HOST is 0.0.0.0" in warning and "ACCOUNTANT_API_TOKEN is not set" in warning
    assert exposure_warnings(load_settings(web_host="0.0.0.0", web_advertised_url="http://10.0.0.5:6066",
                                           api_token="t")) == []
    assert exposure_warnings(load_settings()) == []
