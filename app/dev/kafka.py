"""A throw-away single-node Kafka (KRaft) broker for tests and local runs.

No Docker needed: the broker's jars come from Maven Central (see
``broker/pom.xml``) into a per-version cache, and the broker runs as a plain
``java`` child process bound to loopback only.

    with LocalKafka() as kafka:
        print(kafka.bootstrap)          # "127.0.0.1:PORT"

``python -m app.dev.kafka`` starts one and runs until Ctrl-C;
``python -m app.dev.kafka --fetch-only`` only fills the jar cache (CI does that
first so the fetch is not charged to the first test).

Environment:
  ACCOUNTANT_KAFKA_CACHE  directory for the broker jars, used as given
                          (default ~/.cache/usage-accountant/kafka-<version>);
                          refetched whenever broker/pom.xml changes
  ACCOUNTANT_MAVEN_REPO   Maven local repository to fetch through (default:
                          Maven's own, ~/.m2/repository); point it at an empty
                          directory to measure a cold fetch.

This module must not import faust: the test fixtures use it before any app
code is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from app.dev.processes import (
    LOOPBACK,
    ServerProcess,
    die_with_parent_preexec,
    pick_free_loopback_port,
    serve_until_signalled,
)
from app.preflight import split_host_port

if TYPE_CHECKING:
    from app.dev.kafka_security import BrokerSecurity

__all__ = [
    "TEST_BROKER_SETTINGS",
    "BrokerError",
    "LocalKafka",
    "create_topics",
    "ensure_kafka_jars",
    "kafka_version",
    "wait_for_broker",
]

ENV_KAFKA_CACHE = "ACCOUNTANT_KAFKA_CACHE"
ENV_MAVEN_REPO = "ACCOUNTANT_MAVEN_REPO"

POM_PATH = Path(__file__).resolve().parents[2] / "broker" / "pom.xml"

# Broker settings that make a one-node cluster usable by tests.  Shared with the
# Docker-based fixture (tests/conftest.py) so both brokers behave alike.
TEST_BROKER_SETTINGS: dict[str, str] = {
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    # Internal topics default to replication factor 3, which one node cannot host.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Fewer internal partitions (default 50) make the first group join and the
    # first transaction quicker on a 2-core machine.
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.num.partitions": "10",
    # Rebalance at once instead of waiting 3 s for more members.
    "group.initial.rebalance.delay.ms": "0",
    # Lets tests use short session timeouts so a killed worker is evicted fast.
    "group.min.session.timeout.ms": "1000",
    # After a SIGKILL the restarted broker cannot register until the controller
    # has expired its previous session (default 9 s of dead time per restart).
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "1000",
    # The compaction cleaner allocates this up front (default 128 MiB).
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
}

# Heap fits a test broker; SerialGC starts faster and runs fewer threads than
# G1 on a 2-core machine.  (C1-only JIT, -XX:TieredStopAtLevel=1, would start
# ~0.5 s sooner but slow the broker down under benchmark load.)
JVM_OPTIONS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

# Topic the readiness probe creates and writes one record to.
PROBE_TOPIC = "_local_kafka_probe"

_LOG4J2_PROPERTIES = """\
# Written by app/dev/kafka.py: every broker log line goes to stdout, which the
# launcher sends to the broker log file.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
# Full config dumps (hundreds of lines per client/server start); the config is
# in server.properties beside the log.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started or reached."""


# --------------------------------------------------------------------------
# Jars


@cache
def kafka_version() -> str:
    """The Kafka version pinned in broker/pom.xml (the single source of truth)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", _read_pom())
    if not match:
        raise BrokerError(f"no <kafka.version> in {POM_PATH}")
    return match.group(1).strip()


def kafka_cache_dir() -> Path:
    override = os.environ.get(ENV_KAFKA_CACHE)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "usage-accountant" / f"kafka-{kafka_version()}"


def ensure_kafka_jars() -> Path:
    """Return the directory holding the broker's class path, fetching it once.

    The cache is complete when its marker file holds the hash of the POM, so
    editing the POM (e.g. a version bump) refetches.  A file lock keeps
    concurrent test processes from fetching twice.
    """
    cache_dir = kafka_cache_dir()
    libs = cache_dir / "libs"
    marker = cache_dir / "complete"
    pom_digest = hashlib.sha256(_read_pom().encode()).hexdigest()

    def is_complete() -> bool:
        return libs.is_dir() and marker.is_file() and marker.read_text().strip() == pom_digest

    if is_complete():
        return libs
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete():  # another process fetched while we waited
            return libs
        _maven_copy_dependencies(cache_dir / "libs.partial", libs)
        marker.write_text(pom_digest + "\n")
    return libs


def _maven_copy_dependencies(staging: Path, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven ('mvn') is not on PATH; it fetches the Kafka broker jars. "
            f"Install it (apt-get install maven) or set {ENV_KAFKA_CACHE} to a "
            "directory whose libs/ already holds them."
        )
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        mvn, "-B", "-q", "-f", str(POM_PATH),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    maven_repo = os.environ.get(ENV_MAVEN_REPO)
    if maven_repo:
        command.append(f"-Dmaven.repo.local={Path(maven_repo).expanduser()}")
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0 or not any(staging.glob("kafka_*.jar")):
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise BrokerError(f"fetching Kafka jars failed ({' '.join(command)}):\n{tail}")
    # Swap in whole so a half-finished fetch is never taken for a class path.
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


@cache
def _read_pom() -> str:
    try:
        return POM_PATH.read_text()
    except FileNotFoundError:
        raise BrokerError(
            f"{POM_PATH} is missing: the local broker needs the project's source "
            "tree (pip install -e .)"
        ) from None


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no 'java' on PATH (Kafka 4 needs Java 17+; apt-get install openjdk-17-jre-headless)")
    return java


# --------------------------------------------------------------------------
# Client-side helpers (also used by the test fixtures)


async def create_topics(
    bootstrap: str,
    partitions_by_topic: Mapping[str, int],
    *,
    configs: Mapping[str, str] | None = None,
    exist_ok: bool = False,
    timeout_ms: int = 15_000,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Create topics (replication factor 1) and raise on any per-topic error.

    aiokafka's admin client returns per-topic error codes instead of raising,
    so this checks them.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **(client_options or {}))
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(name, num_partitions=count, replication_factor=1, topic_configs=dict(configs or {}))
                for name, count in partitions_by_topic.items()
            ],
            timeout_ms=timeout_ms,
        )
    finally:
        await admin.close()
    for topic_error in response.topic_errors:
        topic, error_code = topic_error[0], topic_error[1]
        if error_code == 0:
            continue
        error = for_code(error_code)
        if exist_ok and error is TopicAlreadyExistsError:
            continue
        message = topic_error[2] if len(topic_error) > 2 else ""
        raise error(f"creating topic {topic!r}: {message}")


def wait_for_broker(
    bootstrap: str,
    timeout: float,
    *,
    is_alive: Callable[[], bool] = lambda: True,
    log_path: Path | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Block until the broker really serves clients: it creates a topic and
    accepts a record written with acks=all.  ``client_options`` (security)
    go to the probe's clients.

    Raises BrokerError if ``is_alive()`` turns false or ``timeout`` passes.
    """
    _run_coroutine_blocking(
        _probe_until_ready(bootstrap, time.monotonic() + timeout, is_alive, log_path, client_options or {}))


async def _probe_until_ready(
    bootstrap: str, deadline: float, is_alive: Callable[[], bool], log_path: Path | None,
    client_options: Mapping[str, Any],
) -> None:
    host, port = split_host_port(bootstrap)
    where = f"; broker log: {log_path}" if log_path else ""
    last_error: BaseException | None = None
    while True:
        if not is_alive():
            raise BrokerError(f"Kafka broker at {bootstrap} exited during start-up{where}{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise BrokerError(
                f"Kafka broker at {bootstrap} not ready in time (last error: {last_error!r}){where}"
                f"{_log_tail(log_path)}"
            )
        # A plain TCP connect first: it fails silently and fast, whereas
        # aiokafka logs an error for every refused connection.
        if not _accepts_connections(host, port):
            await asyncio.sleep(0.1)
            continue
        try:
            await create_topics(bootstrap, {PROBE_TOPIC: 1}, exist_ok=True, timeout_ms=5_000,
                                client_options=client_options)
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5_000,
                                        **client_options)
            await producer.start()
            try:
                await producer.send_and_wait(PROBE_TOPIC, b"ready")
            finally:
                await producer.stop()
            return
        except (TimeoutError, KafkaError, OSError) as error:
            last_error = error
            await asyncio.sleep(0.25)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _run_coroutine_blocking(coroutine: Any) -> Any:
    """Run a coroutine to completion from sync code, even when the caller is
    itself inside a running event loop (then on a private loop in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    """The first ERROR lines and the last lines of the latest start's log, for
    exception messages (a Java stack trace alone hides the cause)."""
    if log_path is None or not log_path.is_file():
        return ""
    with open(log_path, "rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 256 * 1024))
        text = log.read().decode(errors="replace")
    latest_start = text.splitlines()
    for index in range(len(latest_start) - 1, -1, -1):
        if latest_start[index].startswith("=== LocalKafka"):
            latest_start = latest_start[index:]
            break
    errors = [line for line in latest_start if " ERROR " in line or " FATAL " in line][:5]
    shown = "\n".join(latest_start[-lines:])
    if errors:
        shown = "\n".join(errors) + "\n...\n" + shown
    return "\n--- broker log ---\n" + shown


# --------------------------------------------------------------------------
# The broker


class LocalKafka(ServerProcess):
    """A single-node Kafka (combined broker + controller) on 127.0.0.1.

    ``stop()`` (SIGTERM: Kafka shuts down cleanly) then ``start()`` restarts
    it on the same ports with the same data.  The JVM is killed if the
    Python process that started it dies.
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None, log_path: Path | None = None,
                 security: BrokerSecurity | None = None):
        super().__init__()
        self._owns_workdir = workdir is None
        # Absolute: the JVM is handed paths inside it and runs from another directory.
        self._workdir = Path(tempfile.mkdtemp(prefix="local-kafka-")) if workdir is None else Path(workdir).resolve()
        self._port = port
        self._controller_port: int | None = None
        self._log_path = Path(log_path).resolve() if log_path is not None else self._workdir / "broker.log"
        #: None: one PLAINTEXT client listener; else SASL_SSL at `bootstrap` (app/dev/kafka_security.py).
        self._security = security

    # -- public properties

    @property
    def bootstrap(self) -> str:
        if self._port is None:
            raise BrokerError("broker not started yet: no port chosen")
        return f"{LOOPBACK}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def security(self) -> BrokerSecurity | None:
        return self._security

    def client_options(self) -> dict[str, Any]:
        """Security options of an aiokafka client of `bootstrap`."""
        return self._security.client_options() if self._security is not None else {}

    # -- lifecycle

    def start(self, timeout: float = 90) -> LocalKafka:
        """Start the broker and return once a client can create a topic and
        write to it.  Raises BrokerError (naming the log file) on failure."""
        if self.is_running():
            raise BrokerError(f"broker already running at {self.bootstrap}")
        deadline = time.monotonic() + timeout
        java = _java()
        libs = ensure_kafka_jars()
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = pick_free_loopback_port()
        if self._controller_port is None:
            self._controller_port = pick_free_loopback_port(exclude=(self._port,))
        if self._security is not None:
            self._security.pick_ports(pick_free_loopback_port, taken=(self._port, self._controller_port))
        config_path = self._write_config()
        classpath = f"{libs}{os.sep}*"

        # The child writes to its own copy of the descriptor; ours closes here.
        with open(self._log_path, "ab") as log_file:
            log_file.write(
                f"\n=== LocalKafka: starting Kafka {kafka_version()} on {self.bootstrap} "
                f"at {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode()
            )
            log_file.flush()
            if not (self._data_dir / "meta.properties").is_file():
                self._format_storage(java, classpath, config_path, deadline, log_file)
            self._process = subprocess.Popen(
                [java, *self._jvm_options(), "-cp", classpath, "kafka.Kafka", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                # Own session: a Ctrl-C in the terminal reaches Python, which then
                # stops the broker in order, instead of both racing.
                start_new_session=True,
                preexec_fn=die_with_parent_preexec(),
            )
        self._until_ready(lambda: wait_for_broker(
            self.bootstrap,
            max(1.0, deadline - time.monotonic()),
            is_alive=self.is_running,
            log_path=self._log_path,
            client_options=self.client_options(),
        ))
        return self

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<LocalKafka {self._port and self.bootstrap} {state} workdir={self._workdir}>"

    # -- internals

    @property
    def _data_dir(self) -> Path:
        return self._workdir / "data"

    def _remove_own_files(self) -> None:
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _jvm_options(self) -> list[str]:
        return [*JVM_OPTIONS, f"-Dlog4j2.configurationFile={self._workdir / 'log4j2.properties'}"]

    def _write_config(self) -> Path:
        """(Re)write server.properties and log4j2.properties; the ports are
        fixed for the object's life, so a restart sees the same addresses."""
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static quorum: format needs no --standalone, and the voter address
            # is not stored in the metadata log.
            "controller.quorum.voters": f"1@{LOOPBACK}:{self._controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self._port},CONTROLLER://{LOOPBACK}:{self._controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self._port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._data_dir),
            **TEST_BROKER_SETTINGS,
        }
        if self._security is not None:
            assert self._port is not None and self._controller_port is not None, "ports are picked before"
            settings.update(self._security.server_properties(LOOPBACK, self._port, self._controller_port))
        config_path = self._workdir / "server.properties"
        config_path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        (self._workdir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        return config_path

    def _format_storage(
        self, java: str, classpath: str, config_path: Path, deadline: float, log_file: IO[bytes]
    ) -> None:
        cluster_id = _random_cluster_id()
        result = subprocess.run(
            [java, *self._jvm_options(), "-cp", classpath, "kafka.tools.StorageTool",
             "format", "-t", cluster_id, "-c", str(config_path),
             *(self._security.format_arguments() if self._security is not None else ())],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=max(1.0, deadline - time.monotonic()),
        )
        if result.returncode != 0:
            log_file.flush()
            raise BrokerError(
                f"formatting Kafka storage in {self._data_dir} failed (exit {result.returncode}); "
                f"broker log: {self._log_path}{_log_tail(self._log_path)}"
            )


def _random_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64.  Like Kafka's own
    Uuid.randomUuid() it never starts with '-', which the command line would
    take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------
# python -m app.dev.kafka


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.dev.kafka",
        description="Run a local single-node Kafka broker on 127.0.0.1 until SIGINT/SIGTERM.",
    )
    parser.add_argument("--fetch-only", action="store_true", help="only fetch the broker jars into the cache")
    parser.add_argument("--workdir", type=Path, help="keep data here (default: a temporary directory)")
    parser.add_argument("--port", type=int, help="client port (default: a free one)")
    parser.add_argument("--log", type=Path, help="broker log file (default: <workdir>/broker.log)")
    args = parser.parse_args(argv)

    if args.fetch_only:
        print(ensure_kafka_jars())
        return 0

    started = time.monotonic()
    kafka = LocalKafka(workdir=args.workdir, port=args.port, log_path=args.log)

    def announce() -> None:
        print(kafka.bootstrap, flush=True)
        print(f"Kafka {kafka_version()} ready in {time.monotonic() - started:.1f}s; log: {kafka.log_path}",
              file=sys.stderr, flush=True)

    return serve_until_signalled(kafka, announce, lambda: f"broker exited; see {kafka.log_path}")


if __name__ == "__main__":
    sys.exit(main())
