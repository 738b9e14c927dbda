"""What ships: the lock files match pyproject, docker-compose.yml is valid, the
image runs as a non-root user and its HEALTHCHECK asks /healthz."""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app import healthcheck
from app.healthcheck import healthz_url, main
from app.settings import load_settings
from tests.support import REPO


def pinned(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", lock.read_text(), re.MULTILINE)}


def requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in extras:
        listed += project["optional-dependencies"][extra]
    return [Requirement(line) for line in listed]


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ("rocksdb",)),
                                              ("requirements-test.lock", ("rocksdb", "test"))])
def test_the_lock_pins_every_requirement_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    versions = pinned(REPO / lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{name} is not in {lock}: run scripts/lock"
        assert requirement.specifier.contains(versions[name], prereleases=True), \
            f"{lock} pins {name}=={versions[name]}, outside {requirement}: run scripts/lock"
    text = (REPO / lock).read_text()
    # Every pinned package carries at least one hash (pip --require-hashes refuses the file otherwise).
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_setup_and_the_image_install_from_the_locks() -> None:
    assert "--require-hashes -r requirements-test.lock" in (REPO / "scripts" / "setup").read_text()
    assert "--require-hashes -r requirements.lock" in (REPO / "Dockerfile").read_text()


def test_the_image_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*\n?.*CMD \["python", "-m", "app.healthcheck"\]', dockerfile, re.MULTILINE)


def compose_command() -> list[str]:
    """Docker's compose plugin if present, else the standalone docker-compose
    (scripts/setup installs Debian's). Neither needs a Docker engine for `config`."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed; scripts/setup installs it")
    return [standalone]


def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run([*compose_command(), "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60,
                            # No engine is asked; make sure none could be.
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent"})
    assert result.returncode == 0, result.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    #: Seconds before answering: a process whose event loop is blocked answers late or never.
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_the_healthcheck_follows_healthz(health_server: http.server.HTTPServer, status: int, exit_code: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Health, "status", status)
    monkeypatch.setenv("ACCOUNTANT_WEB_PORT", str(health_server.server_address[1]))
    assert main([]) == exit_code


def test_the_healthcheck_fails_a_process_that_does_not_answer_in_time(
        health_server: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blocked event loop answers nothing: the probe's timeout is its 503."""
    monkeypatch.setattr(_Health, "delay", 1.0)
    monkeypatch.setattr(healthcheck, "PROBE_TIMEOUT_SECS", 0.2)
    monkeypatch.setenv("ACCOUNTANT_WEB_PORT", str(health_server.server_address[1]))
    assert main([]) == 1


def test_the_ledger_healthcheck_asks_the_ledgers_port(health_server: http.server.HTTPServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNTANT_LEDGER_WEB_PORT", str(health_server.server_address[1]))
    with socket.socket() as unused:  # nothing on the worker's port
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ACCOUNTANT_WEB_PORT", str(unused.getsockname()[1]))
        assert (main(["--ledger"]), main([])) == (0, 1)


def test_compose_probes_each_container_where_its_own_process_listens() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert services["ledger"]["command"] == ["accountant", "ledger"]
    assert services["ledger"]["healthcheck"]["test"] == ["CMD", "python", "-m", "app.healthcheck", "--ledger"]
    # The worker keeps the image's HEALTHCHECK, which asks the worker's port.
    assert "healthcheck" not in services["accountant"] and "command" not in services["accountant"]


def test_the_healthcheck_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ACCOUNTANT_WEB_PORT", str(unused.getsockname()[1]))
        assert main([]) == 1


@pytest.mark.parametrize(("host", "url"), [("0.0.0.0", "http://127.0.0.1:6066/healthz"),
                                           ("::", "http://[::1]:6066/healthz"),
                                           ("10.1.2.3", "http://10.1.2.3:6066/healthz")])
def test_the_healthcheck_asks_where_the_worker_listens(host: str, url: str) -> None:
    advertised = {"web_advertised_url": "http://10.1.2.3:6066"}
    assert healthz_url(load_settings(web_host=host, web_port=6066, **advertised)) == url
