"""MQTTClient: the methods of the user guide, over sessions, the registry and $SYS.

This module validates arguments, delegates to the session and registry layers, and shapes
their results into the dictionaries the guide documents. It holds no protocol logic.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ._codec import as_bytes, encode_json, encode_msgpack
from ._discovery import ConsulSettings, resolve_endpoints
from ._errors import (
    BrokerConnectionError,
    DeviceNotFoundError,
    InvalidArgumentError,
    InvalidQoSError,
    MQTTClientError,
    UnknownSessionError,
)
from ._opening import open_many
from ._options import ClientOptions
from ._organisation import Organisation
from ._outbox import Outbox
from ._pending import Subscription, Will
from ._registry import Schema, check_path_part, iso
from ._session import Session
from ._snapshot import MarkerChannel
from ._topics import (
    DISCOURAGED,
    TopicPrefix,
    check_filter,
    check_publishable,
    check_topic,
    topic_violations,
)
from ._types import DeviceStatus, Message, MessageCallback

logger = logging.getLogger(__name__)

_live_clients: weakref.WeakSet[MQTTClient] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for client in list(_live_clients):
        try:
            client.close()
        except Exception:  # interpreter exit: never let one client stop the others
            logger.exception("closing MQTTClient at exit failed")


atexit.register(_close_all_at_exit)


def _check_qos(qos: object) -> int:
    if type(qos) is int and 0 <= qos <= 2:
        return qos
    if isinstance(qos, bool) or not isinstance(qos, int):
        raise InvalidQoSError(f"qos must be the int 0, 1 or 2, not {qos!r}")
    raise InvalidQoSError(f"qos must be 0, 1 or 2, not {qos}")


def _valid_client_id(client_id: object) -> bool:
    """A non-empty MQTT string (at most 65,535 UTF-8 bytes, no NUL, surrogates or
    characters the specification discourages)."""
    if not isinstance(client_id, str) or not client_id or "\x00" in client_id \
            or DISCOURAGED.search(client_id):
        return False
    try:
        return len(client_id.encode("utf-8")) <= 65_535
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, not {value!r}")
    return value


class MQTTClient:
    """A client of one MQTT broker: sessions, publishing, subscriptions, device registry.

    Constructing does no I/O; the first call that needs the broker connects. Sessions
    live until ``disconnect()`` or ``close()``; leaving a ``with`` block ends nothing.
    """

    def __init__(self, host: str | None = None, port: int | None = None,
                 user_id: str | None = None, organization_id: str | None = None,
                 **options: Any) -> None:
        self.options = ClientOptions.from_kwargs(options)
        self.host = host
        self.port = port
        self.user_id = user_id or "anonymous"
        self.organization_id = check_path_part(organization_id or "default-org",
                                               "organization_id")
        self._prefix = TopicPrefix(self.options.topic_prefix.replace(
            "{organization_id}", self.organization_id))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.RLock()
        self._control: Session | None = None
        self._markers: MarkerChannel | None = None
        self._registry: Organisation | None = None
        self._durable: Outbox | None = None
        self._consul = ConsulSettings(host=self.options.consul_host,
                                      port=self.options.consul_port,
                                      token=self.options.consul_token,
                                      service=self.options.consul_service)
        self._closed = False
        _live_clients.add(self)

    def __repr__(self) -> str:
        return (f"MQTTClient(host={self.host!r}, port={self.port!r}, user_id={self.user_id!r}, "
                f"organization_id={self.organization_id!r}, sessions={len(self._sessions)})")

    # == lifecycle =======================================================================
    def __enter__(self) -> MQTTClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leaving the block ends nothing: sessions stay until disconnect() or close()."""

    def close(self) -> None:
        """End every session cleanly (no Last Will) after a bounded wait for acknowledgements."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self._sessions)
        for session_id in sessions:
            try:
                self.disconnect(session_id)
            except MQTTClientError as exc:
                logger.warning("closing session %s: %s", session_id, exc)
        if self._registry is not None:
            self._registry.close()
        if self._control is not None:
            self._control.close(self.options.close_timeout)
        if self._durable is not None:
            self._durable.close()
        _live_clients.discard(self)

    def _resolve(self) -> list[tuple[str, int]]:
        """Broker endpoints to try, asked again on every (re)connect (see _discovery.py)."""
        return [(e.host, e.port) for e in resolve_endpoints(self.host, self.port,
                                                            consul=self._consul)]

    def _new_session(self, client_id: str, **kwargs: Any) -> Session:
        if self._closed:
            raise BrokerConnectionError("this MQTTClient is closed; create a new one")
        kwargs.setdefault("strip_topic", self._prefix.strip)
        return Session(client_id=client_id, options=self.options, resolver=self._resolve,
                       **kwargs)

    def _outbox(self) -> Outbox | None:
        """The durable outbox of ``persistence_path``, opened on first use."""
        if self.options.persistence_path is None:
            return None
        with self._lock:
            if self._durable is None:
                self._durable = Outbox(self.options.persistence_path,
                                       self.options.max_outbox_messages)
            return self._durable

    def _control_session(self) -> tuple[Session, MarkerChannel]:
        """The client's own long-lived connection for retained reads and the registry."""
        with self._lock:
            if self._control is None or self._control.closed or self._markers is None:
                client_id = f"isa-{self.organization_id}-{uuid.uuid4().hex[:12]}"
                schema = Schema(f"{self.options.registry_root}/{self.organization_id}")
                # Its will deletes this client's live-session record if the process dies.
                session = self._new_session(client_id, strip_topic=str,
                                            will=Will(schema.client(client_id), b"", 1, True))
                session.open()
                self._control = session
                self._markers = MarkerChannel(session, schema.marker(client_id))
            control, markers = self._control, self._markers
        # Right after a broker restart: reconnect now rather than after the backoff.
        control.ensure_connected(self.options.connect_timeout)
        return control, markers

    def _reg(self) -> Organisation:
        with self._lock:
            if self._registry is None:
                session, markers = self._control_session()
                self._registry = Organisation(session, markers, self.options,
                                              self.organization_id, self.user_id, self._prefix,
                                              self._sessions)
            registry = self._registry
        registry.control.ensure_connected(self.options.connect_timeout)
        return registry

    def _session(self, session_id: object) -> Session:
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise UnknownSessionError(session_id)
        return session

    # == connections =====================================================================
    def health_check(self, deep_check: bool = False) -> dict[str, Any]:
        """Can the broker be reached? ``deep_check`` adds a publish round trip and $SYS."""
        started = time.perf_counter()
        try:
            session, markers = self._control_session()
        except MQTTClientError as exc:
            return {"healthy": False, "broker_status": "unreachable",
                    "active_connections": self._connected_count(), "message": str(exc),
                    "error": type(exc).__name__}
        host, port = session.endpoint or ("?", 0)
        result: dict[str, Any] = {
            "healthy": session.connected,
            "broker_status": "connected" if session.connected else "reconnecting",
            "active_connections": self._connected_count(),
            "message": f"broker at {host}:{port} " + ("reachable" if session.connected
                                                     else "not reachable now, reconnecting"),
            "broker": f"{host}:{port}",
            "protocol": "5" if session.protocol == 5 else "3.1.1",
        }
        if deep_check and session.connected:
            try:
                markers.read_retained(markers.marker_topic, self.options.request_timeout)
                result["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 3)
                result["sys_available"] = self._reg().broker_stats()["available"]
            except MQTTClientError as exc:
                result.update(healthy=False, broker_status="degraded", message=str(exc),
                              error=type(exc).__name__)
                return result
            try:  # a registry this broker cannot serve is reported, not fatal
                result["registry"] = self._reg().health()
            except MQTTClientError as exc:
                result["registry"] = {"synced": False, "error": str(exc)}
        return result

    def _connected_count(self) -> int:
        """Sessions of this client that are connected now (the control session excluded)."""
        return sum(1 for s in list(self._sessions.values()) if s.connected)

    def connect(self, client_id: str, username: str = "", password: str = "", *,
                clean_session: bool = True, keep_alive: int | None = None,
                will_topic: str | None = None, will_payload: bytes = b"", will_qos: int = 0,
                will_retain: bool = False, device_id: str | None = None) -> dict[str, Any]:
        """Open a session: a real MQTT connection with its own ``client_id``."""
        session, device_id = self._prepare(
            client_id, username, password, clean_session=clean_session, keep_alive=keep_alive,
            will_topic=will_topic, will_payload=will_payload, will_qos=will_qos,
            will_retain=will_retain, device_id=device_id)
        session.open()
        opened = self._adopt([(session, device_id)])[0]
        host, port = session.endpoint or ("?", 0)
        return {"success": True, **opened,
                "message": f"connected to {host}:{port} as {client_id!r}"}

    def connect_many(self, sessions: Iterable[str | Mapping[str, Any]]) -> dict[str, Any]:
        """Open many sessions at once: every CONNECT is sent before any CONNACK is awaited.

        Items are client_ids, or dicts of ``connect()``'s arguments (``client_id`` required).
        Invalid items and refused connections are reported in ``errors`` by index; a
        broker that cannot be reached at all raises, as ``connect()`` does.
        """
        prepared: list[tuple[int, Session, str | None]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, item in enumerate(sessions):
            kwargs = {"client_id": item} if isinstance(item, str) else item
            try:
                if not isinstance(kwargs, Mapping) or "client_id" not in kwargs:
                    raise InvalidArgumentError(
                        f"a session must be a client_id or a dict of connect() arguments "
                        f"with a client_id, not {item!r}")
                unknown = sorted(set(kwargs) - _CONNECT_ARGUMENTS)
                if unknown:
                    raise InvalidArgumentError(f"connect() takes no arguments {unknown}")
                session, device_id = self._prepare(**kwargs)
                if session.client_id in seen:
                    raise InvalidArgumentError(
                        f"client_id {session.client_id!r} appears twice: the broker would "
                        "close the first connection when the second one arrives")
                seen.add(session.client_id)
                prepared.append((index, session, device_id))
            except (InvalidArgumentError, DeviceNotFoundError) as exc:
                errors.append({"index": index, "client_id": kwargs.get("client_id")
                               if isinstance(kwargs, Mapping) else None, "error": str(exc)})
        failures = open_many([session for _, session, _ in prepared])
        opened = []
        for (index, session, device_id), failure in zip(prepared, failures, strict=True):
            if failure is None:
                opened.append((session, device_id))
            else:
                errors.append({"index": index, "client_id": session.client_id,
                               "error": str(failure)})
        results = self._adopt(opened)
        errors.sort(key=lambda e: e["index"])
        return {"success": not errors, "connected_count": len(results),
                "failed_count": len(errors), "sessions": results, "errors": errors}

    def _prepare(self, client_id: str, username: str = "", password: str = "", *,
                 clean_session: bool = True, keep_alive: int | None = None,
                 will_topic: str | None = None, will_payload: bytes = b"", will_qos: int = 0,
                 will_retain: bool = False, device_id: str | None = None,
                 ) -> tuple[Session, str | None]:
        """Check connect()'s arguments and build the session, not yet connected."""
        if not _valid_client_id(client_id):
            raise InvalidArgumentError(f"client_id must be a non-empty str, not {client_id!r}")
        _check_bool(clean_session, "clean_session")
        if keep_alive is not None and (type(keep_alive) is not int or not 0 < keep_alive <= 65_535):
            raise InvalidArgumentError(f"keep_alive must be an int in 1..65535, not {keep_alive!r}")
        will = None
        if will_topic is not None:
            if device_id is not None:
                raise InvalidArgumentError(
                    "a session bound to a device uses its Last Will to mark the device OFFLINE; "
                    "will_topic cannot be combined with device_id")
            will = Will(self._prefix.add(check_publishable(will_topic)), as_bytes(will_payload),
                        _check_qos(will_qos), _check_bool(will_retain, "will_retain"))
        if device_id is not None:
            registry = self._reg()
            registry.require(check_path_part(device_id))
            will = registry.device_will(device_id)
        session = self._new_session(client_id, username=username or None,
                                    password=password or None, clean_session=clean_session,
                                    keep_alive=keep_alive, will=will, outbox=self._outbox())
        return session, device_id

    def _adopt(self, opened: Sequence[tuple[Session, str | None]]) -> list[dict[str, Any]]:
        """Take connected sessions into this client (and the registry); for each, its
        session_id, client_id, session_present and protocol."""
        results: list[dict[str, Any]] = []
        for session, _ in opened:
            session.resend_stored()
            session_id = uuid.uuid4().hex
            with self._lock:
                self._sessions[session_id] = session
            results.append({"session_id": session_id, "client_id": session.client_id,
                            "session_present": session.session_present,
                            "protocol": "5" if session.protocol == 5 else "3.1.1"})
        tracked = [pair for pair in opened
                   if pair[1] is not None or self.options.track_in_registry]
        if tracked:
            registry = self._reg()
            try:
                registry.track(tracked)
            except MQTTClientError:
                for result in results:
                    self.disconnect(result["session_id"])
                raise
            registry.sessions_changed()

            def on_state(_session: Session) -> None:
                registry.sessions_changed()

            for session, _ in tracked:
                session.on_state = on_state
        return results

    def disconnect(self, session_id: str) -> dict[str, Any]:
        """End a session cleanly (no Last Will), after a bounded wait for acknowledgements."""
        session = self._session(session_id)
        if self._registry is not None:
            self._registry.untrack(session)
        session.close(self.options.close_timeout)
        with self._lock:
            self._sessions.pop(session_id, None)
        if self._registry is not None:
            self._registry.sessions_changed()
        return {"success": True, "message": f"session {session.client_id!r} disconnected"}

    def get_connection_status(self, session_id: str) -> dict[str, Any]:
        """Connection state and counters of one session (measured by this session)."""
        s = self._session(session_id)
        host, port = s.endpoint or ("?", 0)
        return {"connected": s.ready, "connected_at": iso(s.connected_at),
                "messages_sent": s.messages_sent, "messages_received": s.messages_received,
                "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
                "messages_dropped": s.messages_dropped, "publish_errors": s.publish_errors,
                "pending_messages": s.outstanding(), "reconnects": s.reconnects,
                "client_id": s.client_id, "broker": f"{host}:{port}",
                "protocol": "5" if s.protocol == 5 else "3.1.1",
                "session_present": s.session_present, "clash_suspected": s.clash_suspected,
                "stopped_reason": str(s.stopped_reason) if s.stopped_reason else None}

    # == publishing ======================================================================
    def publish(self, session_id: str, topic: str, payload: bytes, qos: int = 1,
                retained: bool = False) -> dict[str, Any]:
        """Publish and return once the message is safe (QoS 0 written, 1 PUBACK, 2 PUBCOMP)."""
        session = self._session(session_id)
        item = self._item(topic, as_bytes(payload), qos, retained)
        waiter, outs = session.publish([item])
        session.wait_published(waiter, outs, None)
        return {"success": True, "message_id": outs[0].mid}

    def publish_json(self, session_id: str, topic: str, data: Any, qos: int = 1,
                     retained: bool = False) -> dict[str, Any]:
        """Publish ``data`` as UTF-8 JSON."""
        return self.publish(session_id, topic, encode_json(data), qos, retained)

    def publish_msgpack(self, session_id: str, topic: str, data: Any, qos: int = 1,
                        retained: bool = False) -> dict[str, Any]:
        """Publish ``data`` as msgpack (compact, binary-safe)."""
        return self.publish(session_id, topic, encode_msgpack(data), qos, retained)

    def _item(self, topic: object, payload: bytes, qos: object,
              retained: object) -> tuple[str, bytes, int, bool]:
        name = check_publishable(topic)
        return (self._prefix.add(name), payload, _check_qos(qos),
                _check_bool(retained, "retained"))

    def publish_batch(self, session_id: str,
                      messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Pipeline every valid message, then wait for all acknowledgements.

        Invalid items are reported in ``errors`` (with their index) and the rest still go.
        """
        session = self._session(session_id)
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
            raise InvalidArgumentError("messages must be a list of dicts with topic, payload, "
                                       "qos and retained")
        errors: list[dict[str, Any]] = []
        items: list[tuple[str, bytes, int, bool]] = []
        positions: list[int] = []
        for index, m in enumerate(messages):
            try:
                if not isinstance(m, Mapping):
                    raise InvalidArgumentError(f"item must be a dict, not {type(m).__name__}")
                unknown = set(m) - {"topic", "payload", "qos", "retained"}
                if unknown:
                    raise InvalidArgumentError(f"unknown key(s) {sorted(unknown)}")
                items.append(self._item(m.get("topic"), as_bytes(m.get("payload", b"")),
                                        m.get("qos", 1), m.get("retained", False)))
                positions.append(index)
            except InvalidArgumentError as exc:
                errors.append({"index": index, "topic": m.get("topic") if isinstance(m, Mapping)
                               else None, "error": str(exc)})
        message_ids: list[int] = []
        if items:
            waiter, outs = session.publish(items, raise_errors=False)
            session.wait_published(waiter, outs, None, raise_first=False)
            for out in outs:
                error = waiter.errors.get(out.index)
                if error is None:
                    message_ids.append(out.mid)
                else:
                    errors.append({"index": positions[out.index], "topic": items[out.index][0],
                                   "error": str(error)})
        errors.sort(key=lambda e: e["index"])
        published = len(message_ids)
        return {"success": not errors, "published_count": published,
                "failed_count": len(errors), "message_ids": message_ids, "errors": errors}

    # == subscriptions ===================================================================
    def subscribe(self, session_id: str, topic_filter: str, qos: int = 1,
                  callback: MessageCallback | None = None) -> dict[str, Any]:
        """Subscribe once the broker acknowledged; messages go to ``callback`` or ``receive()``."""
        result = self.subscribe_multiple(session_id, [{"topic_filter": topic_filter, "qos": qos}],
                                         callback)
        return {"success": True, "granted_qos": result["granted_qos"][0]}

    def subscribe_multiple(self, session_id: str, subscriptions: Sequence[Mapping[str, Any]],
                           callback: MessageCallback | None = None) -> dict[str, Any]:
        """Subscribe to several filters in one SUBSCRIBE."""
        session = self._session(session_id)
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable(topic, payload, qos, "
                                       "retained, timestamp)")
        if isinstance(subscriptions, (str, bytes, Mapping)) or not subscriptions:
            raise InvalidArgumentError("subscriptions must be a non-empty list of "
                                       "{'topic_filter': ..., 'qos': ...}")
        subs = []
        for item in subscriptions:
            if not isinstance(item, Mapping):
                raise InvalidArgumentError(f"subscription must be a dict, not {item!r}")
            topic_filter = check_filter(item.get("topic_filter"))
            subs.append(Subscription(self._prefix.add(topic_filter),
                                     _check_qos(item.get("qos", 1)), None, callback))
        request = session.subscribe(subs)
        if self._registry is not None:
            self._registry.sessions_changed()
        return {"success": True, "granted_qos": request.codes}

    def unsubscribe(self, session_id: str, topic_filters: str | Sequence[str]) -> int:
        """Remove filters; return how many of them the session held."""
        session = self._session(session_id)
        filters = [topic_filters] if isinstance(topic_filters, str) else list(topic_filters)
        removed = session.unsubscribe([self._prefix.add(check_filter(f)) for f in filters])
        if self._registry is not None:
            self._registry.sessions_changed()
        return removed

    def list_subscriptions(self, session_id: str) -> list[dict[str, Any]]:
        """The filters this session holds, with their granted QoS."""
        session = self._session(session_id)
        return [{"topic_filter": self._prefix.strip(s.topic_filter), "qos": s.qos}
                for s in list(session.subscriptions.values()) if s.handler is None]

    def receive(self, session_id: str, timeout: float | None = None) -> Message | None:
        """The next message of a subscription made without callback (None after ``timeout``)."""
        return self._session(session_id).receive(timeout)

    # == topics ==========================================================================
    def validate_topic(self, topic: str, allow_wildcards: bool = False) -> dict[str, Any]:
        """Check a topic name (or, with ``allow_wildcards``, a filter) against the MQTT rules."""
        violations = topic_violations(topic, allow_wildcards=allow_wildcards)
        if not violations and not allow_wildcards and isinstance(topic, str) \
                and topic.startswith("$SYS"):
            violations = ["$SYS topics belong to the broker; clients cannot publish to them"]
        return {"valid": not violations,
                "message": "valid" if not violations else "; ".join(violations),
                "violations": violations}

    # == retained messages ===============================================================
    def set_retained_message(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Store ``payload`` as the retained message of ``topic`` (acknowledged at QoS>0)."""
        item = self._item(topic, as_bytes(payload), qos, True)
        if not item[1]:
            raise InvalidArgumentError("an empty retained payload deletes; use "
                                       "delete_retained_message()")
        session, _ = self._control_session()
        waiter, outs = session.publish([item])
        session.wait_published(waiter, outs, None)
        return True

    def get_retained_message(self, topic: str) -> dict[str, Any]:
        """The retained message of ``topic`` as the broker holds it now."""
        broker_topic = self._prefix.add(check_topic(topic))
        _, markers = self._control_session()
        found = markers.read_retained(broker_topic, self.options.request_timeout)
        message = found.get(broker_topic)
        if message is None:
            return {"found": False}
        return {"found": True, "topic": topic, "payload": message.payload, "qos": message.qos,
                "timestamp": message.timestamp}

    def delete_retained_message(self, topic: str) -> bool:
        """Remove the retained message of ``topic`` (an empty retained publish)."""
        item = self._item(topic, b"", 1, True)
        session, _ = self._control_session()
        waiter, outs = session.publish([item])
        session.wait_published(waiter, outs, None)
        return True

    # == device registry (see _registry.py and docs/registry.md) ========================
    def register_device(self, device_id: str, device_name: str, device_type: str = "sensor",
                        metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Register (or re-register, keeping ``registered_at``) a device of this organisation."""
        device = self._reg().register(device_id, device_name, device_type, metadata)
        return {"success": True, "device": device,
                "message": f"device {device_id!r} registered"}

    def register_devices(self, devices: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Register many devices at once (items: device_id, device_name, device_type,
        metadata), pipelining the writes; invalid items are reported in ``errors``."""
        return self._reg().register_many(devices)

    def unregister_device(self, device_id: str) -> bool:
        """Remove every registry record of the device; False if it was not registered."""
        return self._reg().unregister(device_id)

    def list_devices(self, status: int | DeviceStatus | None = None, page: int = 1,
                     page_size: int = 50) -> dict[str, Any]:
        """Devices of this organisation ordered by ``device_id``, one page at a time."""
        return self._reg().list_devices(status, page, page_size)

    def get_device_info(self, device_id: str) -> dict[str, Any] | None:
        """A device's record, status and counters, or None when not registered."""
        return self._reg().device_info(device_id)

    def update_device_status(self, device_id: str, status: int | DeviceStatus,
                             metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Set a device's status (0..4) and ``last_seen``; ``metadata`` is merged in."""
        device = self._reg().update_status(device_id, status, metadata)
        return {"success": True, "device": device}

    def get_device_metrics(self, device_id: str, start_time: datetime | float | None = None,
                           end_time: datetime | float | None = None) -> dict[str, Any]:
        """Counters of a device's bound sessions, persisted in the registry."""
        return self._reg().device_metrics(device_id, start_time, end_time)

    def get_topic_info(self, topic: str) -> dict[str, Any]:
        """What this library measured about one topic (see docs/registry.md)."""
        return self._reg().topic_info(check_topic(topic))

    def list_topics(self, prefix: str = "", page: int = 1, page_size: int = 50) -> dict[str, Any]:
        """Topics known to the organisation's counters plus retained topics under ``prefix``."""
        return self._reg().list_topics(prefix, page, page_size)

    def get_statistics(self) -> dict[str, Any]:
        """Organisation figures from the registry; broker figures from $SYS under 'broker'."""
        return self._reg().statistics()


_CONNECT_ARGUMENTS = frozenset(inspect.signature(MQTTClient.connect).parameters) - {"self"}
"""What an item of connect_many() may hold: the arguments of connect()."""
