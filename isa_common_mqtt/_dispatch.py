"""The dispatcher: one thread that runs user callbacks for every session of the process.

The network thread never runs user code, so a slow callback cannot stall keepalive,
acknowledgements or other sessions. Each session has its own bound on queued callbacks;
when a session is at its bound the *newest* message is dropped, counted in that session's
``messages_dropped`` and logged at warning level once per burst. The network thread
never blocks on a slow callback.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

Job = Callable[[], object]


class Dispatcher:
    """Runs jobs in order on one daemon thread, started on first use."""

    _shared: Dispatcher | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Dispatcher:
        """The process-wide dispatcher."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        self._jobs: collections.deque[tuple[Job, object]] = collections.deque()
        self._pending: dict[object, int] = {}
        self._warned: set[object] = set()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def submit(self, job: Job, owner: object, limit: int) -> bool:
        """Queue ``job`` for ``owner``; False when ``owner`` already has ``limit`` queued."""
        with self._cond:
            pending = self._pending.get(owner, 0)
            if pending >= limit:
                if owner not in self._warned:
                    self._warned.add(owner)
                    logger.warning("callback queue full (%d pending): dropping messages; "
                                   "the callbacks are slower than the incoming rate "
                                   "(raise max_pending_callbacks to buffer more)", limit)
                return False
            self._pending[owner] = pending + 1
            self._jobs.append((job, owner))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isa-mqtt-callbacks",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def pending(self, owner: object) -> int:
        """Jobs of ``owner`` queued or running."""
        with self._cond:
            return self._pending.get(owner, 0)

    def wait_idle(self, owner: object, timeout: float) -> bool:
        """Wait until ``owner`` has no queued jobs (False on timeout)."""
        if threading.current_thread() is self._thread:
            return self.pending(owner) <= 1
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending.get(owner), timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job, owner = self._jobs.popleft()
            try:
                job()
            except Exception:
                logger.exception("message callback raised")
            with self._cond:
                left = self._pending[owner] - 1
                if left:
                    self._pending[owner] = left
                else:
                    del self._pending[owner]
                    self._warned.discard(owner)
                    self._cond.notify_all()
