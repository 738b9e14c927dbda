"""Fixtures of the gateway-side tests (schemas, publisher, HTTP ingest)."""

from tests.faults.conftest import private_kafka  # noqa: F401  (re-exported: a broker a test may stop)

# Until app/web.py becomes the package app/web/ (house helper), app/web/ingest.py
# is reached through the module's __path__. Remove once the package is merged.
import app.web  # noqa: E402
from pathlib import Path  # noqa: E402

if not hasattr(app.web, "__path__"):
    app.web.__path__ = [str(Path(app.web.__file__).with_suffix(""))]
