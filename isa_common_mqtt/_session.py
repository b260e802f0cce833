"""Session: one real MQTT connection, driven by the shared network loop.

A session owns a paho client, its outgoing queue and in-flight window, its
subscriptions (restored after a reconnect without a session), and its counters.

Threading: paho callbacks never take session locks; they append events to a list,
and whoever called into paho (the network thread, or a user thread that published)
runs the events afterwards under the session lock. That keeps one lock order
(session lock, then paho's mutexes) and lets a publishing thread write its own packet.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import _capabilities as capabilities_of
from ._capabilities import Capabilities
from ._dispatch import Dispatcher
from ._errors import (
    AuthenticationError,
    BrokerConnectionError,
    BrokerUnavailableError,
    InvalidTopicError,
    MQTTClientError,
    NotConnectedError,
    ProtocolNotSupportedError,
    SessionTakenOverError,
)
from ._io import NetworkLoop
from ._opening import Opener, ProtocolRefused
from ._options import ClientOptions
from ._outbox import Outbox
from ._paho import PahoClient
from ._pending import MessageHandler, Outgoing, Request, Subscription, Will
from ._publisher import MAX_WINDOW, Publisher
from ._subscriber import Subscriber
from ._topics import FilterIndex
from ._types import Message

logger = logging.getLogger(__name__)

SESSION_EXPIRY = 86_400
"""MQTT 5 session expiry (seconds) of a persistent session (clean_session=False)."""
_AUTH_FAILURES = {134, 135, 140}  # bad user name or password, not authorized, bad auth method
_PROTOCOL_REFUSED = {1, 132}  # unacceptable / unsupported protocol version
_TAKEN_OVER = 142
CLASH_WINDOW = 5.0
CLASH_COUNT = 3



_JITTER = random.Random()
"""Our own generator: the global one belongs to the application (and its tests)."""


Endpoint = tuple[str, int]
EndpointResolver = Callable[[], Sequence[Endpoint]]



class Session(Opener, Publisher, Subscriber):
    """One MQTT connection (see module docstring)."""

    __slots__ = (
        "_awaiting_connack",
        "_backoff",
        "_by_mid",
        "_client",
        "_connect_error",
        "_connecting",
        "_dispatcher",
        "_draining",
        "_events",
        "_ever_connected",
        "_inbox",
        "_inbox_ready",
        "_index",
        "_inflight",
        "_inflight_qos2",
        "_io_lock",
        "_lock",
        "_loop",
        "_outbox",
        "_outgoing",
        "_password",
        "_pumping",
        "_qos0_unwritten",
        "_repump",
        "_requests",
        "_resolver",
        "_room",
        "_short_lived",
        "_strip",
        "_username",
        "_window",
        "bytes_received",
        "bytes_sent",
        "clash_suspected",
        "clean_session",
        "client_id",
        "closed",
        "closing",
        "connected",
        "connected_at",
        "endpoint",
        "inbox_listener",
        "keep_alive",
        "messages_dropped",
        "messages_received",
        "messages_sent",
        "on_received",
        "on_sent",
        "on_state",
        "options",
        "protocol",
        "publish_errors",
        "reconnects",
        "restoring",
        "session_present",
        "stopped_reason",
        "subscriptions",
        "taps",
        "will",
    )

    def __init__(self, *, client_id: str, options: ClientOptions, resolver: EndpointResolver,
                 username: str | None = None, password: str | None = None,
                 clean_session: bool = True, keep_alive: int | None = None,
                 will: Will | None = None, strip_topic: Callable[[str], str] = str,
                 loop: NetworkLoop | None = None, dispatcher: Dispatcher | None = None,
                 outbox: Outbox | None = None) -> None:
        self.client_id = client_id
        self.options = options
        self.clean_session = clean_session
        self.keep_alive = keep_alive or options.keep_alive
        self.will = will
        self._resolver = resolver
        self._username = username if username is not None else options.username
        self._password = password if password is not None else options.password
        self._strip = strip_topic
        self._outbox = outbox
        self._loop = loop or NetworkLoop.shared()
        self._dispatcher = dispatcher or Dispatcher.shared()
        self._lock = threading.RLock()
        self._room: threading.Condition | None = None
        """Waited on for buffer room and acknowledgements; created by the first waiter."""
        self._io_lock = threading.Lock()  # paho's loop_* calls; never held while waiting
        self._connecting = False
        self._events: list[Callable[[], None]] = []
        """What paho reported, to run under the session lock (a list: an empty deque costs
        ten times the memory, and idle sessions are many)."""
        self._draining = False
        self._pumping = False
        self._repump = False
        self._client: PahoClient | None = None
        self.protocol: int = paho.MQTTv5
        self.endpoint: Endpoint | None = None
        self.connected = False
        self.connected_at: float | None = None
        self.session_present = False
        self.closing = False
        self.closed = False
        self.stopped_reason: MQTTClientError | None = None
        self._awaiting_connack = False
        """CONNECT sent by open(); cleared by the CONNACK or a close before it. Meanwhile
        the caller of open() reads the socket itself; the loop gets it afterwards."""
        self._connect_error: BaseException | None = None
        self._ever_connected = False
        self._backoff = options.reconnect_min_delay
        self._short_lived = 0
        self._window = MAX_WINDOW
        self._inflight = 0
        self._inflight_qos2 = 0
        self._qos0_unwritten = 0
        self._outgoing: collections.deque[Outgoing] | None = None
        """Accepted, not yet handed to paho; made by the first publish (idle sessions are many)."""
        self._by_mid: dict[int, Outgoing] = {}
        self._requests: dict[int, Request] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._index: FilterIndex | None = None
        """Lookup over ``subscriptions``; reset to None whenever they change."""
        self.taps: list[tuple[list[str], MessageHandler]] = []
        """Temporary observers of matching messages (retained reads)."""
        self.messages_sent = 0
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_dropped = 0
        self.publish_errors = 0
        self.reconnects = 0
        self.restoring: Request | None = None
        """The SUBSCRIBE that restores subscriptions after a reconnect, until its SUBACK."""
        self.clash_suspected = False
        """Connections kept closing right after CONNACK (a client_id clash, or a flapping link)."""
        self.on_sent: Callable[[str, int], None] | None = None
        """Called (network or publishing thread, under the session lock) per delivered message."""
        self.on_received: Callable[[str, int], None] | None = None
        self.on_state: Callable[[Session], None] | None = None
        """Called after the session connects or goes down (off the network thread)."""
        self._inbox: collections.deque[Message] | None = None
        self._inbox_ready: threading.Condition | None = None
        self.inbox_listener: Callable[[], None] | None = None
        """Called (network thread) after a message lands in the inbox; must not block."""

    # == connection state and reconnects (the first connect: _opening.Opener) ============
    @property
    def ready(self) -> bool:
        """Connected, with the subscriptions of before a reconnect restored (SUBACK seen)."""
        restoring = self.restoring
        return self.connected and (restoring is None or restoring.event.is_set())

    @property
    def capabilities(self) -> Capabilities:
        """What the current endpoint can do (shared by the sessions of the process)."""
        endpoint = self.endpoint or ("?", 0)
        caps = capabilities_of.known.get(endpoint)
        if caps is None:
            caps = capabilities_of.known[endpoint] = Capabilities()
        return caps

    def check_topic(self, topic: str) -> None:
        """Refuse a topic this broker would mangle or drop the connection for."""
        problem = self.capabilities.topic_problem(topic)
        if problem is not None:
            raise InvalidTopicError(f"cannot use topic {self._strip(topic)!r} on this broker: "
                                    f"{problem}", topic=self._strip(topic))

    def _new_client(self, protocol: int) -> PahoClient:
        v5 = protocol == paho.MQTTv5
        client = PahoClient(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=None if v5 else self.clean_session,
                             protocol=MQTTProtocolVersion(protocol),
                             reconnect_on_failure=False)
        client.max_inflight_messages_set(0)  # we window ourselves; paho's scan is quadratic
        client.max_queued_messages_set(0)
        client.connect_timeout = self.options.connect_timeout
        client.suppress_exceptions = True
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self.options.tls is not None:
            client.tls_set_context(self.options.tls.ssl_context())
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client.mid_in_use = self._by_mid.__contains__
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_unsuback
        client.on_message = self._on_message
        return client

    def _connect_args(self) -> dict[str, Any]:
        if self.protocol != paho.MQTTv5:
            return {}
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0 if self.clean_session else SESSION_EXPIRY
        return {"clean_start": self.clean_session, "properties": properties}

    def _schedule_reconnect(self) -> None:
        delay = self._backoff * _JITTER.uniform(0.5, 1.0)  # jitter spreads reconnect storms
        self._backoff = min(self._backoff * 2, self.options.reconnect_max_delay)
        logger.info("session %s: reconnecting in %.2f s", self.client_id, delay)
        self._loop.call_later(delay, lambda: self._loop.run_blocking(self._reconnect))

    def _reconnect(self) -> None:
        if self.closing or self.connected or self._client is None:
            return
        self.reconnects += 1
        for host, port in self._resolver():
            client = self._client
            try:
                with self._connecting_io():
                    if self.endpoint != (host, port):
                        client.connect_async(host, port, self.keep_alive, **self._connect_args())
                        self.endpoint = (host, port)
                    client.reconnect()
                self._drain()
                self._loop.call_later(self.options.connect_timeout, functools.partial(
                    self._connack_watchdog, client, self.reconnects))
                return
            except OSError as exc:
                logger.info("session %s: reconnect to %s:%d failed: %s",
                            self.client_id, host, port, exc)
        with self._lock:
            if not self.closing:
                self._schedule_reconnect()

    def _connack_watchdog(self, client: PahoClient, attempt: int) -> None:
        """Give up a reconnect that got no CONNACK within connect_timeout (network thread)."""
        if self.connected or self.closing or attempt != self.reconnects \
                or client is not self._client:
            return
        logger.info("session %s: no CONNACK within %g s; trying again", self.client_id,
                    self.options.connect_timeout)
        with self._io_lock:
            client._sock_close()
        with self._lock:
            if not self.closing and not self.connected:
                self._schedule_reconnect()

    def ensure_connected(self, timeout: float) -> None:
        """Reconnect now instead of waiting out the backoff; wait (bounded) until connected."""
        if self.connected or self.closing or self._client is None:
            return
        self._backoff = self.options.reconnect_min_delay
        self._loop.run_blocking(self._reconnect)
        deadline = time.monotonic() + timeout
        while not self.connected and not self.closing and time.monotonic() < deadline:
            time.sleep(0.01)

    @contextlib.contextmanager
    def _connecting_io(self) -> Iterator[None]:
        """Keep the network thread off the client during a blocking TCP connect, without
        holding the I/O lock for that long (the network thread waits on it)."""
        with self._io_lock:
            self._connecting = True
        try:
            yield
        finally:
            self._connecting = False

    # == paho hooks: no locks of ours in here ============================================
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Small packets back to back (SUBSCRIBE + marker) must not wait for delayed ACKs;
        # a socket that is not TCP (unix, websocket wrapper) has no such option.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._awaiting_connack:
            self._loop.register(sock, self)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.unregister(sock)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._loop.in_loop_thread() and self._io_lock.acquire(blocking=False):
            try:
                client.loop_write()  # write from the publishing thread: no hand-off
            finally:
                self._io_lock.release()
            if not client.want_write():
                return
        self._loop.want_write(sock)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        self._events.append(lambda: self._handle_connack(flags, reason, properties))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self._events.append(lambda: self._handle_disconnect(client, reason))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        self._events.append(lambda: self._handle_puback(mid, reason.value))

    def _on_suback(self, client: paho.Client, userdata: Any, mid: int,
                   reasons: list[ReasonCode], properties: Properties | None) -> None:
        codes = [r.value for r in reasons]
        self._events.append(lambda: self._handle_ack(mid, codes))

    _on_unsuback = _on_suback

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._events.append(lambda: self._handle_message(msg))

    # == network loop side ===============================================================
    def handle_readable(self) -> None:
        self._with_io(self._read_all)

    def handle_writable(self) -> None:
        self._with_io(PahoClient.loop_write)

    def _with_io(self, action: Callable[[PahoClient], object]) -> None:
        """Run paho I/O under the I/O lock (network thread), then what it produced."""
        client = self._client
        if client is None:
            return
        with self._io_lock:
            if self._connecting:
                return
            action(client)
        self._after_io(client)

    @staticmethod
    def _read_all(client: PahoClient) -> None:
        client.loop_read()
        # Bytes already read into our buffer (or held by TLS) are invisible to the
        # selector: keep reading until they are consumed.
        while client.socket() is not None and (client.buffered() or getattr(
                client.socket(), "pending", lambda: 0)()):
            client.loop_read()
        if client.want_write():
            client.loop_write()

    def handle_misc(self) -> float | None:
        """Keepalive, cheaply: paho's ``loop_misc`` only when a ping is near or pending.

        Also a black-hole detector: a connected session that received nothing for 1.5x
        keepalive (it pings at 1x when idle, so a live broker always answers in time)
        is treated as lost and reconnects.
        """
        client = self._client
        if client is None or self.closed:
            return None
        keep_alive = self.keep_alive
        check_every = min(max(keep_alive / 8, 0.25), 10.0)
        now = time.monotonic()
        if self._outbox is not None:
            self._outbox.flush()
        if self._connecting or self._awaiting_connack or client.socket() is None:
            return check_every
        silent = now - client.last_recv
        if self.connected and silent > 1.5 * keep_alive:
            logger.warning("session %s: nothing received for %.1f s (keepalive %d s): "
                           "treating the connection as lost", self.client_id, silent, keep_alive)
            with self._io_lock:
                client._loop_rc_handle(paho.MQTT_ERR_KEEPALIVE)
            self._after_io(client)
            return check_every
        if client._ping_t or now - client._last_msg_out >= keep_alive - check_every \
                or silent >= keep_alive - check_every:
            with self._io_lock:
                if not self._connecting:
                    client.loop_misc()
            self._after_io(client)
        return check_every

    def _after_io(self, client: PahoClient) -> None:
        """Run the events the I/O produced and flush what they queued (network thread)."""
        self._drain()
        if client.want_write() and self._io_lock.acquire(blocking=False):
            try:
                client.loop_write()  # acks and pumped publishes go out in this same pass
            finally:
                self._io_lock.release()
            self._drain()
        sock = client.socket()
        if sock is not None:
            if client.want_write():
                self._loop.want_write(sock)
            else:
                self._loop.stop_writing(sock)

    def _drain(self) -> None:
        if self._events:
            with self._lock:
                self._drain_locked()

    def _drain_locked(self) -> None:
        if self._draining:
            return  # the outer frame keeps draining; nesting would recurse per message
        self._draining = True
        try:
            events = self._events
            while events:
                done = 0
                try:  # paho's threads only append meanwhile: run a prefix, then drop it
                    for event in events[:len(events)]:
                        done += 1
                        try:
                            event()
                        except Exception:  # one bad packet must not stall the events behind
                            logger.exception("session %s: event handler failed",
                                             self.client_id)
                finally:
                    del events[:done]
        finally:
            self._draining = False

    # == event handlers (session lock held) ==============================================
    def _handle_connack(self, flags: paho.ConnectFlags, reason: ReasonCode,
                        properties: Properties | None) -> None:
        code = reason.value
        if code != 0:
            if not self._ever_connected:
                self._connect_error = self._connack_error(code, str(reason))
                self._awaiting_connack = False
            else:
                logger.warning("session %s: broker refused reconnect: %s", self.client_id, reason)
                if code in _AUTH_FAILURES:
                    self._stop(AuthenticationError(f"broker refused the credentials: {reason}",
                                                   reason_code=code))
            return
        self.connected = True
        self.connected_at = time.time()
        self.session_present = bool(flags.session_present)
        first = not self._ever_connected
        self._ever_connected = True
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._window = min(int(receive_max), MAX_WINDOW) if receive_max else MAX_WINDOW
        if self.protocol == paho.MQTTv5:
            maximum_qos = getattr(properties, "MaximumQoS", 2) if properties else 2
            self.capabilities.qos2 = maximum_qos == 2
        if not first and not self.session_present and self.subscriptions:
            self._resubscribe()
        self._awaiting_connack = False
        self._pump()
        self._notify_room()
        if not first:
            logger.info("session %s: reconnected to %s:%d", self.client_id, *self.endpoint or ())
        self._notify_state()

    def _connack_error(self, code: int, text: str) -> BaseException:
        host, port = self.endpoint or ("?", 0)
        if code in _AUTH_FAILURES:
            return AuthenticationError(
                f"the MQTT broker at {host}:{port} refused the connection: {text}; check the "
                "username and password (options username/password or MQTT_USER/MQTT_PASSWORD)",
                reason_code=code)
        if code in _PROTOCOL_REFUSED and self.protocol == paho.MQTTv5:
            if self.options.protocol == "auto":
                return ProtocolRefused(text, how="connack")
            return ProtocolNotSupportedError(
                f"the MQTT broker at {host}:{port} refuses MQTT 5 ({text}); use "
                "protocol='auto' or '3.1.1'", host=host, port=port)
        return BrokerConnectionError(f"the MQTT broker at {host}:{port} refused the "
                                     f"connection: {text}", host=host, port=port)

    def _handle_disconnect(self, client: paho.Client, reason: ReasonCode) -> None:
        if client is not self._client:
            return
        was_connected = self.connected
        self.connected = False
        lived = time.time() - (self.connected_at or 0)
        if not self._ever_connected and self._awaiting_connack:
            # Closed before CONNACK: some brokers refuse MQTT 5 so.
            refused_v5 = self.protocol == paho.MQTTv5
            host, port = self.endpoint or ("?", 0)
            self._connect_error = (ProtocolRefused("closed without CONNACK", how="closed")
                                   if refused_v5 else BrokerUnavailableError(
                                       f"the MQTT broker at {host}:{port} closed the "
                                       "connection before CONNACK (a TLS port without "
                                       "tls=..., or a broker refusing this client)",
                                       host=host, port=port))
            self._awaiting_connack = False
            return
        if not self._ever_connected:
            # open() handles a connection that never got going (e.g. NATS closing after
            # refusing MQTT 5 with a CONNACK code): no reconnect from here.
            return
        self._fail_unsent(NotConnectedError("the connection was lost before the message was "
                                            "written; QoS 0 messages are never queued"))
        for request in self._requests.values():
            request.error = NotConnectedError("the connection was lost before the broker "
                                              "answered")
            self._rollback(request, None)
            request.event.set()
        self._requests.clear()
        self._notify_room()
        if self.closing:
            return
        if self._looks_taken_over(was_connected, lived):
            # A client_id clash or a flapping link: both look the same on Mosquitto 2.0.
            # Never give up (edge links flap); pause for the longest delay instead, so a
            # clash cannot become a rapid ping-pong, and say so.
            self.clash_suspected = True
            self._backoff = self.options.reconnect_max_delay
            self._short_lived = 0
            logger.warning("session %s: the broker closed %d connections in a row right after "
                           "CONNACK: a flapping link, or another client using client_id %r; "
                           "reconnecting after %.1f s", self.client_id, CLASH_COUNT,
                           self.client_id, self._backoff)
        elif reason.value == _TAKEN_OVER:
            self._stop(SessionTakenOverError(
                f"the broker says another client took over client_id {self.client_id!r} "
                "(session taken over); this session stopped reconnecting to avoid a takeover "
                "loop: use a unique client_id",
                host=(self.endpoint or ("?", 0))[0], port=(self.endpoint or ("?", 0))[1]))
            return
        if was_connected:
            logger.warning("session %s: connection lost (%s)", self.client_id, reason)
            if lived > 10:
                self._backoff = self.options.reconnect_min_delay
        self._notify_state()
        self._schedule_reconnect()

    def _looks_taken_over(self, was_connected: bool, lived: float) -> bool:
        """A takeover is often a bare close (Mosquitto 2.0 sends no DISCONNECT 0x8E, even
        under MQTT 5): three connections closed by the broker within seconds of CONNACK,
        in a row, are taken as a client_id clash."""
        if not was_connected:
            return False
        self._short_lived = self._short_lived + 1 if lived < CLASH_WINDOW else 0
        return self._short_lived >= CLASH_COUNT

    def _stop(self, reason: MQTTClientError) -> None:
        logger.error("session %s stopped: %s", self.client_id, reason)
        self.stopped_reason = reason
        self.closing = True
        self.connected = False
        self._fail_all(reason)
        self._notify_state()

    def _notify_state(self) -> None:
        callback = self.on_state
        if callback is not None:
            self._dispatcher.submit(lambda: callback(self), ("state", self), 1_000)

    # == closing =========================================================================
    def close(self, timeout: float) -> None:
        """Wait (bounded) for acknowledgements, send DISCONNECT and stop reconnecting."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.closed:
                return
            while (self._queued() or self._by_mid) and self.connected:
                if not self._room_condition().wait(max(deadline - time.monotonic(), 0)):
                    logger.warning("session %s: closing with %d unacknowledged message(s)",
                                   self.client_id, self._queued() + len(self._by_mid))
                    break
            self.closing = True
            client = self._client
            was_connected = self.connected
        if client is not None:
            if was_connected:
                client.disconnect()
                self._drain()
                # DISCONNECT is written inline or by the loop; give it a moment to leave
                end = min(deadline, time.monotonic() + 1.0)
                while client.want_write() and time.monotonic() < end:
                    time.sleep(0.005)
            with self._io_lock:
                client._sock_close()
        self._loop.remove_pollable(self)
        if self._outbox is not None:
            self._outbox.flush()
        with self._lock:
            self.connected = False
            self.closed = True
            self._fail_all(NotConnectedError(f"session {self.client_id!r} was disconnected"))
        self._dispatcher.wait_idle(self, min(max(deadline - time.monotonic(), 0.1), 2.0))
