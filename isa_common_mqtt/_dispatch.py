"""The dispatcher: runs user callbacks off the network thread, in order per session.

The network thread never runs user code, so a slow callback cannot stall keepalive or
acknowledgements. Callbacks of one session run one at a time, in arrival order. One
worker thread serves every session; when a callback blocks and other sessions have work,
another worker starts (at most ``MAX_WORKERS``), so one slow session cannot stall the
callbacks of the others for long. Extra workers exit after ``IDLE_EXIT`` idle seconds.

Each session has its own bound on queued callbacks; at the bound the *newest* message is
dropped, counted in that session's ``messages_dropped`` and logged at warning level once
per burst. The network thread never waits for a callback.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from ._io import NetworkLoop

logger = logging.getLogger(__name__)

Job = Callable[[], object]
MAX_WORKERS = 8
IDLE_EXIT = 5.0
SLOW = 0.05
"""Seconds after which a running callback counts as slow, so others get a new worker."""


class Dispatcher:
    """Per-owner FIFO queues served by a small, self-sizing pool (see module docstring)."""

    _shared: Dispatcher | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Dispatcher:
        """The process-wide dispatcher."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls(NetworkLoop.shared().call_later)
            return cls._shared

    def __init__(self, schedule: Callable[[float, Callable[[], None]], None] | None = None
                 ) -> None:
        self._schedule = schedule
        self._check_pending = False
        self._queues: dict[object, collections.deque[Job]] = {}
        self._ready: collections.deque[object] = collections.deque()
        self._running: set[object] = set()
        self._started: dict[object, float] = {}
        self._warned: set[object] = set()
        self._cond = threading.Condition(threading.Lock())
        self._workers = 0
        self._idle = 0
        self._worker_threads: set[threading.Thread] = set()

    def submit(self, job: Job, owner: object, limit: int) -> bool:
        """Queue ``job`` for ``owner``; False when ``owner`` already has ``limit`` pending."""
        with self._cond:
            queue = self._queues.get(owner)
            if queue is None:
                queue = self._queues[owner] = collections.deque()
            if len(queue) + (owner in self._running) >= limit:
                if owner not in self._warned:
                    self._warned.add(owner)
                    logger.warning("callback queue full (%d pending): dropping messages; "
                                   "the callbacks are slower than the incoming rate "
                                   "(raise max_pending_callbacks to buffer more)", limit)
                return False
            queue.append(job)
            if len(queue) == 1 and owner not in self._running:
                self._ready.append(owner)
                if self._idle:
                    self._cond.notify()
                else:
                    self._grow()
        return True

    def _grow(self) -> None:
        """Start a worker when every worker is stuck in a slow callback (lock held).

        When the running callbacks are not slow yet, look again once they would be.
        """
        if self._workers == 0 or (self._workers < MAX_WORKERS and self._started and
                                  time.monotonic() - min(self._started.values()) > SLOW):
            self._start_worker()
        elif self._workers < MAX_WORKERS and not self._check_pending and self._schedule:
            self._check_pending = True
            self._schedule(SLOW, self._recheck)

    def _recheck(self) -> None:
        with self._cond:
            self._check_pending = False
            if self._ready and not self._idle:
                self._grow()

    def pending(self, owner: object) -> int:
        """Jobs of ``owner`` queued or running."""
        with self._cond:
            return len(self._queues.get(owner, ())) + (owner in self._running)

    def wait_idle(self, owner: object, timeout: float) -> bool:
        """Wait until ``owner`` has nothing queued or running (False on timeout)."""
        if threading.current_thread() in self._worker_threads:
            return True  # called from a callback: waiting for ourselves would deadlock
        with self._cond:
            return self._cond.wait_for(
                lambda: owner not in self._queues and owner not in self._running, timeout)

    def _start_worker(self) -> None:
        self._workers += 1
        thread = threading.Thread(target=self._run, name="isa-mqtt-callbacks", daemon=True)
        self._worker_threads.add(thread)
        thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._ready:
                    self._idle += 1
                    woken = self._cond.wait(IDLE_EXIT)
                    self._idle -= 1
                    if not woken and not self._ready and self._workers > 1:
                        self._workers -= 1
                        self._worker_threads.discard(me)
                        return
                owner = self._ready.popleft()
                job = self._queues[owner].popleft()
                self._running.add(owner)
                self._started[owner] = time.monotonic()
                if self._ready and not self._idle:
                    self._grow()
            try:
                job()
            except Exception:
                logger.exception("message callback raised")
            with self._cond:
                self._running.discard(owner)
                del self._started[owner]
                if self._queues[owner]:
                    self._ready.append(owner)
                else:
                    del self._queues[owner]
                    self._warned.discard(owner)
                    self._cond.notify_all()
