"""`python -m app.healthcheck`: exit 0 when this container's worker answers
/healthz with 200, else 1 (Docker's HEALTHCHECK; the image has no curl).

It asks the port the worker binds (ACCOUNTANT_WEB_HOST/PORT), on loopback
when the worker binds every interface. /healthz needs no API token.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.settings import Settings, load_settings

#: A wildcard bind is reached through the loopback address of its family.
LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}


def healthz_url(settings: Settings) -> str:
    host = LOOPBACK_FOR.get(settings.web_host, settings.web_host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}/healthz"


def main() -> int:
    url = healthz_url(load_settings())
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
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
    sys.exit(main())
