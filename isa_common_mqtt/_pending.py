"""What waits on the broker: publishes, SUBSCRIBE requests, subscriptions, the Last Will."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._types import Message, MessageCallback

MessageHandler = Callable[[Message], None]


@dataclass(slots=True, frozen=True)
class Will:
    """The Last Will the broker publishes when the session ends without DISCONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False


class Waiter:
    """Completion of one or more publishes: counts down, keeps the first error."""

    __slots__ = ("_callbacks", "_event", "error", "errors", "remaining")

    def __init__(self, count: int) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], object]] = []
        self.remaining = count
        self.error: BaseException | None = None
        self.errors: dict[int, BaseException] = {}
        if count == 0:
            self._event.set()

    def done(self, index: int, error: BaseException | None = None) -> None:
        if error is not None:
            self.errors[index] = error
            self.error = self.error or error
        self.remaining -= 1
        if self.remaining <= 0:
            self._event.set()
            self._fire()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def add_done_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` (from whichever thread completes the waiter) once all are done."""
        self._callbacks.append(fn)
        if self._event.is_set():
            self._fire()

    def _fire(self) -> None:
        while self._callbacks:
            try:
                fn = self._callbacks.pop()  # atomic: each callback runs exactly once
            except IndexError:
                return
            fn()


@dataclass(slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    waiter: Waiter
    index: int = 0
    mid: int = 0
    seq: int = 0
    """Row of the durable outbox holding this message (0: not stored)."""


@dataclass(slots=True)
class Subscription:
    """A filter this session holds, and where its messages go."""

    topic_filter: str
    qos: int
    handler: MessageHandler | None
    """Internal handler run on the network thread; None means the user callback below."""
    callback: MessageCallback | None = None
    no_local: bool = False
    """MQTT 5: the broker does not send this connection's own publishes back."""


def passive_handler(message: Message) -> None:
    """Handler of a subscription made only to read retained messages: a holder wins."""


class Request:
    """A SUBSCRIBE or UNSUBSCRIBE waiting for its acknowledgement."""

    __slots__ = ("added", "codes", "error", "event", "subscriptions")

    def __init__(self, subscriptions: list[Subscription] | None = None) -> None:
        self.event = threading.Event()
        self.codes: list[int] = []
        self.error: BaseException | None = None
        self.subscriptions = subscriptions
        self.added: list[tuple[Subscription, Subscription | None]] = []
        """Routing entries this SUBSCRIBE added, with the one each replaced."""
