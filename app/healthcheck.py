"""`python -m app.healthcheck [--ledger]`: exit 0 when this container's worker
(or, with --ledger, its ledger process) answers /healthz with 200, else 1
(Docker's HEALTHCHECK; the image has no curl).

It asks the port the process binds (ACCOUNTANT_WEB_HOST/PORT, or
ACCOUNTANT_LEDGER_WEB_HOST/PORT), on loopback when it binds every interface.
/healthz needs no API token. A worker whose event loop is blocked answers
nothing: the timeout below fails it, as the orchestrator's would.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.settings import Settings, load_settings

#: Below the image's HEALTHCHECK --timeout (5 s), so the exit code says why.
PROBE_TIMEOUT_SECS = 4.0
#: A wildcard bind is reached through the loopback address of its family.
LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}


def healthz_url(settings: Settings, *, ledger: bool = False) -> str:
    host, port = (settings.ledger_web_host, settings.ledger_web_port) if ledger else (settings.web_host,
                                                                                       settings.web_port)
    host = LOOPBACK_FOR.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main(arguments: list[str]) -> int:
    if arguments not in ([], ["--ledger"]):
        print("usage: python -m app.healthcheck [--ledger]", file=sys.stderr)
        return 2
    url = healthz_url(load_settings(), ledger=arguments == ["--ledger"])
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_SECS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
