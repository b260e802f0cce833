"""A fault-injecting TCP proxy for tests: sits between a client and a broker on loopback.

One selector thread forwards bytes both ways and applies the faults a test switches on:
``cut()`` closes every connection now, ``stall()`` / ``resume()`` black-hole the traffic
(sockets stay open, nothing is forwarded either way, held bytes flow again on resume),
``slow(delay_s)`` holds each chunk for ``delay_s`` seconds, ``refuse()`` closes new
connections at once. ``heal()`` switches every fault off. The proxy listens on 127.0.0.1
only, caps its connections, and ``close()`` stops it within a bounded time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import threading
import time
from types import TracebackType

logger = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
_CHUNK = 65_536
_TICK = 0.05
"""Seconds the loop sleeps at most, so flag changes take effect promptly."""
_COMMAND_TIMEOUT = 5.0
_MAX_HELD = 4 * 1024 * 1024
"""Bytes held per direction before the proxy stops reading (back-pressure in slow mode)."""


class _Pipe:
    """One direction of a connection: bytes read from ``src``, waiting to go to ``dst``."""

    __slots__ = ("dst", "eof", "queue", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.eof = False


def _held(pipe: _Pipe) -> int:
    return sum(len(chunk) for _, chunk in pipe.queue)


class _Connection:
    """A client socket, its upstream socket, and the two pipes between them."""

    __slots__ = ("client", "closed", "pipes", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.pipes = (_Pipe(client, upstream), _Pipe(upstream, client))
        self.closed = False

    def pipe_from(self, sock: socket.socket) -> _Pipe:
        return self.pipes[0] if sock is self.client else self.pipes[1]

    def pipe_to(self, sock: socket.socket) -> _Pipe:
        return self.pipes[1] if sock is self.client else self.pipes[0]


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target``, with faults switched on demand."""

    def __init__(self, target_host: str, target_port: int, *,
                 max_connections: int = 64) -> None:
        if target_host not in (_LOOPBACK, "localhost", "::1"):
            raise ValueError("FaultProxy forwards to loopback brokers only")
        self._target = (target_host, target_port)
        self._max_connections = max_connections
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((_LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._connections: dict[socket.socket, _Connection] = {}
        self._commands: collections.deque[tuple[str, threading.Event]] = collections.deque()
        self._lock = threading.Lock()
        self._stalled = False
        self._delay = 0.0
        self._refusing = False
        self._running = True
        self.accepted = 0
        """Connections accepted and forwarded since the proxy started."""
        self.refused = 0
        """Connections closed at once because of ``refuse()`` or the connection cap."""
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- where it is ------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return _LOOPBACK

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections currently forwarded (or held)."""
        with self._lock:
            return len({id(c) for c in self._connections.values()})

    # -- faults (any thread) ------------------------------------------------------------------
    def cut(self) -> None:
        """Close every open connection now (both sides); new connections are still accepted."""
        self._command("cut")

    def stall(self) -> None:
        """Black-hole the traffic: keep sockets open, forward nothing in either direction."""
        self._stalled = True
        self._wake()

    def resume(self) -> None:
        """Forward again; bytes held during the stall go out in order."""
        self._stalled = False
        self._wake()

    def slow(self, delay_s: float) -> None:
        """Hold each chunk ``delay_s`` seconds before forwarding it (0 turns this off)."""
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._delay = delay_s
        self._wake()

    def refuse(self, on: bool = True) -> None:
        """Close new connections as soon as they are accepted (open ones are left alone)."""
        self._refusing = on
        self._wake()

    def heal(self) -> None:
        """Switch every fault off."""
        self._stalled = False
        self._delay = 0.0
        self._refusing = False
        self._wake()

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop forwarding, close every socket and join the thread (bounded)."""
        if not self._running:
            return
        self._command("stop")
        self._thread.join(_COMMAND_TIMEOUT)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FaultProxy({self.host}:{self.port} -> {self._target[0]}:{self._target[1]}, "
                f"stalled={self._stalled}, delay={self._delay}, refusing={self._refusing})")

    # -- internals ----------------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _command(self, name: str) -> None:
        done = threading.Event()
        self._commands.append((name, done))
        self._wake()
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"fault proxy did not carry out {name!r} in time")

    def _run(self) -> None:
        try:
            while self._running:
                for key, mask in self._selector.select(self._timeout()):
                    self._on_event(key.fileobj, key.data, mask)  # type: ignore[arg-type]
                self._run_commands()
                self._flush()
                self._update_interest()
        except Exception:
            logger.exception("fault proxy crashed")
        finally:
            self._running = False
            for conn in list(self._connections.values()):
                self._close_connection(conn)
            while self._commands:  # nobody waits forever on a dead proxy
                self._commands.popleft()[1].set()

    def _timeout(self) -> float:
        if self._commands:
            return 0
        if self._stalled:
            return _TICK
        heads = [p.queue[0][0] for c in self._connections.values() for p in c.pipes if p.queue]
        if not heads:
            return _TICK
        return min(max(min(heads) - time.monotonic(), 0), _TICK)

    def _on_event(self, sock: socket.socket, data: object, mask: int) -> None:
        if data == "wake":
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        elif data == "accept":
            self._accept()
        elif mask & selectors.EVENT_READ and sock in self._connections and not self._stalled:
            self._read(self._connections[sock], sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        distinct = len({id(c) for c in self._connections.values()})
        if self._refusing or distinct >= self._max_connections:
            self.refused += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(self._target, timeout=2.0)
        except OSError as exc:
            logger.info("fault proxy: upstream %s:%d unreachable: %s", *self._target, exc)
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(client, upstream)
        with self._lock:
            self._connections[client] = conn
            self._connections[upstream] = conn
        self._selector.register(client, selectors.EVENT_READ, "conn")
        self._selector.register(upstream, selectors.EVENT_READ, "conn")
        self.accepted += 1

    def _read(self, conn: _Connection, sock: socket.socket) -> None:
        pipe = conn.pipe_from(sock)
        try:
            chunk = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            pipe.eof = True  # forward what is held, then close both sides
            return
        pipe.queue.append((time.monotonic() + self._delay, chunk))

    def _flush(self) -> None:
        if self._stalled:
            return
        now = time.monotonic()
        for conn in list({id(c): c for c in self._connections.values()}.values()):
            for pipe in conn.pipes:
                while pipe.queue and pipe.queue[0][0] <= now and not conn.closed:
                    due, chunk = pipe.queue[0]
                    try:
                        sent = pipe.dst.send(chunk)
                    except BlockingIOError:
                        break
                    except OSError:
                        self._close_connection(conn)
                        break
                    if sent < len(chunk):
                        pipe.queue[0] = (due, chunk[sent:])
                        break
                    pipe.queue.popleft()
                if pipe.eof and not pipe.queue and not conn.closed:
                    self._close_connection(conn)

    def _update_interest(self) -> None:
        """Watch each socket for what it can do now; nothing at all while stalled."""
        now = time.monotonic()
        for sock, conn in list(self._connections.items()):
            if conn.closed:
                continue
            incoming, outgoing = conn.pipe_from(sock), conn.pipe_to(sock)
            events = 0
            if not self._stalled:
                if not incoming.eof and _held(incoming) < _MAX_HELD:
                    events |= selectors.EVENT_READ
                if outgoing.queue and outgoing.queue[0][0] <= now:
                    events |= selectors.EVENT_WRITE
            try:
                current = self._selector.get_key(sock).events
            except KeyError:
                current = 0
            if current == events:
                continue
            with contextlib.suppress(KeyError, ValueError, OSError):
                if not events:
                    self._selector.unregister(sock)
                elif not current:
                    self._selector.register(sock, events, "conn")
                else:
                    self._selector.modify(sock, events, "conn")

    def _run_commands(self) -> None:
        while self._commands:
            name, done = self._commands.popleft()
            if name == "cut":
                for conn in list({id(c): c for c in self._connections.values()}.values()):
                    self._close_connection(conn)
            elif name == "stop":
                self._running = False
            done.set()

    def _close_connection(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        for sock in (conn.client, conn.upstream):
            with self._lock:
                self._connections.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()
