"""The ``$registry`` schema and the in-memory view of one organisation's registry.

Everything lives on the broker as retained msgpack records (docs/registry.md)::

    {root}/{org}/{shard}/device/{device_id}            static record (name, type, metadata)
    {root}/{org}/{shard}/status/{device_id}            status, last_seen, bound session
    {root}/{org}/{shard}/metrics/{device_id}/{writer}  counters of one device-bound client_id
    {root}/{org}/{shard}/client/{client_id}            live sessions of one MQTTClient
    {root}/{org}/{shard}/topics/{writer}               topic counters of one session client_id
    {root}/{org}/marker/{client_id}                    sync markers (never retained)

``shard`` is two hex digits (crc32 of the record's key mod 64), so a client can fetch a
large registry in 64 slices that each stay far below a broker's queue limit. Every
record has one writer at a time (a client_id is unique among live connections), so
concurrent writers never overwrite each other's counts. This module is pure: it builds
topics and records and answers queries from the records it has been given.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._codec import decode_record, encode_record
from ._errors import InvalidDeviceIdError, RegistryError
from ._topics import DISCOURAGED, matches
from ._types import DeviceStatus

SHARDS = 64
MAX_PART_BYTES = 128
SERIES_MINUTES = 60
"""Per-minute metrics kept per writer (the window of message_rate / error_rate)."""
MAX_TOPICS_PER_WRITER = 1_000
"""Topics one writer keeps counts for; the least recently used one is evicted beyond this."""
KINDS = ("device", "status", "metrics", "client", "topics")


def check_path_part(value: object, what: str = "device_id") -> str:
    """A registry path part: non-empty str without ``/ + #``, NUL or control characters,
    not starting with ``$`` (reserved for broker topics), at most 128 UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        raise InvalidDeviceIdError(f"{what} must be a non-empty str, not {value!r}")
    bad = sorted({c for c in value if c in "/+#\x00"} | set(DISCOURAGED.findall(value)))
    if bad:
        raise InvalidDeviceIdError(f"{what} {value!r} contains {bad!r}; '/', '+', '#', NUL "
                                   "and control characters cannot be used in a topic level")
    if value.startswith("$"):
        raise InvalidDeviceIdError(f"{what} {value!r} starts with '$', which brokers reserve "
                                   "for their own topics")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES:
        raise InvalidDeviceIdError(f"{what} {value[:20]!r}... is longer than {MAX_PART_BYTES} "
                                   "UTF-8 bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDeviceIdError(f"{what} {value!r} is not valid UTF-8") from None
    return value


def shard_of(key: str) -> str:
    """The shard level of a record keyed by ``key``."""
    return f"{zlib.crc32(key.encode('utf-8')) % SHARDS:02x}"


def iso(ts: float | None) -> str | None:
    """Unix time as ISO 8601 UTC (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def minute(ts: float) -> int:
    return int(ts // 60 * 60)


@dataclass(frozen=True, slots=True)
class Schema:
    """Topic names of one organisation's registry."""

    root: str
    """``{registry_root}/{organization_id}``."""

    def shard_filters(self) -> list[str]:
        return [f"{self.root}/{s:02x}/#" for s in range(SHARDS)]

    def device(self, device_id: str) -> str:
        return f"{self.root}/{shard_of(device_id)}/device/{device_id}"

    def status(self, device_id: str) -> str:
        return f"{self.root}/{shard_of(device_id)}/status/{device_id}"

    def metrics(self, device_id: str, writer: str) -> str:
        return f"{self.root}/{shard_of(device_id)}/metrics/{device_id}/{writer}"

    def client(self, client_id: str) -> str:
        return f"{self.root}/{shard_of(client_id)}/client/{client_id}"

    def topics(self, writer: str) -> str:
        return f"{self.root}/{shard_of(writer)}/topics/{writer}"

    def marker(self, client_id: str) -> str:
        return f"{self.root}/marker/{client_id}"

    def parse(self, topic: str) -> tuple[str, tuple[str, ...]] | None:
        """``(kind, key parts)`` of a record topic of this organisation, else None."""
        if not topic.startswith(self.root + "/"):
            return None
        parts = topic[len(self.root) + 1:].split("/")
        if len(parts) < 3 or len(parts[0]) != 2 or parts[1] not in KINDS \
                or len(parts) != (4 if parts[1] == "metrics" else 3) or not all(parts[2:]):
            return None
        return parts[1], tuple(parts[2:])


@dataclass(slots=True)
class Counters:
    """What one session measured, kept until it is flushed into the registry.

    ``topics`` maps a broker topic to ``[messages published, last publish time]``;
    ``series`` maps a minute (unix seconds) to ``[sent, received, errors]``.
    """

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: int = 0
    topics: dict[str, list[float]] = field(default_factory=dict)
    days: dict[str, list[int]] = field(default_factory=dict)
    series: dict[int, list[int]] = field(default_factory=dict)
    dirty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_records(cls, metrics: Mapping[str, Any] | None,
                     topics: Mapping[str, Any] | None) -> Counters:
        """Continue from what an earlier session with the same client_id flushed."""
        c = cls()
        if metrics:
            c.messages_sent = int(metrics.get("messages_sent", 0))
            c.messages_received = int(metrics.get("messages_received", 0))
            c.bytes_sent = int(metrics.get("bytes_sent", 0))
            c.bytes_received = int(metrics.get("bytes_received", 0))
            c.errors = int(metrics.get("errors", 0))
            c.series = {int(m): list(v) for m, v in metrics.get("series", [])}
        if topics:
            c.topics = {t: list(v) for t, v in dict(topics.get("topics", {})).items()}
            c.days = {d: list(v) for d, v in dict(topics.get("days", {})).items()}
        return c

    def sent(self, topic: str, nbytes: int, now: float) -> None:
        with self.lock:
            self.messages_sent += 1
            self.bytes_sent += nbytes
            entry = self.topics.pop(topic, None) or [0, 0.0]
            entry[0] += 1
            entry[1] = now
            self.topics[topic] = entry  # re-inserted last: dict order is recency
            if len(self.topics) > MAX_TOPICS_PER_WRITER:
                del self.topics[next(iter(self.topics))]
            self._bump(now, 0)
            self.dirty = True

    def received(self, nbytes: int, now: float) -> None:
        with self.lock:
            self.messages_received += 1
            self.bytes_received += nbytes
            self._bump(now, 1)
            self.dirty = True

    def failed(self, now: float) -> None:
        with self.lock:
            self.errors += 1
            self._bump(now, 2)
            self.dirty = True

    def _bump(self, now: float, slot: int) -> None:
        bucket = self.series.get(minute(now))
        if bucket is None:
            bucket = self.series[minute(now)] = [0, 0, 0]
            cutoff = minute(now) - SERIES_MINUTES * 60
            for stale in [m for m in self.series if m <= cutoff]:
                del self.series[stale]
        bucket[slot] += 1
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        counts = self.days.get(day)
        if counts is None:
            counts = self.days[day] = [0, 0]
            for old in sorted(self.days)[:-2]:  # today and yesterday
                del self.days[old]
        if slot < 2:
            counts[slot] += 1

    def metrics_fields(self, device_id: str, writer: str) -> dict[str, Any]:
        with self.lock:
            return {"device_id": device_id, "writer": writer,
                    "messages_sent": self.messages_sent,
                    "messages_received": self.messages_received,
                    "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                    "errors": self.errors, "series": sorted(self.series.items()),
                    "updated_at": time.time()}

    def topics_fields(self, writer: str) -> dict[str, Any]:
        with self.lock:
            return {"writer": writer, "topics": dict(self.topics),
                    "days": dict(self.days), "updated_at": time.time()}


class RegistryView:
    """The records of one organisation as last seen on the broker, with indexes."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.lock = threading.RLock()
        self.devices: dict[str, dict[str, Any]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, dict[str, dict[str, Any]]] = {}
        self.clients: dict[str, dict[str, Any]] = {}
        self.topics: dict[str, dict[str, Any]] = {}
        self.bad_records = 0
        self._sorted_ids: list[str] | None = None

    def clear(self) -> None:
        with self.lock:
            for table in (self.devices, self.status, self.metrics, self.clients, self.topics):
                table.clear()
            self._sorted_ids = None

    def apply(self, topic: str, payload: bytes) -> None:
        """Apply one record (an empty payload deletes it)."""
        parsed = self.schema.parse(topic)
        if parsed is None:
            return
        kind, key = parsed
        record: dict[str, Any] | None = None
        if payload:
            try:
                record = decode_record(payload)
            except RegistryError:
                self.bad_records += 1
                return
        with self.lock:
            if kind == "metrics":
                if len(key) != 2:
                    return
                writers = self.metrics.setdefault(key[0], {})
                _put(writers, key[1], record)
                if not writers:
                    del self.metrics[key[0]]
                return
            table = {"device": self.devices, "status": self.status,
                     "client": self.clients, "topics": self.topics}[kind]
            if kind == "device" and (key[0] in self.devices) != (record is not None):
                self._sorted_ids = None
            _put(table, key[0], record)

    # -- queries (lock held by the caller or atomic reads) --------------------------------
    def device_ids(self) -> list[str]:
        with self.lock:
            if self._sorted_ids is None:
                self._sorted_ids = sorted(self.devices)
            return self._sorted_ids

    def device_status(self, device_id: str) -> int:
        record = self.status.get(device_id)
        return int(record.get("status", 0)) if record else int(DeviceStatus.UNKNOWN)

    def live_sessions(self) -> Iterable[dict[str, Any]]:
        """Connected sessions advertised by live MQTTClients of the organisation."""
        with self.lock:
            clients = list(self.clients.values())
        for client in clients:
            for session in client.get("sessions", []):
                if session.get("connected"):
                    yield session

    def subscriber_count(self, broker_topic: str) -> int:
        return sum(1 for s in self.live_sessions()
                   if any(matches(f, broker_topic) for f in s.get("subscriptions", [])))


def _put(table: dict[str, dict[str, Any]], key: str, record: dict[str, Any] | None) -> None:
    if record is None:
        table.pop(key, None)
    else:
        table[key] = record


def device_record(device_id: str, name: str, device_type: str, metadata: Mapping[str, Any],
                  registered_at: float, user_id: str) -> bytes:
    return encode_record("device", {"device_id": device_id, "device_name": name,
                                    "device_type": device_type, "metadata": dict(metadata),
                                    "registered_at": registered_at, "registered_by": user_id,
                                    "updated_at": time.time()})


def status_record(device_id: str, status: int, last_seen: float, session: str | None,
                  reason: str) -> bytes:
    return encode_record("status", {"device_id": device_id, "status": int(status),
                                    "last_seen": last_seen, "session": session,
                                    "reason": reason, "updated_at": time.time()})
