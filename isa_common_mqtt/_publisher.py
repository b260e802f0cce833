# mypy: disable-error-code="misc"
# (the state lives in Session.__slots__; mypy cannot see a mixin assign to it)
"""The outgoing half of a session: queue, in-flight windows, acknowledgements, outbox.

A mixin of :class:`~isa_common_mqtt._session.Session`, which owns the state; every method
here runs with the session lock held unless it says otherwise.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import paho.mqtt.client as paho

from ._capabilities import Capabilities
from ._errors import (
    AuthorizationError,
    BufferFullError,
    MQTTClientError,
    NotConnectedError,
    ProtocolNotSupportedError,
    PublishTimeoutError,
)
from ._pending import Outgoing, Request, Waiter

if TYPE_CHECKING:
    from ._io import NetworkLoop
    from ._options import ClientOptions
    from ._outbox import Outbox
    from ._paho import PahoClient

logger = logging.getLogger(__name__)

MAX_WINDOW = 60_000
"""Cap on QoS>0 messages in flight: message ids (1..65535) are never reused while outstanding."""
QOS0_WINDOW = 1_000
"""QoS 0 messages handed to paho but not yet written to the socket."""


class Publisher:
    """Publishing for a session (see module docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:  # state owned by Session
        client_id: str
        options: ClientOptions
        protocol: int
        connected: bool
        closing: bool
        endpoint: tuple[str, int] | None
        stopped_reason: MQTTClientError | None
        messages_sent: int
        bytes_sent: int
        publish_errors: int
        on_sent: Callable[[str, int], None] | None
        _lock: threading.RLock
        _io_lock: threading.Lock
        _loop: NetworkLoop
        _client: PahoClient | None
        _outbox: Outbox | None
        _outgoing: collections.deque[Outgoing] | None
        _by_mid: dict[int, Outgoing]
        _requests: dict[int, Request]
        _room: threading.Condition | None
        _window: int
        _inflight: int
        _inflight_qos2: int
        _qos0_unwritten: int
        _pumping: bool
        _repump: bool

        @property
        def capabilities(self) -> Capabilities: ...
        def check_topic(self, topic: str) -> None: ...
        _strip: Callable[[str], str]
        def _drain_locked(self) -> None: ...
        def _rollback(self, request: Request, filters: set[str] | None) -> None: ...

    def _handle_puback(self, mid: int, code: int) -> None:
        out = self._by_mid.pop(mid, None)
        if out is None:
            return
        if out.qos == 0:
            self._qos0_unwritten -= 1
        else:
            self._inflight -= 1
            if out.qos == 2:
                self._inflight_qos2 -= 1
        if out.seq and self._outbox is not None:
            self._outbox.done((out.seq,))  # acknowledged, or refused for good
        if code >= 0x80:
            self.publish_errors += 1
            out.waiter.done(out.index, AuthorizationError(
                f"the broker refused the publish to {self._strip(out.topic)!r} "
                f"(reason code {code:#x})", topic=self._strip(out.topic), reason_code=code))
        else:
            self.messages_sent += 1
            self.bytes_sent += len(out.payload)
            if self.on_sent is not None:
                self.on_sent(out.topic, len(out.payload))
            out.waiter.done(out.index)
        self._pump()
        self._notify_room()

    def publish(self, items: Iterable[tuple[str, bytes, int, bool]],
                timeout: float | None = None,
                raise_errors: bool = True) -> tuple[Waiter, list[Outgoing]]:
        """Queue messages in order and return their waiter; blocks only while the buffer is full.

        QoS 0 while down raises NotConnectedError; the outgoing bound raises
        BufferFullError after ``timeout`` seconds without room. Messages accepted before
        an error stay queued; with ``raise_errors=False`` the error is recorded on the
        waiter for each message not accepted instead of raised.
        """
        batch = list(items)
        waiter = Waiter(len(batch))
        outs = [Outgoing(topic, payload, qos, retain, waiter, index)
                for index, (topic, payload, qos, retain) in enumerate(batch)]
        admitted = []
        for out in outs:
            try:
                self._admit(out)
            except MQTTClientError as exc:  # this item only: the others still go
                if raise_errors:
                    raise
                waiter.done(out.index, exc)
            else:
                admitted.append(out)
        limit = self.options.max_buffered_messages
        deadline = time.monotonic() + (self.options.publish_timeout if timeout is None
                                       else timeout)
        if self._outbox is not None:
            self._store(admitted, waiter, raise_errors)
        with self._lock:
            for position, out in enumerate(admitted):
                try:
                    self._accept(out, deadline, limit)
                except MQTTClientError as exc:
                    if self._outbox is not None:  # refused, so not to be resent later
                        self._outbox.done(r.seq for r in admitted[position:] if r.seq)
                    if raise_errors:
                        raise  # nobody waits on the waiter: keeping exc would only keep frames
                    for rest in admitted[position:]:
                        waiter.done(rest.index, exc)
                    break
            self._pump()
        return waiter, outs

    def _admit(self, out: Outgoing) -> None:
        """What this broker cannot carry is refused (or downgraded) before anything queues."""
        caps = self.capabilities
        if caps.flavour != "mqtt":
            self.check_topic(out.topic)
        if out.qos == 2 and caps.qos2 is False:
            if not self.options.downgrade_qos2:
                raise ProtocolNotSupportedError(
                    f"the broker at {self._where()} does not support QoS 2 (it grants QoS 1); "
                    "publish with qos=1, or pass downgrade_qos2=True to MQTTClient to "
                    "downgrade automatically")
            out.qos = 1

    def _store(self, outs: list[Outgoing], waiter: Waiter, raise_errors: bool) -> None:
        """Commit QoS>0 messages to the durable outbox before they are queued."""
        assert self._outbox is not None
        durable = [out for out in outs if out.qos > 0]
        if not durable:
            return
        try:
            seqs = self._outbox.add(self.client_id, [(o.topic, o.payload, o.qos, o.retain)
                                                     for o in durable])
        except MQTTClientError as exc:
            for out in outs:
                waiter.done(out.index, exc)
            if raise_errors:
                raise
            outs.clear()
            return
        for out, seq in zip(durable, seqs, strict=True):
            out.seq = seq

    def resend_stored(self) -> int:
        """Queue what the durable outbox kept from an earlier run of this client_id."""
        if self._outbox is None:
            return 0
        rows = self._outbox.pending(self.client_id)
        waiter = Waiter(len(rows))  # nobody waits: the caller of the earlier run is gone
        with self._lock:
            self._queue().extendleft(
                Outgoing(topic, payload, qos, retain, waiter, index, seq=seq)
                for index, (seq, topic, payload, qos, retain) in reversed(list(enumerate(rows))))
            self._pump()
        if rows:
            logger.info("session %s: resending %d message(s) from the durable outbox",
                        self.client_id, len(rows))
        return len(rows)

    def _accept(self, out: Outgoing, deadline: float, limit: int) -> None:
        """Queue one message (lock held), waiting for room in the outgoing buffer."""
        self._check_usable()
        if out.qos == 0 and not self.connected:
            raise NotConnectedError(
                f"session {self.client_id!r} is not connected; QoS 0 messages are "
                "never queued (use QoS 1 or 2 to have them sent after a reconnect)",
                host=(self.endpoint or ("?", 0))[0], port=(self.endpoint or ("?", 0))[1])
        while self._queued() + self._inflight >= limit:
            self._pump()  # hand over what is queued before waiting for room
            if self._queued() + self._inflight < limit:
                break
            if not self._room_condition().wait(max(deadline - time.monotonic(), 0)):
                raise BufferFullError(
                    f"session {self.client_id!r} has {limit} unacknowledged messages "
                    "(max_buffered_messages); wait for the broker or raise the bound")
            self._check_usable()
        self._queue().append(out)

    def _pump(self) -> None:
        """Hand queued messages to paho while the in-flight windows allow (lock held)."""
        if self._pumping:
            self._repump = True  # acknowledgements freed room while we were pumping
            return
        self._pumping = True
        try:
            while True:
                self._repump = False
                self._pump_locked()
                if not self._repump:
                    break
        finally:
            self._pumping = False

    def _pump_locked(self) -> None:
        outgoing = self._outgoing
        client = self._client
        if not outgoing or not self.connected or client is None:
            return
        by_mid = self._by_mid
        qos2_cap = self.options.max_inflight_qos2 if self.protocol != paho.MQTTv5 else MAX_WINDOW
        queued = False
        while outgoing:
            out = outgoing[0]
            if out.qos == 0:
                if self._qos0_unwritten >= QOS0_WINDOW:
                    break
                self._qos0_unwritten += 1
            elif self._inflight >= self._window or (
                    out.qos == 2 and self._inflight_qos2 >= qos2_cap):
                break
            else:
                self._inflight += 1
                if out.qos == 2:
                    self._inflight_qos2 += 1
            outgoing.popleft()
            out.mid = client.enqueue_publish(out.topic.encode(), out.payload, out.qos,
                                             out.retain)
            by_mid[out.mid] = out
            queued = True
        if queued:
            self._flush(client)

    def _flush(self, client: PahoClient) -> None:
        """Write what paho has queued: now from this thread if the socket is free,
        else on the network thread (which also flushes after every read)."""
        sock = client.socket()
        if sock is None:
            return
        if self._loop.in_loop_thread():
            self._loop.want_write(sock)
        elif self._io_lock.acquire(blocking=False):
            try:
                client.loop_write()
            finally:
                self._io_lock.release()
            if client.want_write():
                self._loop.want_write(sock)
            self._drain_locked()  # QoS 0 counts as done once written
        else:
            self._loop.want_write(sock)

    def wait_published(self, waiter: Waiter, outs: list[Outgoing], timeout: float | None,
                       raise_first: bool = True) -> None:
        """Wait for ``waiter`` while acknowledgements keep coming; raise its first error.

        PublishTimeoutError when no acknowledgement came for ``timeout`` seconds.
        """
        wait = self.options.publish_timeout if timeout is None else timeout
        left = waiter.remaining
        while not waiter.wait(wait):
            if waiter.remaining < left:
                left = waiter.remaining
                continue
            raise PublishTimeoutError(
                f"{waiter.remaining} message(s) not acknowledged within {wait:g} s; they stay "
                "queued and will still be sent when the session is back (unless it is "
                "disconnected)")
        if raise_first and waiter.error is not None:
            raise waiter.error

    def outstanding(self) -> int:
        """QoS>0 messages accepted but not yet acknowledged, and QoS 0 not yet written."""
        with self._lock:
            return self._queued() + len(self._by_mid)

    def _fail_unsent(self, error: BaseException) -> None:
        """Fail QoS 0 messages not yet written (paho forgets them on reconnect)."""
        for mid in [mid for mid, out in self._by_mid.items() if out.qos == 0]:
            out = self._by_mid.pop(mid)
            self._qos0_unwritten -= 1
            out.waiter.done(out.index, error)
        queued = self._outgoing or ()
        keep = collections.deque(o for o in queued if o.qos > 0)
        for out in queued:
            if out.qos == 0:
                out.waiter.done(out.index, error)
        self._outgoing = keep
        self._qos0_unwritten = 0
        self._inflight = len(self._by_mid)  # paho resends these after the reconnect
        self._inflight_qos2 = sum(1 for o in self._by_mid.values() if o.qos == 2)

    def _fail_all(self, error: BaseException) -> None:
        for out in list(self._by_mid.values()) + list(self._outgoing or ()):
            out.waiter.done(out.index, error)
        self._by_mid.clear()
        self._outgoing = None
        self._inflight = self._inflight_qos2 = self._qos0_unwritten = 0
        for request in self._requests.values():
            request.error = error
            request.event.set()
        self._requests.clear()
        self._notify_room()

    def _queue(self) -> collections.deque[Outgoing]:
        if self._outgoing is None:
            self._outgoing = collections.deque()
        return self._outgoing

    def _queued(self) -> int:
        return len(self._outgoing) if self._outgoing is not None else 0

    def _room_condition(self) -> threading.Condition:
        if self._room is None:
            self._room = threading.Condition(self._lock)
        return self._room

    def _notify_room(self) -> None:
        if self._room is not None:
            self._room.notify_all()

    def _where(self) -> str:
        host, port = self.endpoint or ("?", 0)
        return f"{host}:{port}"

    def _check_usable(self) -> None:
        if self.stopped_reason is not None:
            raise self.stopped_reason
        if self.closing:
            raise NotConnectedError(f"session {self.client_id!r} is closed")
