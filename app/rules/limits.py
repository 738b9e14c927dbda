"""Bounds on what the rules accept and keep, and the configurable `Policy`."""

from __future__ import annotations

from app.rules.timestamps import SECOND, Micros
from app.rules.values import value

MAX_COUNT = 2**63 - 1
MAX_TTL_SECS = 2**32
MAX_ID_CHARS = 128
#: provider_id, model and a close reason: the spec sets no bound, but each is
#: copied into the record, the changelog and the closure, and an unbounded one
#: (1 MB) made those exceed Kafka's request size and crashed the worker.
MAX_NAME_CHARS = 1024
# orjson encodes at most 254 levels of nesting, and a creation's metadata ends
# up a few levels down in what is encoded (rejection -> event -> metadata), so
# deeper metadata is refused, and deeper invalid events are kept as raw bytes.
MAX_JSON_DEPTH = 128
#: A rejection is published whole up to this size (SPEC §7). A bigger one (of
#: a record of about a megabyte) would pass Faust's `producer_max_request_size`
#: (1,000,000 bytes) and the broker's ~1 MiB record limit: the send raised,
#: the agent crashed and the event was dropped without a rejection (found by
#: tests/faults, the poison corpus). So it carries the first RAW_PREFIX_BYTES
#: of the record in `raw` instead of the event, with `raw_truncated` and
#: `raw_size`.
MAX_REJECTION_BYTES = 256 * 1024
RAW_PREFIX_BYTES = 64 * 1024


@value
class Policy:
    """The configurable knobs of the rules (SPEC §5)."""

    grace: Micros = 5 * SECOND
    max_clock_skew: Micros = 300 * SECOND
    retention: Micros = 3600 * SECOND
    metadata_max_bytes: int = 16 * 1024
    #: Missing-round ranges kept per session (SPEC §5.3); 0 gives every gap up
    #: at once, as before revision 2. 1,000 ranges take about 20 KB in the
    #: changelog value, far below Kafka's 1 MB record limit.
    max_missing_ranges: int = 1000


DEFAULT_POLICY = Policy()
