"""Shared helpers of the benchmarks: private broker, timing, statistics and table printing.

Every benchmark measures our client and a reference written with raw paho-mqtt in the same
run, against its own private Mosquitto on a free loopback port, and prints plain-text tables.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.metadata
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from isa_common_mqtt.testing import MosquittoProcess, find_mosquitto

REPO_ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(64))
"""The 64-byte payload of every benchmark message."""
CONNECT_TIMEOUT = 10.0
WAIT_TIMEOUT = 120.0
"""Upper bound of any wait for acknowledgements; a benchmark that hits it reports an error."""


# -- command line ------------------------------------------------------------------------

def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark shares (``--runs``, ``--quick``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per figure; the median is reported")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (about 30 s for the whole suite)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every run's figure to stderr as it is measured")
    parser.add_argument("--no-header", action="store_true",
                        help="do not print the machine/versions header (run_all prints it once)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; print the header unless told not to (or in a worker)."""
    args = parser.parse_args(argv)
    if not args.no_header and not getattr(args, "worker", None):
        print_environment()
    return args


def progress(enabled: bool, text: str) -> None:
    """A progress line on stderr (with ``--verbose``)."""
    if enabled:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pick(value: Any, normal: Any, quick: Any, is_quick: bool) -> Any:
    """The explicit flag value if given, else the quick or normal default."""
    if value is not None:
        return value
    return quick if is_quick else normal


# -- broker ------------------------------------------------------------------------------

@dataclass
class Broker:
    """A started private Mosquitto and its process id (read from its pid file)."""

    process: MosquittoProcess
    pid_file: Path

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): its sockets stay open but nothing is read."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """CPU seconds the broker has used so far (ns resolution; Mosquitto is one thread)."""
        return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[0]) / 1e9


@contextlib.contextmanager
def broker(extra_config: str = "") -> Iterator[Broker]:
    """A private Mosquitto with default limits (``max_inflight_messages 20``), no persistence."""
    with tempfile.TemporaryDirectory(prefix="isa-bench-") as tmp:
        pid_file = Path(tmp) / "mosquitto.pid"
        config = f"pid_file {pid_file}\n{extra_config}"
        with MosquittoProcess(persistence=False, extra_config=config) as process:
            b = Broker(process, pid_file)
            try:
                yield b
            finally:
                with contextlib.suppress(OSError, ValueError):
                    b.resume()  # never leave a stopped broker behind


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit).

    Children started afterwards (the broker) inherit it. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# -- raw paho helpers ----------------------------------------------------------------------

def paho_client(client_id: str, host: str, port: int, *, loop_thread: bool = True,
                protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
                window: int | None = None,
                reconnect_on_failure: bool = True) -> paho.Client:
    """A raw paho client, connected (CONNACK received), with or without its loop thread."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         reconnect_on_failure=reconnect_on_failure)
    if window is not None:
        client.max_inflight_messages_set(window)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, keepalive=60)
    if loop_thread:
        client.loop_start()
        if not connected.wait(CONNECT_TIMEOUT):
            raise RuntimeError(f"paho client {client_id} got no CONNACK")
    else:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not connected.is_set():
            client.loop(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"paho client {client_id} got no CONNACK")
    return client


def paho_close(client: paho.Client, loop_thread: bool = True) -> None:
    client.disconnect()
    if loop_thread:
        client.loop_stop()
    else:
        with contextlib.suppress(Exception):
            client.loop(0.05)


def wait_info(info: paho.MQTTMessageInfo, what: str) -> None:
    """Wait for one paho message to complete; raise (never hang) after WAIT_TIMEOUT."""
    info.wait_for_publish(WAIT_TIMEOUT)
    if not info.is_published():
        raise RuntimeError(f"{what}: not acknowledged within {WAIT_TIMEOUT:g} s")


# -- measuring ---------------------------------------------------------------------------

def proc_status(field_name: str, pid: int | str = "self") -> int:
    """A kB field of /proc/<pid>/status (``VmRSS``, ``VmHWM``) or a count (``Threads``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """CPU seconds of this process, all threads (CLOCK_PROCESS_CPUTIME_ID)."""
    return time.process_time()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """Half the range relative to the median (0.03 means +-3 %)."""
    m = statistics.median(values)
    return (max(values) - min(values)) / 2 / m if m else 0.0


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Samples:
    """Per-run values of one figure, in run order."""

    values: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


# -- formatting --------------------------------------------------------------------------

def fmt_rate(value: float) -> str:
    return "-" if value != value else f"{value:,.0f}"


def fmt_ratio(ours: float, ref: float) -> str:
    if ours != ours or ref != ref or ref == 0:
        return "-"
    return f"{ours / ref:.2f}x"


def fmt_samples(s: Samples, fmt: Callable[[float], str] = fmt_rate) -> str:
    """``median +-spread%`` of a figure, or the short error that stopped it."""
    if s.error is not None and not s.values:
        return "ERROR"
    text = fmt(s.median)
    if len(s.values) > 1:
        text += f" ±{spread(s.values) * 100:.0f}%"
    return text


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]],
                notes: Sequence[str] = ()) -> None:
    """Print an aligned plain-text table (first column left-aligned, the rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True)]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print("=" * len(title))
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    for note in notes:
        print(f"  note: {note}")
    sys.stdout.flush()


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def optional_import(name: str) -> Any | None:
    """Import ``name`` if installed (aiomqtt, gmqtt); None when not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def mosquitto_version() -> str:
    exe = find_mosquitto()
    if exe is None:
        return "not found"
    proc = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=10)
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].strip() if first else "?"


def library_fingerprint() -> str:
    """Git HEAD of the repo, whether isa_common_mqtt differs from it, and a hash of its
    sources: the tree is edited while benchmarks run, so every report names what it measured."""
    digest = hashlib.sha1()
    for path in sorted((REPO_ROOT / "isa_common_mqtt").rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=REPO_ROOT, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "isa_common_mqtt"],
                               capture_output=True, text=True, cwd=REPO_ROOT,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "?", ""
    return (f"git {head}{' + uncommitted changes' if dirty else ''}, "
            f"isa_common_mqtt sources sha1 {digest.hexdigest()[:12]}")


_printed_environment = False


def print_environment() -> None:
    """One block naming the machine and the versions measured (once per process)."""
    global _printed_environment
    if _printed_environment:
        return
    _printed_environment = True
    load = os.getloadavg()
    print(f"python {platform.python_version()} on {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"paho-mqtt {version_of('paho-mqtt')}, {mosquitto_version()}, "
          f"isa-common-mqtt {version_of('isa-common-mqtt')}, "
          f"aiomqtt {version_of('aiomqtt') or 'not installed'}, "
          f"gmqtt {version_of('gmqtt') or 'not installed'}")
    print(f"library measured: {library_fingerprint()}")
    sys.stdout.flush()
