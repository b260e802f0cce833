"""Knowing when the broker has sent every retained message of a subscription.

MQTT has no "end of retained messages" signal. Measured on Mosquitto 2.0: SUBACK always
precedes the retained messages, and a marker that the same connection publishes (after
the SUBSCRIBE) to a topic it is subscribed to arrives after all of them, provided the
marker's QoS is at least the subscription's. So a read subscribes at QoS 1, publishes a
unique QoS 1 marker to the session's own marker topic, and everything retained that
arrived before the marker is the complete answer. No fixed sleeps.

When the broker drops part of a large snapshot (Mosquitto's ``max_queued_messages``),
the marker is dropped too, and the read fails loudly instead of returning a partial set.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import RegistrySyncError
from ._pending import MessageHandler, Outgoing, Request, Subscription, Waiter, passive_handler
from ._session import Session
from ._types import Message

SYNC_QOS = 1


@dataclass(slots=True)
class _Read:
    """One snapshot read in flight: its filters, marker token and acknowledgements."""

    filters: list[str]
    token: bytes
    event: threading.Event
    request: Request
    waiter: Waiter
    outs: list[Outgoing]


class MarkerChannel:
    """The marker topic of one session and the reads waiting on it."""

    def __init__(self, session: Session, marker_topic: str) -> None:
        self.session = session
        self.marker_topic = marker_topic
        self._waiting: dict[bytes, threading.Event] = {}
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        self._subscribed = False

    def _on_marker(self, message: Message) -> None:
        event = self._waiting.get(message.payload)
        if event is not None:
            self._seen.add(message.payload)
            event.set()

    def _ensure_subscribed(self, timeout: float) -> None:
        with self._lock:
            if self.marker_topic not in self.session.subscriptions:
                self.session.subscribe([Subscription(self.marker_topic, SYNC_QOS, self._on_marker)],
                                       timeout=timeout)

    def sync(self, filters: Iterable[str], handler: MessageHandler, *, keep: bool,
             timeout: float, what: str = "retained messages") -> None:
        """Subscribe ``filters`` with ``handler`` and return once their retained set arrived.

        With ``keep`` the subscriptions stay for live updates; otherwise they are removed
        (filters the session already held are left alone).
        """
        self._ensure_subscribed(timeout)
        wanted = list(filters)
        new = [f for f in wanted if f not in self.session.subscriptions]
        tap = (wanted, handler)
        if not keep:
            self.session.taps.append(tap)
        try:
            self._finish(self._start(wanted, handler if keep else passive_handler), timeout, what)
        finally:
            if not keep:
                self.session.taps.remove(tap)
                if new:
                    self.session.unsubscribe(new, timeout=timeout)

    def sync_slices(self, slices: Iterable[str], handler: MessageHandler, *, window: int,
                    timeout: float, what: str, no_local: bool = False) -> None:
        """Subscribe each filter of ``slices`` for good, ``window`` snapshots in flight at once.

        Each slice has its own marker, so the broker never queues more than ``window``
        slices for us and a dropped slice is still detected.
        """
        self._ensure_subscribed(timeout)
        pending: collections.deque[_Read] = collections.deque()
        try:
            for topic_filter in slices:
                if len(pending) >= window:
                    self._finish(pending.popleft(), timeout, what)
                pending.append(self._start([topic_filter], handler, no_local))
            while pending:
                self._finish(pending.popleft(), timeout, what)
        finally:
            for read in pending:
                self._waiting.pop(read.token, None)
                self._seen.discard(read.token)

    def _start(self, filters: list[str], handler: MessageHandler,
               no_local: bool = False) -> _Read:
        """Send SUBSCRIBE for ``filters`` and, right behind it, a marker."""
        token = os.urandom(16)
        event = self._waiting[token] = threading.Event()
        subs = [Subscription(f, SYNC_QOS, handler, no_local=no_local) for f in filters]
        request = self.session.subscribe(subs, wait=False)
        waiter, outs = self.session.publish([(self.marker_topic, token, SYNC_QOS, False)])
        waiter.add_done_callback(event.set)  # a refused marker (ACL) must not look like a drop
        return _Read(filters, token, event, request, waiter, outs)

    def _finish(self, read: _Read, timeout: float, what: str) -> None:
        """Wait for the marker of ``read``: then all of its retained messages are here.

        The marker's PUBACK also wakes the wait, so that a marker the broker refuses
        (an ACL) raises its AuthorizationError at once instead of looking like a drop.
        """
        try:
            deadline = time.monotonic() + timeout
            while read.token not in self._seen:
                if not read.event.wait(max(deadline - time.monotonic(), 0)):
                    if read.request.error is not None:
                        raise read.request.error
                    raise RegistrySyncError(
                        f"the broker did not deliver all {what} of {read.filters} within "
                        f"{timeout:g} s: it most likely dropped part of the snapshot. On "
                        "Mosquitto raise max_queued_messages (default 1000; e.g. "
                        "max_queued_messages 1000000) in mosquitto.conf")
                if read.waiter.error is not None:
                    raise read.waiter.error
                read.event.clear()  # woken by the PUBACK: the marker itself is still due
            self.session.wait_published(read.waiter, read.outs, timeout)
            self.session.check_subscribed(read.request)
        finally:
            self._waiting.pop(read.token, None)
            self._seen.discard(read.token)

    def read_retained(self, topic_filter: str, timeout: float) -> dict[str, Message]:
        """The retained messages under ``topic_filter``, by broker topic."""
        found: dict[str, Message] = {}

        def collect(message: Message) -> None:
            if message.retained:
                found[message.topic] = message

        self.sync([topic_filter], collect, keep=False, timeout=timeout)
        return found
