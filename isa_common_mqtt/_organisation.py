"""Organisation: the registry operations of one organisation, over the client's control session.

Reads come from a live :class:`RegistryView`, synced slice by slice with completion
markers on first use and kept current by the same subscriptions. Writes are retained
QoS 1 publishes that return once the broker acknowledged them; the writer applies them to
its own view at once. Sessions of the client are tracked here: their traffic counters,
their advertised subscriptions, and the ONLINE/OFFLINE status of a bound device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ._codec import decode_record, encode_json, encode_record
from ._errors import (
    AuthorizationError,
    DeviceNotFoundError,
    InvalidArgumentError,
    MQTTClientError,
    ProtocolNotSupportedError,
)
from ._options import ClientOptions
from ._pending import Will
from ._registry import (
    Counters,
    RegistryView,
    Schema,
    check_path_part,
    device_record,
    iso,
    status_record,
)
from ._session import Session
from ._snapshot import MarkerChannel
from ._stats import read_broker_stats
from ._topics import TopicPrefix
from ._types import DeviceStatus, Message

logger = logging.getLogger(__name__)

MQTT5 = 5
MAX_PAGE_SIZE = 1_000
SYNC_WINDOW = 4
"""Registry slices (of 64) whose snapshots may be in flight at once during a sync."""
ADVERTISE_DELAY = 0.1
"""Seconds a change of this client's sessions may wait before their record is written."""
TRACK_READ_CHUNK = 200
"""Counter records read back per SUBSCRIBE when many sessions start being tracked."""


def _check_page(page: object, page_size: object) -> tuple[int, int]:
    if type(page) is not int or page < 1:
        raise InvalidArgumentError(f"page must be an int >= 1, not {page!r}")
    if type(page_size) is not int or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"page_size must be an int in 1..{MAX_PAGE_SIZE}, "
                                   f"not {page_size!r}")
    return page, page_size


def _check_status(status: object) -> DeviceStatus:
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 4:
        raise InvalidArgumentError(f"status must be 0..4 (DeviceStatus), not {status!r}")
    return DeviceStatus(status)


def _check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgumentError("metadata must be a dict with str keys")
    encode_json(dict(metadata))  # raises InvalidPayloadError for values that cannot travel
    return dict(metadata)


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidArgumentError(f"{what} must be a non-empty str of at most 256 characters, "
                                   f"not {value!r}")
    return value


def _unix(value: datetime | float | int | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidArgumentError(f"{what} must be a datetime or unix time, not {value!r}")


class _Tracked:
    """A session of this client whose traffic is counted into the registry."""

    __slots__ = ("counters", "device_id", "session")

    def __init__(self, session: Session, device_id: str | None, counters: Counters) -> None:
        self.session = session
        self.device_id = device_id
        self.counters = counters


class Organisation:
    """Registry operations of one organisation (see module docstring)."""

    def __init__(self, control: Session, markers: MarkerChannel, options: ClientOptions,
                 organization_id: str, user_id: str, prefix: TopicPrefix,
                 sessions: Mapping[str, Session]) -> None:
        self.control = control
        self.markers = markers
        self.options = options
        self.organization_id = organization_id
        self.user_id = user_id
        self.prefix = prefix
        self.schema = Schema(f"{options.registry_root}/{organization_id}")
        self.view = RegistryView(self.schema)
        self.synced = False
        self._sync_lock = threading.Lock()
        self._own: dict[str, bytes] = {}
        self._tracked: dict[int, _Tracked] = {}
        self._sessions = sessions
        """The client's live sessions (its own dict, read when advertising them)."""
        self._last_client_record = b""
        self._advert_due = False
        self._advert_lock = threading.Lock()
        self._advert_write_lock = threading.Lock()
        self._closed = False
        control.on_state = self._control_state
        self._schedule_flush()

    # == sync ============================================================================
    def _on_record(self, message: Message) -> None:
        own = self._own.get(message.topic)
        if own is not None:
            if own != message.payload:
                return  # an echo of an older write of ours; the newest one is applied
            del self._own[message.topic]
        self.view.apply(message.topic, message.payload)

    def ensure_synced(self) -> RegistryView:
        """Make the view complete (64 slices, each with a marker) on first use."""
        self.advertise()  # our own reads see our own session changes
        if self.synced:
            return self.view
        with self._sync_lock:
            if not self.synced:
                started = time.perf_counter()
                self._sync()
                self.synced = True
                logger.info("registry %s synced in %.3f s (%d devices)", self.schema.root,
                            time.perf_counter() - started, len(self.view.devices))
        return self.view

    def _sync(self) -> None:
        flavour = self.control.capabilities.flavour
        if flavour == "rabbitmq":
            raise ProtocolNotSupportedError(
                "this broker (RabbitMQ's MQTT plugin) sends retained messages only to "
                "exact-topic subscriptions, so clients cannot read the shared registry; "
                "use Mosquitto or NATS for the registry (docs/compatibility.md)")
        timeout = self.options.request_timeout
        if flavour != "nats":
            try:
                # no_local (MQTT 5): our own writes are applied at once, no echo needed.
                self.markers.sync_slices(self.schema.shard_filters(), self._on_record,
                                         window=SYNC_WINDOW, timeout=timeout,
                                         what="registry records", no_local=True)
                return
            except AuthorizationError as exc:
                logger.info("registry slices refused (%s); syncing in one subscription", exc)
                self.control.unsubscribe([f for f in self.schema.shard_filters()
                                          if f in self.control.subscriptions], timeout=timeout)
        # One subscription for everything: brokers that cap subscriptions per session
        # (NATS: 64 QoS 1 subscriptions exceed its JetStream consumer budget).
        self.markers.sync([f"{self.schema.root}/#"], self._on_record, keep=True,
                          timeout=timeout, what="registry records")

    def _control_state(self, session: Session) -> None:
        if not session.connected:
            self.synced = False  # deletions during the outage would be missed: sync again
            self.view.clear()
            self._own.clear()
        else:
            self._last_client_record = b""
            self.sessions_changed()

    def _apply_own(self, topic: str, payload: bytes) -> None:
        """Show our own write at once; under MQTT 3.1.1 its echo comes back later (MQTT 5
        subscribes with no_local: no echo), and echoes of older writes must not win."""
        if self.synced and self.control.protocol != MQTT5:
            self._own[topic] = payload
        self.view.apply(topic, payload)

    def _write(self, topic: str, payload: bytes, wait: bool = True) -> None:
        self._write_all([(topic, payload)], wait)

    def _write_all(self, writes: list[tuple[str, bytes]], wait: bool = True) -> None:
        """Write retained records (QoS 1), pipelined; wait for their PUBACKs if asked."""
        for topic, payload in writes:
            self._apply_own(topic, payload)
        try:
            waiter, outs = self.control.publish([(t, p, 1, True) for t, p in writes],
                                                raise_errors=True)
            if wait:
                self.control.wait_published(waiter, outs, None)
        except MQTTClientError:
            self.synced = False  # the view holds a write the broker refused: read it again
            self.view.clear()
            self._own.clear()
            raise

    def health(self) -> dict[str, Any]:
        view = self.ensure_synced()
        return {"synced": self.synced, "devices": len(view.devices),
                "unreadable_records": view.bad_records}

    # == devices =========================================================================
    def register(self, device_id: str, name: str, device_type: str,
                 metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        device_id = check_path_part(device_id)
        name = _check_text(name, "device_name")
        device_type = _check_text(device_type, "device_type")
        meta = _check_metadata(metadata)
        view = self.ensure_synced()
        existing = view.devices.get(device_id)
        registered_at = float(existing["registered_at"]) if existing else time.time()
        self._write(self.schema.device(device_id),
                    device_record(device_id, name, device_type, meta, registered_at,
                                  self.user_id))
        return self._device_dict(device_id)

    def register_many(self, devices: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Register many devices with one pipelined batch of writes (see register)."""
        view = self.ensure_synced()
        writes: list[tuple[str, bytes]] = []
        errors: list[dict[str, Any]] = []
        for index, device in enumerate(devices):
            try:
                if not isinstance(device, Mapping):
                    raise InvalidArgumentError(f"device must be a dict, not {device!r}")
                device_id = check_path_part(device.get("device_id"))
                name = _check_text(device.get("device_name"), "device_name")
                device_type = _check_text(device.get("device_type", "sensor"), "device_type")
                meta = _check_metadata(device.get("metadata"))
            except InvalidArgumentError as exc:
                errors.append({"index": index, "device_id": device.get("device_id")
                               if isinstance(device, Mapping) else None, "error": str(exc)})
                continue
            existing = view.devices.get(device_id)
            registered_at = float(existing["registered_at"]) if existing else time.time()
            writes.append((self.schema.device(device_id),
                           device_record(device_id, name, device_type, meta, registered_at,
                                         self.user_id)))
        for topic, payload in writes:
            self._apply_own(topic, payload)
        waiter, outs = self.control.publish([(t, p, 1, True) for t, p in writes],
                                            raise_errors=False)
        self.control.wait_published(waiter, outs, None, raise_first=False)
        for index, error in sorted(waiter.errors.items()):
            errors.append({"index": index, "device_id": writes[index][0].rsplit("/", 1)[-1],
                           "error": str(error)})
        return {"success": not errors, "registered_count": len(writes) - len(waiter.errors),
                "failed_count": len(errors), "errors": errors}

    def unregister(self, device_id: str) -> bool:
        device_id = check_path_part(device_id)
        view = self.ensure_synced()
        if device_id not in view.devices:
            return False
        topics = [self.schema.device(device_id), self.schema.status(device_id)]
        topics += [self.schema.metrics(device_id, w) for w in view.metrics.get(device_id, {})]
        for topic in topics:
            self._write(topic, b"")
        return True

    def require(self, device_id: str) -> dict[str, Any]:
        device_id = check_path_part(device_id)
        record = self.ensure_synced().devices.get(device_id)
        if record is None:
            raise DeviceNotFoundError(device_id, self.organization_id)
        return record

    def update_status(self, device_id: str, status: object,
                      metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        value = _check_status(status)
        meta = _check_metadata(metadata)
        record = self.require(device_id)
        if meta:
            merged = {**record.get("metadata", {}), **meta}
            self._write(self.schema.device(device_id),
                        device_record(device_id, record["device_name"], record["device_type"],
                                      merged, float(record["registered_at"]), self.user_id))
        current = self.view.status.get(device_id) or {}
        self._write(self.schema.status(device_id),
                    status_record(device_id, value, time.time(), current.get("session"),
                                  "update_device_status"))
        return self._device_dict(device_id)

    def device_info(self, device_id: str) -> dict[str, Any] | None:
        device_id = check_path_part(device_id)
        if device_id not in self.ensure_synced().devices:
            return None
        return self._device_dict(device_id)

    def list_devices(self, status: object, page: object, page_size: object) -> dict[str, Any]:
        page, page_size = _check_page(page, page_size)
        wanted = None if status is None else _check_status(status)
        view = self.ensure_synced()
        ids = view.device_ids()
        if wanted is not None:
            ids = [i for i in ids if view.device_status(i) == wanted]
        start = (page - 1) * page_size
        subscribed = self._subscriptions_by_device()
        return {"devices": [self._device_dict(i, subscribed)
                            for i in ids[start:start + page_size]],
                "total_count": len(ids), "page": page, "page_size": page_size}

    def _subscriptions_by_device(self) -> dict[str, list[str]]:
        """User filters of the live device-bound sessions, by device (one pass)."""
        found: dict[str, set[str]] = {}
        for session in self.view.live_sessions():
            if session.get("device_id"):
                found.setdefault(session["device_id"], set()).update(
                    self.prefix.strip(f) for f in session.get("subscriptions", []))
        return {device: sorted(filters) for device, filters in found.items()}

    def _device_dict(self, device_id: str,
                     subscribed: dict[str, list[str]] | None = None) -> dict[str, Any]:
        view = self.view
        with view.lock:
            record = view.devices[device_id]
            status = view.status.get(device_id) or {}
        totals = self._metric_totals(device_id)
        if subscribed is None:
            subscribed = self._subscriptions_by_device()
        value = int(status.get("status", DeviceStatus.UNKNOWN))
        return {"device_id": device_id, "device_name": record["device_name"],
                "device_type": record["device_type"], "status": value,
                "status_name": DeviceStatus(value).name,
                "registered_at": iso(record.get("registered_at")),
                "last_seen": iso(status.get("last_seen")), "metadata": record.get("metadata", {}),
                "subscribed_topics": subscribed.get(device_id, []),
                "session": status.get("session"),
                "messages_sent": totals["messages_sent"],
                "messages_received": totals["messages_received"],
                "bytes_sent": totals["bytes_sent"], "bytes_received": totals["bytes_received"]}

    # == sessions ========================================================================
    def device_will(self, device_id: str) -> Will:
        """The Last Will that marks ``device_id`` OFFLINE when its session dies."""
        payload = status_record(device_id, DeviceStatus.OFFLINE, time.time(), None, "last will")
        return Will(self.schema.status(device_id), payload, 1, True)

    def track(self, sessions: Sequence[tuple[Session, str | None]]) -> None:
        """Count the sessions' traffic (each bound to its device, if any) in the registry,
        carrying on from the counters an earlier run of the same client_id left."""
        for _, device_id in sessions:
            if device_id is not None:
                self.require(device_id)
        previous: dict[str, Message] = {}

        def collect(message: Message) -> None:
            if message.retained:
                previous[message.topic] = message

        topics = [self.schema.topics(session.client_id) for session, _ in sessions]
        for start in range(0, len(topics), TRACK_READ_CHUNK):
            self.markers.sync(topics[start:start + TRACK_READ_CHUNK], collect, keep=False,
                              timeout=self.options.request_timeout, what="traffic counters")
        statuses = []
        now = time.time()
        for session, device_id in sessions:
            writer = session.client_id
            metrics = None
            if device_id is not None:
                metrics = self.view.metrics.get(device_id, {}).get(writer)
                statuses.append((self.schema.status(device_id),
                                 status_record(device_id, DeviceStatus.ONLINE, now, writer,
                                               "session connected")))
            topics_msg = previous.get(self.schema.topics(writer))
            counters = Counters.from_records(
                metrics, decode_record(topics_msg.payload) if topics_msg else None)
            self._tracked[id(session)] = _Tracked(session, device_id, counters)
            session.on_sent = lambda topic, n, c=counters: c.sent(topic, n, time.time())
            session.on_received = lambda topic, n, c=counters: c.received(n, time.time())
        if statuses:
            self._write_all(statuses)

    def untrack(self, session: Session) -> None:
        """Flush a session's counters; mark its device OFFLINE (a clean end sends no will)."""
        tracked = self._tracked.pop(id(session), None)
        if tracked is None:
            return
        try:
            self._flush(tracked, wait=True)
        except MQTTClientError as exc:
            logger.warning("flushing counters of session %s failed: %s", session.client_id, exc)
        try:  # on its own: a device must show OFFLINE even if its counters were refused
            if tracked.device_id is not None:
                self._write(self.schema.status(tracked.device_id),
                            status_record(tracked.device_id, DeviceStatus.OFFLINE, time.time(),
                                          None, "session disconnected"))
        except MQTTClientError as exc:
            logger.warning("registry update for session %s failed: %s", session.client_id, exc)

    def _flush(self, tracked: _Tracked, wait: bool) -> None:
        counters = tracked.counters
        if not counters.dirty:
            return
        counters.dirty = False
        writer = tracked.session.client_id
        if self.options.track_in_registry:
            self._write(self.schema.topics(writer),
                        encode_record("topics", counters.topics_fields(writer)), wait)
        if tracked.device_id is not None:
            self._write(self.schema.metrics(tracked.device_id, writer),
                        encode_record("metrics", counters.metrics_fields(tracked.device_id,
                                                                         writer)), wait)

    def _schedule_flush(self) -> None:
        loop = self.control._loop
        loop.call_later(self.options.metrics_flush_interval,
                        lambda: loop.run_blocking(self._flush_tick))

    def _flush_tick(self) -> None:
        if self._closed:
            return
        for tracked in list(self._tracked.values()):
            try:
                self._flush(tracked, wait=False)
            except MQTTClientError as exc:
                logger.warning("flushing registry counters failed: %s", exc)
        self._schedule_flush()

    def sessions_changed(self) -> None:
        """Note that this client's sessions changed: their record is written shortly, once
        for a whole burst (many connects, a reconnect storm), not once per change."""
        if not self.options.track_in_registry:
            return
        with self._advert_lock:
            if self._advert_due:
                return
            self._advert_due = True
        loop = self.control._loop
        loop.call_later(ADVERTISE_DELAY, lambda: loop.run_blocking(self.advertise))

    def advertise(self) -> None:
        """Write this client's live sessions and their subscriptions (one record), if due."""
        with self._advert_write_lock:  # one writer at a time: the newest state is written last
            with self._advert_lock:
                if not self._advert_due or self._closed:
                    return
                self._advert_due = False
            entries = []
            for session in list(self._sessions.values()):
                tracked = self._tracked.get(id(session))
                entries.append({"client_id": session.client_id, "connected": session.connected,
                                "device_id": tracked.device_id if tracked else None,
                                "connected_at": session.connected_at,
                                "subscriptions": sorted(
                                    f for f, s in session.subscriptions.items()
                                    if s.handler is None)})
            payload = encode_record("client", {"client_id": self.control.client_id,
                                               "user_id": self.user_id, "sessions": entries,
                                               "updated_at": time.time()}) if entries else b""
            if payload == self._last_client_record:
                return
            self._last_client_record = payload
            try:
                self._write(self.schema.client(self.control.client_id), payload, wait=False)
            except MQTTClientError as exc:
                logger.warning("advertising sessions failed: %s", exc)

    def close(self) -> None:
        for tracked in list(self._tracked.values()):
            self.untrack(tracked.session)
        self.advertise()
        self._closed = True

    # == metrics and statistics ==========================================================
    def _writer_records(self, device_id: str) -> list[dict[str, Any]]:
        """Metrics of every writer of the device; this client's live counters replace theirs."""
        local = {t.session.client_id: t.counters.metrics_fields(device_id, t.session.client_id)
                 for t in list(self._tracked.values()) if t.device_id == device_id}
        records = dict(self.view.metrics.get(device_id, {}))
        records.update(local)
        return list(records.values())

    def _metric_totals(self, device_id: str) -> dict[str, int]:
        totals = dict.fromkeys(("messages_sent", "messages_received", "bytes_sent",
                                "bytes_received", "errors"), 0)
        for record in self._writer_records(device_id):
            for key in totals:
                totals[key] += int(record.get(key, 0))
        return totals

    def device_metrics(self, device_id: str, start: datetime | float | None,
                       end: datetime | float | None) -> dict[str, Any]:
        start_ts, end_ts = _unix(start, "start_time"), _unix(end, "end_time")
        device_id = check_path_part(device_id)
        self.require(device_id)
        rate: dict[int, int] = {}
        errors: dict[int, int] = {}
        for record in self._writer_records(device_id):
            for minute_ts, (sent, received, failed) in record.get("series", []):
                if (start_ts is not None and minute_ts + 60 <= start_ts) or \
                        (end_ts is not None and minute_ts > end_ts):
                    continue
                rate[minute_ts] = rate.get(minute_ts, 0) + sent + received
                errors[minute_ts] = errors.get(minute_ts, 0) + failed
        totals = self._metric_totals(device_id)
        return {"device_id": device_id, **{k: totals[k] for k in (
                    "messages_sent", "messages_received", "bytes_sent", "bytes_received")},
                "errors": totals["errors"],
                "message_rate": [(iso(m), rate[m]) for m in sorted(rate)],
                "error_rate": [(iso(m), errors[m]) for m in sorted(errors)]}

    def _topic_records(self) -> list[dict[str, Any]]:
        """Topic counters of every writer; this client's live counters replace theirs."""
        local = {t.session.client_id: t.counters.topics_fields(t.session.client_id)
                 for t in list(self._tracked.values())}
        return list({**self.ensure_synced().topics, **local}.values())

    def _topic_counts(self) -> dict[str, list[float]]:
        """Broker topic -> [messages published, last publish time], over every writer."""
        merged: dict[str, list[float]] = {}
        for record in self._topic_records():
            for topic, (count, last) in record.get("topics", {}).items():
                entry = merged.setdefault(topic, [0, 0.0])
                entry[0] += count
                entry[1] = max(entry[1], last)
        return merged

    def topic_info(self, topic: str) -> dict[str, Any]:
        broker_topic = self.prefix.add(topic)
        count, last = self._topic_counts().get(broker_topic, [0, 0.0])
        retained = self.markers.read_retained(broker_topic, self.options.request_timeout)
        return {"topic": topic, "subscriber_count": self.view.subscriber_count(broker_topic),
                "message_count": int(count), "last_message_time": iso(last) if last else None,
                "has_retained_message": broker_topic in retained}

    def list_topics(self, prefix: object, page: object, page_size: object) -> dict[str, Any]:
        if not isinstance(prefix, str) or "\x00" in prefix or "+" in prefix or "#" in prefix:
            raise InvalidArgumentError(f"prefix must be a str without wildcards, not {prefix!r}")
        page, page_size = _check_page(page, page_size)
        counts = self._topic_counts()
        broker_prefix = self.prefix.add(prefix)
        parent = broker_prefix.rpartition("/")[0]
        retained = self.markers.read_retained(parent + "/#" if parent else "#",
                                              self.options.request_timeout)
        own_root = self.options.registry_root + "/"
        names = {t for t in counts if t.startswith(broker_prefix)}
        names |= {t for t in retained if t.startswith(broker_prefix) and not t.startswith(own_root)}
        ordered = sorted(names)
        start = (page - 1) * page_size
        topics = []
        for name in ordered[start:start + page_size]:
            count, last = counts.get(name, [0, 0.0])
            topics.append({"topic": self.prefix.strip(name),
                           "subscriber_count": self.view.subscriber_count(name),
                           "message_count": int(count),
                           "last_message_time": iso(last) if last else None,
                           "has_retained_message": name in retained})
        return {"topics": topics, "total_count": len(ordered), "page": page,
                "page_size": page_size}

    def broker_stats(self) -> dict[str, Any]:
        return read_broker_stats(self.markers, self.options.request_timeout)

    def statistics(self) -> dict[str, Any]:
        view = self.ensure_synced()
        with view.lock:
            device_types: dict[str, int] = {}
            for record in view.devices.values():
                device_types[record["device_type"]] = device_types.get(record["device_type"], 0) + 1
            online = sum(1 for i in view.devices if view.device_status(i) == DeviceStatus.ONLINE)
        sessions = list(view.live_sessions())
        today = time.strftime("%Y-%m-%d", time.gmtime())
        records = self._topic_records()
        sent = sum(r.get("days", {}).get(today, [0, 0])[0] for r in records)
        received = sum(r.get("days", {}).get(today, [0, 0])[1] for r in records)
        return {"total_devices": len(view.devices), "online_devices": online,
                "total_topics": len(self._topic_counts()),
                "total_subscriptions": sum(len(s.get("subscriptions", [])) for s in sessions),
                "messages_sent_today": sent, "messages_received_today": received,
                "active_sessions": len(sessions), "device_type_distribution": device_types,
                "organization_id": self.organization_id, "broker": self.broker_stats()}
