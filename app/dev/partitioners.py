"""The partition a gateway's Kafka client sends a keyed record to.

Gateways key events by session id, and which partition a key lands on
depends on their client: murmur2 in the Java client and aiokafka, CRC32 in
librdkafka's default partitioner. The simulator, the tests and the
benchmarks choose partitions with these, as a gateway would.
"""

from __future__ import annotations

import zlib
from typing import Literal

from aiokafka.partitioner import murmur2

__all__ = ["Partitioner", "partition_for"]

Partitioner = Literal["murmur2", "crc32"]


def partition_for(key: bytes, partitions: int, partitioner: Partitioner = "murmur2") -> int:
    """The partition a keyed record goes to: murmur2 as the Java client and
    aiokafka do, or CRC32 as librdkafka's default partitioner does."""
    if partitioner == "crc32":
        return zlib.crc32(key) % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions
