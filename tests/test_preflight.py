"""An unreachable broker stops start-up with a message naming ACCOUNTANT_BROKER
and what was tried, instead of aiokafka's "Unable to bootstrap" traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support import REPO


def test_an_unreachable_broker_names_the_setting_and_what_was_tried() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = holder.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("ACCOUNTANT_")}
        env.update(ACCOUNTANT_BROKER=f"127.0.0.1:{port},localhost:{port}", ACCOUNTANT_KAFKA_CONNECT_TIMEOUT_SECS="1",
                   ACCOUNTANT_LOG_FORMAT="text")
        result = subprocess.run([sys.executable, "-m", "app.cli", "worker"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Kafka start-up check failed (tried for 1 s; ACCOUNTANT_KAFKA_CONNECT_TIMEOUT_SECS)" in result.stderr
    assert f"ACCOUNTANT_BROKER: 127.0.0.1:{port}: cannot connect (connection refused)" in result.stderr
    assert f"ACCOUNTANT_BROKER: localhost:{port}: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr and "Unable to bootstrap" not in result.stderr, result.stderr
