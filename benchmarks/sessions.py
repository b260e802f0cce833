"""Many sessions in one process: connect time, threads, memory and idle CPU, ours vs raw paho.

Each kind runs in its own fresh Python process (so RSS, threads and file descriptors are its
own) against one private Mosquitto. Kinds:

* ``ours``: one ``MQTTClient(protocol="3.1.1", track_in_registry=False)``, ``connect()`` N
  times in a row (each returns after CONNACK).
* ``ours-many``: the same client, ``connect_many()`` with N client_ids: every CONNECT is
  sent before any CONNACK is awaited (what a gateway opening its devices' sessions uses).
* ``paho-threads``: N raw paho clients, ``connect()`` + ``loop_start()`` each: the usual
  paho pattern, one thread and a socket pair per client; its ``select()`` cannot watch a
  file descriptor >= 1024, so past about 340 clients connections fail.
* ``paho-selector``: N raw paho clients served by one ``selectors`` thread through paho's
  socket hooks: the leanest raw-paho design, a floor for the cost of a paho connection.

Each kind connects in its own turn; then all of them idle together for the idle window
(idle clients barely compete for CPU, and it saves two idle windows) -- unless the broker
lacks file descriptors for all kinds at once (10,000 sessions), then one kind at a time.

    python -m benchmarks.sessions [--sessions 1000|10000] [--idle 10] [--quick] [-v]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import selectors
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from isa_common_mqtt._engines import LOOPBACK, free_ports

if TYPE_CHECKING:
    from isa_common_mqtt import MQTTClient

from ._common import (
    REPO_ROOT,
    Broker,
    base_parser,
    broker,
    cpu_seconds,
    fmt_ratio,
    median,
    parse,
    pick,
    print_table,
    proc_status,
    progress,
    raise_fd_limit,
)

KINDS = ("ours", "ours-many", "paho-selector", "paho-threads")
LABELS = {
    "ours": "ours: MQTTClient.connect() x N",
    "ours-many": "ours: MQTTClient.connect_many(N ids)",
    "paho-selector": "ref paho: one selector thread (socket hooks)",
    "paho-threads": "ref paho: loop_start() per client",
}
Started = tuple[Callable[[], int], Callable[[], None], Callable[[], float]]
"""(count connected, close all, perf_counter time when the connect loop had ended and the
last CONNACK had arrived)"""
CONNACK_WAIT = 60.0
"""Seconds the raw paho kinds wait for all CONNACKs."""
STALL = 3.0
"""...but they stop waiting after this many seconds without a new CONNACK."""
TIME_WAIT_LIMIT = 2_000
TIME_WAIT_SETTLE = 75.0
"""Before a raw paho kind, wait up to this many seconds for TIME_WAIT sockets to fall below
TIME_WAIT_LIMIT (the kernel keeps them 60 s)."""


# -- worker side ------------------------------------------------------------------------------

def _wait_connacks(count: Callable[[], int], n: int) -> None:
    deadline = time.monotonic() + CONNACK_WAIT
    last, last_change = -1, time.monotonic()
    while count() < n and time.monotonic() < deadline:
        now = count()
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > STALL:
            break  # no progress: the rest will not connect
        time.sleep(0.01)


def _count_connected(clients: list[paho.Client]) -> Callable[[], int]:
    return lambda: sum(1 for c in clients if c.is_connected())


def _ours(host: str, port: int, n: int, deadline: float) -> Started:
    client = _our_client(host, port)
    tag = uuid.uuid4().hex[:6]
    sids = []
    for i in range(n):
        if time.monotonic() > deadline:
            break
        sids.append(client.connect(f"bench-s-{tag}-{i}")["session_id"])
    return _our_started(client, sids)


def _ours_many(host: str, port: int, n: int, deadline: float) -> Started:
    client = _our_client(host, port)
    tag = uuid.uuid4().hex[:6]
    result = client.connect_many(f"bench-m-{tag}-{i}" for i in range(n))
    for error in result["errors"][:3]:
        print(f"connect_many: {error}", file=sys.stderr)
    return _our_started(client, [s["session_id"] for s in result["sessions"]])


def _our_client(host: str, port: int) -> MQTTClient:
    from isa_common_mqtt import MQTTClient

    return MQTTClient(host, port, protocol="3.1.1", track_in_registry=False)


def _our_started(client: MQTTClient, sids: list[str]) -> Started:
    def connected() -> int:
        return sum(1 for s in sids if client.get_connection_status(s)["connected"])

    return connected, client.close, time.perf_counter


def _paho_threads(host: str, port: int, n: int, deadline: float) -> Started:
    tag = uuid.uuid4().hex[:6]
    acks: list[float] = []
    clients = []
    for i in range(n):
        if time.monotonic() > deadline:
            break
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pt-{tag}-{i}",
                        protocol=paho.MQTTv311, reconnect_on_failure=False)
        c.on_connect = lambda *_a: acks.append(time.perf_counter())
        try:
            c.connect(host, port, 60)
            c.loop_start()
        except (OSError, ValueError) as exc:
            print(f"paho client {i}: {exc}", file=sys.stderr)
            break
        clients.append(c)
    loop_end = time.perf_counter()
    _wait_connacks(lambda: len(acks), n)

    def close() -> None:
        for c in clients:
            c.disconnect()
        for c in clients:
            c.loop_stop()

    return _count_connected(clients), close, lambda: max([loop_end, *acks])


def _paho_selector(host: str, port: int, n: int, deadline: float) -> Started:
    sel = selectors.DefaultSelector()
    tag = uuid.uuid4().hex[:6]
    acks: list[float] = []
    clients: list[paho.Client] = []
    running = True

    def loop() -> None:
        next_misc = time.monotonic() + 1
        while running:
            for key, mask in sel.select(0.2):
                c = key.data
                if mask & selectors.EVENT_READ:
                    c.loop_read()
                if mask & selectors.EVENT_WRITE:
                    c.loop_write()
            if time.monotonic() >= next_misc:
                next_misc = time.monotonic() + 1
                for c in list(clients):
                    c.loop_misc()

    def on_open(c: paho.Client, _userdata: Any, sock: Any) -> None:
        try:
            sel.register(sock, selectors.EVENT_READ, c)
        except KeyError:  # a closed socket's number, reused before we saw the close
            sel.modify(sock, selectors.EVENT_READ, c)

    def on_close(_c: paho.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(sock)

    def modify(c: paho.Client, sock: Any, events: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.modify(sock, events, c)

    for i in range(n):
        if time.monotonic() > deadline:
            break
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-ps-{tag}-{i}",
                        protocol=paho.MQTTv311, reconnect_on_failure=False)
        c.on_connect = lambda *_a: acks.append(time.perf_counter())
        c.on_socket_open = on_open
        c.on_socket_close = on_close
        c.on_socket_register_write = lambda cl, _u, s: modify(
            cl, s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        c.on_socket_unregister_write = lambda cl, _u, s: modify(cl, s, selectors.EVENT_READ)
        c.connect(host, port, 60)
        clients.append(c)
        if i == 0:
            threading.Thread(target=loop, name="bench-selector", daemon=True).start()
    loop_end = time.perf_counter()
    _wait_connacks(lambda: len(acks), n)

    def close() -> None:
        nonlocal running
        for c in clients:
            c.disconnect()
        time.sleep(0.3)  # the selector thread writes the DISCONNECTs
        running = False

    return _count_connected(clients), close, lambda: max([loop_end, *acks])


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def _expect(command: str) -> None:
    line = sys.stdin.readline().strip()
    if line != command:
        raise SystemExit(f"sessions worker: expected {command}, got {line!r}")


def worker(kind: str, host: str, port: int, n: int, budget: float) -> None:
    """Measure one kind in this (fresh) process, driven by the parent over stdin/stdout:
    connect and report; IDLE ... STOP brackets the idle window; CLOSE closes everything."""
    raise_fd_limit(4 * n + 1_000)
    start_kind = {"ours": _ours, "ours-many": _ours_many, "paho-threads": _paho_threads,
                  "paho-selector": _paho_selector}[kind]
    if kind.startswith("ours"):
        # Load the client's modules now: imports are not per-session memory.
        from isa_common_mqtt import MQTTClient  # noqa: F401
    gc.collect()
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    connected, close, last_connack = start_kind(host, port, n, time.monotonic() + budget)
    connect_s = last_connack() - t0
    gc.collect()
    rss1 = proc_status("VmRSS")
    up_before = connected()
    _emit({"kind": kind, "n": n, "connected": up_before, "connect_s": connect_s,
           "rss_kib_per_session": (rss1 - rss0) / max(up_before, 1),
           "rss_mib_total": (rss1 - rss0) / 1024, "threads_total": proc_status("Threads"),
           "threads_lib": sum(1 for t in threading.enumerate()
                              if t.name.startswith("isa-mqtt-")),
           "fds": len(os.listdir("/proc/self/fd"))})
    _expect("IDLE")
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    _expect("STOP")
    idle_cpu = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0) * 100
    _emit({"idle_cpu_pct": idle_cpu, "connected_after_idle": connected()})
    _expect("CLOSE")
    t1 = time.perf_counter()
    close()
    _emit({"close_s": time.perf_counter() - t1})


# -- parent side ------------------------------------------------------------------------------

class Worker:
    """A worker process and the figures it reported so far."""

    def __init__(self, kind: str, host: str, port: int, n: int, budget: float) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sessions", "--worker", kind, host, str(port),
             str(n), str(budget)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.figures: dict[str, Any] = {}

    def read(self, timeout: float) -> None:
        """Read the worker's next report; raise (never hang) after ``timeout`` seconds."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"sessions worker {self.kind} reported nothing within "
                               f"{timeout:g} s (pid {self.proc.pid})")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"sessions worker {self.kind} exited ({self.proc.returncode})")
        self.figures.update(json.loads(line))

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def time_wait_sockets() -> int:
    """TCP sockets of this machine in TIME_WAIT (from /proc/net/sockstat)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("tw") + 1])
    return 0


def settle_time_wait(verbose: bool) -> None:
    """Wait (bounded) until the TIME_WAIT sockets earlier kinds left have mostly expired:
    paho binds to port 0 before connecting, and a bind cannot reuse a port in TIME_WAIT."""
    deadline = time.monotonic() + TIME_WAIT_SETTLE
    while time_wait_sockets() > TIME_WAIT_LIMIT and time.monotonic() < deadline:
        time.sleep(1)
    progress(verbose, f"TIME_WAIT sockets before a paho kind: {time_wait_sockets():,}")


def run_group(b: Broker, ports: dict[str, int], kinds: list[str], n: int, idle: float,
              budget: float, verbose: bool) -> tuple[dict[str, dict[str, Any]], float]:
    """Connect each kind in turn (one at a time), then measure their idle window together;
    also return Mosquitto's CPU over that window, in % of one core."""
    workers: list[Worker] = []
    try:
        for kind in kinds:
            if kind.startswith("paho"):
                settle_time_wait(verbose)
            w = Worker(kind, b.host, ports[kind], n, budget)
            workers.append(w)
            w.read(timeout=budget + CONNACK_WAIT + 60)
            progress(verbose, f"{kind}: {w.figures}")
        time.sleep(0.5)  # let connect-time work (CONNACK handling) settle everywhere
        broker0 = b.cpu_seconds()
        for w in workers:
            w.send("IDLE")
        time.sleep(idle)
        for w in workers:
            w.send("STOP")
        broker_idle = (b.cpu_seconds() - broker0) / idle * 100
        for w in workers:
            w.read(timeout=60)
        for w in workers:
            w.send("CLOSE")
            w.read(timeout=60 + n * 0.05)
            w.proc.wait(timeout=60)
            progress(verbose, f"{w.kind}: {w.figures}")
    finally:
        for w in workers:
            w.kill()
    return {w.kind: w.figures for w in workers}, broker_idle


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, help="sessions per process (1,000; try 10,000)")
    parser.add_argument("--idle", type=float, help="seconds of idle CPU measurement (10)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--budget", type=float,
                        help="seconds each kind may spend connecting; past it, it stops and "
                             "reports how many it connected (60)")
    parser.add_argument("--worker", nargs=5, metavar=("KIND", "HOST", "PORT", "N", "BUDGET"),
                        help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if args.worker:
        kind, host, port, n, budget = args.worker
        worker(kind, host, int(port), int(n), float(budget))
        return
    runs = pick(args.runs, 1, 1, args.quick)
    n = pick(args.sessions, 1_000, 200, args.quick)
    idle = pick(args.idle, 10.0, 2.0, args.quick)
    args.budget = pick(args.budget, 60.0, 20.0, args.quick)
    kinds = [k for k in args.kinds.split(",") if k]
    limit = raise_fd_limit(len(kinds) * 4 * n + 1_000)  # before the broker: it inherits it
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    # Idle together only if the broker has file descriptors for every kind at once.
    groups = [kinds] if len(kinds) * n + 500 <= limit else [[k] for k in kinds]
    broker_idle: dict[str, list[float]] = {}
    # A listener per kind: the TIME_WAIT sockets one kind's N closes leave behind are
    # 4-tuples to its own port, so they cannot slow the next kind's connect() port search.
    ports = dict(zip(kinds, free_ports(len(kinds)), strict=True))
    with broker("".join(f"listener {p} {LOOPBACK}\n" for p in ports.values())) as b:
        for _ in range(runs):
            for group in groups:
                figures, b_idle = run_group(b, ports, group, n, idle, args.budget,
                                            args.verbose)
                for kind, f in figures.items():
                    results[kind].append(f)
                broker_idle.setdefault(" + ".join(group), []).append(b_idle)
    report(results, n, idle, runs, limit, {g: median(v) for g, v in broker_idle.items()},
           args.budget)


def _median_of(rs: list[dict[str, Any]], key: str) -> float:
    return float(median([r[key] for r in rs]))


def report(results: dict[str, list[dict[str, Any]]], n: int, idle: float, runs: int,
           limit: int, broker_idle: dict[str, float], budget: float) -> None:
    rows = []
    for kind, rs in results.items():
        m = {k: _median_of(rs, k) for k in rs[0] if k not in ("kind",)}
        rows.append([LABELS[kind], f"{m['connected']:,.0f}/{n:,}",
                     f"{m['connected_after_idle']:,.0f}", f"{m['connect_s']:.2f}",
                     f"{m['close_s']:.2f}", f"{m['threads_lib']:.0f}/{m['threads_total']:.0f}",
                     f"{m['fds']:,.0f}", f"{m['rss_kib_per_session']:.1f}",
                     f"{m['rss_mib_total']:.1f}", f"{m['idle_cpu_pct']:.2f}"])
    notes = [f"RLIMIT_NOFILE raised to {limit:,} before the broker started (it inherits it)",
             "threads: named isa-mqtt-* / all threads of the process (main thread included)",
             "RSS/session: VmRSS growth from before the first connect to all connected, "
             "divided by the sessions connected",
             f"idle CPU: process CPU time over {idle:g} s idle, in % of one core" + (
                 "; all kinds idled at the same time (each connected on its own before)"
                 if len(broker_idle) == 1 and len(results) > 1 else
                 "; one kind at a time (the broker lacks fds for all at once)"),
             "Mosquitto CPU over the idle window, in % of one core: " + ", ".join(
                 f"{g}: {v:.2f}" for g, v in broker_idle.items()),
             "paho loop_start clients use reconnect_on_failure=False, so failed ones stay down",
             f"paho binds to port 0 before each connect, which cannot reuse a port in "
             f"TIME_WAIT: before each paho kind the benchmark waits (up to "
             f"{TIME_WAIT_SETTLE:g} s) until fewer than {TIME_WAIT_LIMIT:,} TIME_WAIT sockets "
             "are left from earlier kinds; ours connects without that bind",
             f"connect s: first connect to last CONNACK; each kind stops connecting after "
             f"{budget:g} s (--budget) and then reports fewer connected"]
    if runs > 1:
        notes.insert(0, f"median of {runs} runs")
    print_table(f"{n:,} idle sessions in one process (3.1.1, keepalive 60 s)",
                ["client", "connected", "after idle", "connect s", "close s",
                 "threads", "fds", "RSS KiB/sess", "RSS MiB", "idle CPU %"],
                rows, notes)
    keys = ("connect_s", "rss_kib_per_session", "idle_cpu_pct")
    figures = {kind: {k: _median_of(rs, k) for k in keys} for kind, rs in results.items()}
    ratio_rows = []
    for ours in (k for k in results if k.startswith("ours")):
        for ref in (k for k in results if not k.startswith("ours")):
            ratio_rows.append([f"{LABELS[ours]} / {LABELS[ref]}",
                               *(fmt_ratio(figures[ours][k], figures[ref][k]) for k in keys)])
    if ratio_rows:
        short = [LABELS[k] for k, rs in results.items() if _median_of(rs, "connected") < n]
        print_table("Session ratios (ours / reference, <1 means ours is cheaper)",
                    ["comparison", "connect s", "RSS/session", "idle CPU"], ratio_rows,
                    [f"{label} connected fewer than {n:,}: its figures are per connected "
                     "session" for label in short])

if __name__ == "__main__":
    main()
