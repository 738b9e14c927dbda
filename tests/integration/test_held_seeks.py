"""Issue 20's loss, reproduced on purpose: every seek of the input is held
for a second while the consumer thread keeps draining fetches
(tests/support/held_seeks.py), and workers join and leave the group while
events flow. Before the fix, a fetch drained in that window moved the
position the read start was then taken from, and the events between the
committed offset and it were committed past unaccounted: sessions closed
short by the rounds in those ranges.

Every closure must be exact, and the held window must have been crossed:
fetches drained in it are dropped as stale (`accountant_stale_fetches`) or
refused (`accountant_refused_fetches`), never accounted.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from tests.integration.test_recovery import assert_closures_exact, make_sessions
from tests.support.deployment import Deployment
from tests.support.kafka import produce_events
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

HELD_WORKER = ["-m", "tests.support.held_seeks", "worker"]


def dropped_fetches(worker: WorkerProcess) -> int:
    status, text = worker.get("/metrics")
    assert status == 200
    return sum(int(float(value)) for value in re.findall(
        r"^accountant_(?:stale|refused)_fetches_total (\S+)$", str(text), re.MULTILINE))


def test_events_fetched_while_a_seek_is_held_are_all_accounted(deployment: Deployment, guarantee: str) -> None:
    deployment.settings["ACCOUNTANT_PROCESSING_GUARANTEE"] = guarantee
    deployment.create_topics()
    first = deployment.worker("first", command=HELD_WORKER).start().wait_ready()
    # About 21,000 events at up to about 650 a second: input flows through both
    # group changes below, so every held seek has fetches to drain.
    events, expected = make_sessions("held", 3000, seed=20)
    sent = threading.Event()

    def publish_steadily() -> None:
        for start in range(0, len(events), 200):
            produce_events(deployment.bootstrap, deployment.events_topic, events[start:start + 200])
            time.sleep(0.3)
        sent.set()

    publisher = threading.Thread(target=publish_steadily, daemon=True)
    publisher.start()
    second = deployment.worker("second", command=HELD_WORKER).start().wait_ready()
    first.wait_ready()
    dropped = dropped_fetches(second)
    second.stop()  # the group changes again while events flow
    first.wait_ready()
    assert not sent.is_set(), "the input stopped before the group changed: nothing was in flight at the seeks"
    assert sent.wait(120), "the publisher did not finish"
    publisher.join()

    figures = assert_closures_exact(deployment, expected, timeout=120)
    assert figures["sessions"] == len(expected)
    dropped += dropped_fetches(first)
    assert dropped > 0, "no fetch was drained while a seek was held: the window was not crossed"
