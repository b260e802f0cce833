# mypy: disable-error-code="misc"
# (the state lives in Session.__slots__; mypy cannot see a mixin assign to it)
"""Opening a session: endpoints in turn, MQTT 5 with a fall back to 3.1.1, the first
CONNECT and its CONNACK, what the broker turns out to support; and ``open_many``, which
writes many sessions' CONNECTs before reading any CONNACK.

A mixin of :class:`~isa_common_mqtt._session.Session`, which owns the state. Reconnects
are the session's own business (``Session._reconnect``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho

from . import _capabilities as capabilities_of
from ._capabilities import PROBE_TOPIC, Capabilities, mqtt5_refusal
from ._errors import (
    AuthenticationError,
    BrokerUnavailableError,
    MQTTClientError,
    ProtocolNotSupportedError,
)
from ._pending import Request, Subscription, passive_handler

if TYPE_CHECKING:
    import threading

    from ._io import NetworkLoop
    from ._options import ClientOptions
    from ._paho import PahoClient

logger = logging.getLogger(__name__)


class Opener:
    """The first connection of a session (see module docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:  # state owned by Session
        client_id: str
        options: ClientOptions
        keep_alive: int
        protocol: int
        endpoint: tuple[str, int] | None
        connected: bool
        closing: bool
        _client: PahoClient | None
        _resolver: Callable[[], Sequence[tuple[str, int]]]
        _loop: NetworkLoop
        _io_lock: threading.Lock
        _awaiting_connack: bool
        _connect_error: BaseException | None

        @property
        def capabilities(self) -> Capabilities: ...
        def _new_client(self, protocol: int) -> PahoClient: ...
        def _connect_args(self) -> dict[str, Any]: ...
        def _connecting_io(self) -> contextlib.AbstractContextManager[None]: ...
        def _drain(self) -> None: ...
        @staticmethod
        def _read_all(client: PahoClient) -> None: ...
        def subscribe(self, subscriptions: list[Subscription], *, wait: bool = True,
                      timeout: float | None = None) -> Request: ...
        def unsubscribe(self, topic_filters: list[str], timeout: float | None = None) -> int: ...
        def handle_readable(self) -> None: ...
        def handle_writable(self) -> None: ...
        def handle_misc(self) -> float | None: ...

    def open(self) -> None:
        """Connect for the first time; raise a typed error naming host and port on failure."""
        deadline = time.monotonic() + self.options.connect_timeout
        last: BaseException | None = None
        endpoints = list(self._resolver())
        for host, port in endpoints:
            protocols = self._protocols(host, port)
            refusal: str | None = None
            for protocol in protocols:
                try:
                    self._connect_once(host, port, protocol, deadline)
                    if refusal is not None:  # only once 3.1.1 worked: else it says nothing
                        self.capabilities.v5_refusal = refusal
                    self._probe()
                    return
                except ProtocolRefused as exc:
                    if self.options.protocol == "5":
                        raise self._diagnose_v5(host, port, deadline, exc) from exc
                    last = exc
                    refusal = exc.how
                    continue
                except (AuthenticationError, BrokerUnavailableError) as exc:
                    last = exc
                    if isinstance(exc, AuthenticationError):
                        raise
                    break
        host, port = endpoints[-1] if endpoints else ("?", 0)
        if isinstance(last, BrokerUnavailableError):
            raise last
        raise BrokerUnavailableError(f"cannot connect to the MQTT broker at {host}:{port}: {last}",
                                     host=host, port=port)

    def _probe(self) -> None:
        """Learn whether QoS 2 is granted, once per endpoint, where MQTT 5 did not say."""
        caps = self.capabilities
        if caps.qos2 is not None:
            return
        probe = f"{PROBE_TOPIC}/{self.client_id}"
        try:
            request = self.subscribe([Subscription(probe, 2, passive_handler)],
                                     timeout=self.options.request_timeout)
            caps.qos2 = request.codes == [2]
            self.unsubscribe([probe], timeout=self.options.request_timeout)
        except MQTTClientError as exc:  # e.g. an ACL that refuses the probe topic
            logger.info("session %s: QoS 2 support unknown (%s)", self.client_id, exc)
        if caps.qos2 is False and caps.v5_refusal is None and self.endpoint is not None:
            # Connected with 3.1.1 as asked: how MQTT 5 is refused tells the brokers apart.
            tls = self.options.tls.ssl_context() if self.options.tls else None
            try:
                caps.v5_refusal = mqtt5_refusal(*self.endpoint, self.options.connect_timeout,
                                                tls)
            except OSError as exc:
                logger.info("session %s: MQTT 5 probe failed: %s", self.client_id, exc)
        if caps.flavour != "mqtt":
            logger.info("broker at %s:%d behaves like %s: QoS 2 %s", *(self.endpoint or ()),
                        caps.flavour, "downgraded to 1" if self.options.downgrade_qos2
                        else "refused")

    def _diagnose_v5(self, host: str, port: int, deadline: float,
                     refusal: ProtocolRefused) -> MQTTClientError:
        """MQTT 5 was asked for and the connection closed before CONNACK: if 3.1.1 works,
        the broker refuses 5 (RabbitMQ does so by closing); else it is unreachable."""
        try:
            self._connect_once(host, port, paho.MQTTv311, deadline)
        except MQTTClientError:
            return BrokerUnavailableError(
                f"the MQTT broker at {host}:{port} closed the connection before CONNACK "
                "(a TLS port without tls=..., or a broker refusing this client)",
                host=host, port=port)
        client = self._client
        self.closing = True  # this session ends here: no reconnect after the diagnosis
        self.connected = False
        if client is not None:
            self._abandon(client)
        self.capabilities.v5_refusal = refusal.how
        return ProtocolNotSupportedError(
            f"the MQTT broker at {host}:{port} refuses MQTT 5 (it closed the connection; "
            "MQTT 3.1.1 works): use protocol='auto' or '3.1.1'", host=host, port=port)

    def _protocols(self, host: str, port: int) -> list[int]:
        if self.options.protocol == "5":
            return [paho.MQTTv5]  # asked for explicitly: never fall back
        if self.options.protocol == "3.1.1" or capabilities_of.known.get((host, port),
                                                                 Capabilities()).v5_refusal:
            return [paho.MQTTv311]
        return [paho.MQTTv5, paho.MQTTv311]

    def _connect_once(self, host: str, port: int, protocol: int, deadline: float) -> None:
        self._send_connect(host, port, protocol, deadline)
        self._await_connack(deadline)

    def _send_connect(self, host: str, port: int, protocol: int, deadline: float) -> None:
        """TCP connect and write CONNECT; the CONNACK is awaited by _await_connack."""
        self.protocol = protocol
        self.endpoint = (host, port)
        self._awaiting_connack = True
        self._connect_error = None
        client = self._client = self._new_client(protocol)
        client.connect_timeout = max(deadline - time.monotonic(), 0.05)
        self._loop.add_pollable(self)
        try:
            with self._connecting_io():
                client.connect(host, port, self.keep_alive, **self._connect_args())
        except OSError as exc:
            self._awaiting_connack = False
            self._loop.remove_pollable(self)
            raise BrokerUnavailableError(
                f"cannot connect to the MQTT broker at {host}:{port}: {exc}; check that the "
                "broker runs and that host and port are right", host=host, port=port) from exc
        self._drain()

    def _await_connack(self, deadline: float) -> None:
        """Read the CONNACK on this (the caller's) thread, then hand the socket to the loop.

        Reading it here spares a wake-up of the network thread per connect and, when many
        sessions open at once, keeps the two threads from taking turns on the GIL.
        """
        client = self._client
        assert client is not None
        host, port = self.endpoint or ("?", 0)
        try:
            sock = client.socket()
            poller = select.poll()
            if sock is not None:
                poller.register(sock, select.POLLIN)
            while sock is not None and client.socket() is sock and self._awaiting_connack:
                with self._io_lock:
                    if client.want_write():  # CONNECT did not fit in the socket at once
                        client.loop_write()
                # Past the deadline, a CONNACK that already arrived still counts: with many
                # sessions opening at once, it may have waited for us rather than we for it.
                remaining = max(deadline - time.monotonic(), 0)
                if not poller.poll(remaining * 1000):
                    if remaining:
                        continue
                    break
                with self._io_lock:
                    self._read_all(client)
                self._drain()
        except BaseException:
            self._awaiting_connack = False
            self._abandon(client)
            raise
        if self._awaiting_connack:
            self._awaiting_connack = False
            self._abandon(client)
            raise BrokerUnavailableError(
                f"the MQTT broker at {host}:{port} did not answer CONNECT within "
                f"{self.options.connect_timeout:g} s", host=host, port=port)
        if self._connect_error is not None:
            self._abandon(client)
            raise self._connect_error
        sock = client.socket()
        if sock is not None:
            self._loop.register(sock, self)
            if client.want_write():
                self._loop.want_write(sock)

    def _abandon(self, client: PahoClient) -> None:
        self._loop.remove_pollable(self)
        with self._io_lock:
            client._sock_close()  # no DISCONNECT: the connection never got going


def open_many(sessions: Sequence[Opener]) -> list[MQTTClientError | None]:
    """Open sessions with every CONNECT written before any CONNACK is awaited.

    The first session opens alone: it finds the endpoint and protocol that work, and raises
    BrokerUnavailableError as ``open()`` does when the broker cannot be reached (a session
    refused for its own reasons, such as its credentials, hands that role to the next).
    The others connect the same way, pipelined. Returns each session's error (None:
    connected); when the broker stops accepting connections part-way, the sessions not yet
    tried get that error too.
    """
    errors: list[MQTTClientError | None] = [None] * len(sessions)
    start = 0
    while start < len(sessions):
        try:
            sessions[start].open()
            break
        except BrokerUnavailableError:
            raise
        except MQTTClientError as exc:
            errors[start] = exc
            start += 1
    else:
        return errors
    first = sessions[start]
    host, port = first.endpoint or ("?", 0)
    sent: list[tuple[int, Opener, float]] = []
    for index in range(start + 1, len(sessions)):
        session = sessions[index]
        deadline = time.monotonic() + session.options.connect_timeout
        try:
            session._send_connect(host, port, first.protocol, deadline)
        except BrokerUnavailableError as exc:
            errors[index:] = [exc] * (len(sessions) - index)
            break
        sent.append((index, session, deadline))
    for index, session, deadline in sent:
        try:
            session._await_connack(deadline)
        except ProtocolRefused:  # the first one was not refused: try every way again
            try:
                session.open()
            except MQTTClientError as exc:
                errors[index] = exc
        except MQTTClientError as exc:
            errors[index] = exc
    return errors


class ProtocolRefused(MQTTClientError):
    """The broker refused MQTT 5; retry with 3.1.1."""

    def __init__(self, message: str, *, how: str) -> None:
        super().__init__(message)
        self.how = how
