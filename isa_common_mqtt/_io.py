"""The network loop: one selector thread that drives every session's socket.

paho-mqtt is used through its external-loop hooks (``on_socket_open``,
``on_socket_register_write`` ...), so a process with thousands of sessions still has
one network thread and uses epoll rather than ``select()``. A thread that publishes
writes its packet to the socket itself when the socket is free, so the common case
costs no thread hand-off and no wake-up byte. Blocking TCP connects of reconnects run
on a separate connector thread that exists only while there is work for it.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Sock = Any
"""A socket or paho's SocketLike wrapper (anything with fileno())."""

IDLE_WAKE = 1.0
"""Longest sleep of the loop with nothing scheduled."""
CHECK_QUANTUM = 0.25
"""Keepalive checks are rounded up to this grid so that many sessions share a wakeup."""


class Pollable(Protocol):
    """What the loop needs from a session."""

    def handle_readable(self) -> None: ...
    def handle_writable(self) -> None: ...
    def handle_misc(self) -> float | None:
        """Keepalive work; return seconds until the next check (None: stop checking)."""


class NetworkLoop:
    """One selector thread for all sessions of the process (see module docstring)."""

    _shared: NetworkLoop | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> NetworkLoop:
        """The process-wide loop, started on first use."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_pending = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._lock = threading.Lock()
        self._pollables: dict[int, Pollable] = {}
        self._checks: list[tuple[float, int, int]] = []  # (due, seq, id(pollable))
        self._want_write: set[Sock] = set()
        self._thread = threading.Thread(target=self._run, name="isa-mqtt-network", daemon=True)
        self._thread.start()
        self._connector = _Connector()

    # -- called from any thread ------------------------------------------------------------
    def in_loop_thread(self) -> bool:
        """Whether the caller is the network thread."""
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the network thread."""
        self._calls.append(fn)
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(BlockingIOError):  # already full: the loop will wake
                self._wake_w.send(b"\0")

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the network thread after ``delay`` seconds."""
        entry = (time.monotonic() + delay, next(self._timer_seq), fn)
        self.call_soon(lambda: heapq.heappush(self._timers, entry))

    def run_blocking(self, fn: Callable[[], None]) -> None:
        """Run a blocking job (a TCP connect) on the connector thread."""
        self._connector.submit(fn)

    def register(self, sock: Sock, pollable: Pollable) -> None:
        """Watch ``sock`` for reads on behalf of ``pollable``."""
        self._run_in_loop(lambda: self._register(sock, pollable))

    def unregister(self, sock: Sock) -> None:
        """Stop watching ``sock``."""
        self._run_in_loop(lambda: self._unregister(sock))

    def want_write(self, sock: Sock) -> None:
        """Watch ``sock`` for writability until its pending output is flushed."""
        if self.in_loop_thread():
            self._want_write.add(sock)
        else:
            self.call_soon(lambda: self._set_write(sock, True))

    def add_pollable(self, pollable: Pollable) -> None:
        """Give ``pollable`` keepalive checks; it says when it next needs one."""
        with self._lock:
            self._pollables[id(pollable)] = pollable
        self.call_soon(lambda: heapq.heappush(
            self._checks, (time.monotonic() + IDLE_WAKE, next(self._timer_seq), id(pollable))))

    def remove_pollable(self, pollable: Pollable) -> None:
        with self._lock:
            self._pollables.pop(id(pollable), None)

    # -- network thread --------------------------------------------------------------------
    def _run_in_loop(self, fn: Callable[[], None]) -> None:
        if self.in_loop_thread():
            fn()
        else:
            self.call_soon(fn)

    def _register(self, sock: Sock, pollable: Pollable) -> None:
        try:
            self._selector.register(sock, selectors.EVENT_READ, pollable)
        except (ValueError, KeyError, OSError) as exc:  # closed before we got to it
            logger.debug("socket not registered: %s", exc)

    def _unregister(self, sock: Sock) -> None:
        self._want_write.discard(sock)
        with contextlib.suppress(ValueError, KeyError, OSError):
            self._selector.unregister(sock)

    def _set_write(self, sock: Sock, on: bool) -> None:
        try:
            key = self._selector.get_key(sock)
        except (KeyError, ValueError):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        if key.events != events:
            with contextlib.suppress(ValueError, KeyError, OSError):
                self._selector.modify(sock, events, key.data)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = now + IDLE_WAKE
            if self._timers:
                due = min(due, self._timers[0][0])
            if self._checks:
                due = min(due, self._checks[0][0])
            timeout = 0 if self._calls else max(due - now, 0)
            try:
                events = self._selector.select(timeout)
            except InterruptedError:
                continue
            for key, mask in events:
                pollable = key.data
                if pollable is None:
                    self._drain_wake()
                    continue
                try:
                    if mask & selectors.EVENT_WRITE:
                        pollable.handle_writable()
                    if mask & selectors.EVENT_READ:
                        pollable.handle_readable()
                except Exception:
                    logger.exception("network loop: error while serving a session")
            self._run_calls()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._safely(fn)
            self._run_checks(now)
            self._flush_want_write()

    def _run_checks(self, now: float) -> None:
        """Keepalive checks that are due; each session schedules its own next one."""
        checks = self._checks
        while checks and checks[0][0] <= now:
            _, _, key = heapq.heappop(checks)
            pollable = self._pollables.get(key)
            if pollable is None:
                continue  # removed
            try:
                delay = pollable.handle_misc()
            except Exception:
                logger.exception("network loop: keepalive check failed")
                delay = IDLE_WAKE
            if delay is not None:
                due = math.ceil((now + delay) / CHECK_QUANTUM) * CHECK_QUANTUM  # batch wakeups
                heapq.heappush(checks, (due, next(self._timer_seq), key))

    def _drain_wake(self) -> None:
        # Empty the socket first, then clear the flag: cleared first, a call_soon in
        # between would send a byte that this drain swallows, and every later call_soon
        # would see the flag still set and never wake the loop again.
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        self._wake_pending = False

    def _run_calls(self) -> None:
        while self._calls:
            self._safely(self._calls.popleft())

    def _flush_want_write(self) -> None:
        while self._want_write:
            sock = self._want_write.pop()
            self._set_write(sock, True)

    def stop_writing(self, sock: Sock) -> None:
        """Called by a session on the network thread once its output is flushed."""
        self._set_write(sock, False)

    @staticmethod
    def _safely(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("network loop: callback failed")


class _Connector:
    """A thread for blocking connects; it exits after a few idle seconds."""

    IDLE_EXIT = 5.0

    def __init__(self) -> None:
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isa-mqtt-connector",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.wait(self.IDLE_EXIT)
                if not self._jobs:
                    self._thread = None
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:
                logger.exception("connector: job failed")
