"""The durable outbox: accepted QoS>0 messages kept on disk until the broker acknowledged them.

Opt-in with ``MQTTClient(..., persistence_path="outbox.db")``. Guarantee: **at least once
across a process crash** (kill -9 included). A QoS>0 message is committed to an SQLite
database (WAL, ``synchronous=NORMAL``: safe against a process crash, not against power loss)
before ``publish`` starts waiting; its row is deleted after the broker's acknowledgement.
The next ``connect`` with the same ``client_id`` and path sends every row left, oldest
first, before new messages. A crash between the acknowledgement and the delete makes
the message go out twice; QoS 2 exactly-once does not survive a crash of the publisher.

Bound: ``max_outbox_messages`` rows per file (option, default 100,000); past it ``publish``
raises BufferFullError and stores nothing. Deletes are batched (every 256 acknowledgements,
at each keepalive check of the session, and on close), so a crash can resend up to that
many acknowledged messages.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from ._errors import BufferFullError

DELETE_BATCH = 256


class Outbox:
    """One SQLite file shared by the sessions of a client, rows keyed by client_id."""

    def __init__(self, path: str | Path, max_messages: int) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY "
                         "AUTOINCREMENT, client_id TEXT NOT NULL, topic TEXT NOT NULL, "
                         "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_client ON outbox (client_id, seq)")
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        self._done: list[int] = []

    def add(self, client_id: str, messages: list[tuple[str, bytes, int, bool]]) -> list[int]:
        """Commit ``messages``; return their sequence numbers (all or nothing)."""
        with self._lock:
            if self._count + len(messages) > self.max_messages:
                raise BufferFullError(
                    f"the durable outbox {self.path} holds {self._count} unacknowledged "
                    f"messages (max_outbox_messages {self.max_messages}); nothing was stored")
            cursor = self._db.cursor()
            cursor.execute("BEGIN")
            seqs = []
            for topic, payload, qos, retain in messages:
                cursor.execute("INSERT INTO outbox (client_id, topic, payload, qos, retain) "
                               "VALUES (?, ?, ?, ?, ?)", (client_id, topic, payload, qos,
                                                          int(retain)))
                seqs.append(int(cursor.lastrowid or 0))
            cursor.execute("COMMIT")
            self._count += len(messages)
            return seqs

    def done(self, seqs: Iterable[int]) -> None:
        """Mark acknowledged; rows are deleted in batches."""
        with self._lock:
            self._done.extend(seqs)
            if len(self._done) >= DELETE_BATCH:
                self._delete_done()

    def flush(self) -> None:
        """Delete every row acknowledged so far."""
        with self._lock:
            self._delete_done()

    def _delete_done(self) -> None:
        if self._done:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in self._done])
            self._count -= len(self._done)
            self._done.clear()

    def pending(self, client_id: str) -> list[tuple[int, str, bytes, int, bool]]:
        """Rows of ``client_id`` not yet acknowledged, oldest first."""
        with self._lock:
            self._delete_done()
            rows = self._db.execute("SELECT seq, topic, payload, qos, retain FROM outbox "
                                    "WHERE client_id = ? ORDER BY seq", (client_id,))
            return [(int(s), str(t), bytes(p), int(q), bool(r)) for s, t, p, q, r in rows]

    def close(self) -> None:
        with self._lock:
            self._delete_done()
            self._db.close()
