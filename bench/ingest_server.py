"""`POST /events` in a process of its own, for the ingest benchmark
(bench/ingest.py): the API's handler, middleware and producer
(tests/support/ingest.py), token on, on 127.0.0.1:

    python -m bench.ingest_server BOOTSTRAP TOPIC PORT TOKEN

Prints "ready" once it listens and its producer has reached the broker (before,
it answers 503); SIGTERM stops it. Metrics and the concurrency cap are on, as
on a worker.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from app.web.ingest import IngestSettings
from tests.support.ingest import INGEST_PRODUCER, ingest_application


async def serve(bootstrap: str, topic: str, port: int, token: str) -> None:
    app = ingest_application(bootstrap, IngestSettings(topic=topic), token=token,
                             client_options={"client_id": "bench-ingest"})
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    while app[INGEST_PRODUCER].producer is None:
        await asyncio.sleep(0.05)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    bootstrap, topic, port, token = sys.argv[1:5]
    asyncio.run(serve(bootstrap, topic, int(port), token))
