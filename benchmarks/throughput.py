"""Publish throughput: messages per second until the last one is safe, ours next to raw paho.

"Safe" means what each API promises when it returns: QoS 0 written to the socket, QoS 1
PUBACK, QoS 2 PUBCOMP. No subscriber; the broker is a private Mosquitto with default limits
(``max_inflight_messages 20``). Every run opens a fresh connection (not timed).

    python -m benchmarks.throughput [--runs 5] [--messages 5000] [--quick] [-v]
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from isa_common_mqtt import MQTTClient

from ._common import (
    PAYLOAD,
    WAIT_TIMEOUT,
    Broker,
    Samples,
    base_parser,
    broker,
    cpu_seconds,
    fmt_ratio,
    fmt_samples,
    optional_import,
    paho_client,
    paho_close,
    parse,
    pick,
    print_table,
    progress,
    version_of,
    wait_info,
)

TOPIC = "bench/throughput"
_QUIET = logging.getLogger("benchmarks.quiet")
_QUIET.setLevel(logging.CRITICAL)  # aiomqtt warns on every publish past 10 pending
QOS_LEVELS = (0, 1, 2)


@dataclass
class Measure:
    """One timed run: wall seconds, this process's CPU seconds and the broker's."""

    wall: float
    cpu: float
    broker_cpu: float


@dataclass
class Variant:
    """A way of publishing ``messages`` messages at one QoS."""

    label: str
    qos: int
    messages: int
    run: Callable[[int, int], None]
    """run(qos, messages): publish and return once every message is safe (timed inside)."""
    rates: Samples = field(default_factory=Samples)
    cpu_us: Samples = field(default_factory=Samples)
    broker_us: Samples = field(default_factory=Samples)


class Timer:
    """Times the publish phase only; variants call start() after connecting, stop() before
    disconnecting."""

    def __init__(self, b: Broker) -> None:
        self._broker = b
        self.result: Measure | None = None

    def start(self) -> None:
        self._t = (time.perf_counter(), cpu_seconds(), self._broker.cpu_seconds())

    def stop(self) -> None:
        wall, cpu, bcpu = self._t
        self.result = Measure(time.perf_counter() - wall, cpu_seconds() - cpu,
                              self._broker.cpu_seconds() - bcpu)


def _cid(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


# -- references: raw paho-mqtt 2.2, MQTT 3.1.1 ------------------------------------------------

def paho_connect_per_publish(b: Broker, t: Timer) -> Callable[[int, int], None]:
    """The old approach: a new connection (thread, CONNACK) for every message."""
    def run(qos: int, n: int) -> None:
        t.start()
        for _ in range(n):
            client = paho_client(_cid("cpp"), b.host, b.port)
            wait_info(client.publish(TOPIC, PAYLOAD, qos), "connect-per-publish")
            paho_close(client)
        t.stop()
    return run


def paho_one_at_a_time(b: Broker, t: Timer) -> Callable[[int, int], None]:
    def run(qos: int, n: int) -> None:
        client = paho_client(_cid("paho-wait"), b.host, b.port)
        t.start()
        for _ in range(n):
            wait_info(client.publish(TOPIC, PAYLOAD, qos), "paho publish+wait")
        t.stop()
        paho_close(client)
    return run


def paho_pipelined_thread(b: Broker, t: Timer) -> Callable[[int, int], None]:
    """publish() everything (paho window 20, unlimited queue), loop_start thread does I/O."""
    def run(qos: int, n: int) -> None:
        client = paho_client(_cid("paho-pipe"), b.host, b.port)
        t.start()
        infos = [client.publish(TOPIC, PAYLOAD, qos) for _ in range(n)]
        wait_info(infos[-1], "paho pipelined")
        t.stop()
        _check_all_published(infos)
        paho_close(client)
    return run


def paho_pipelined_manual(b: Broker, t: Timer) -> Callable[[int, int], None]:
    """One thread, no loop thread: publish() writes inline; loop_read() picks up acks."""
    def run(qos: int, n: int) -> None:
        client = paho_client(_cid("paho-manual"), b.host, b.port, loop_thread=False)
        t.start()
        infos = []
        for _ in range(n):
            infos.append(client.publish(TOPIC, PAYLOAD, qos))
            client.loop_read(100)  # non-blocking socket: returns at once when nothing came
        last = infos[-1]
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not last.is_published():
            client.loop(0.5)
            if time.monotonic() > deadline:
                raise RuntimeError("paho manual loop: not acknowledged in time")
        t.stop()
        _check_all_published(infos)
        paho_close(client, loop_thread=False)
    return run


def _check_all_published(infos: list[paho.MQTTMessageInfo]) -> None:
    missing = sum(1 for i in infos if not i.is_published())
    if missing:
        raise RuntimeError(f"{missing} message(s) not published")


# -- ours ------------------------------------------------------------------------------------

def ours_batch(b: Broker, t: Timer, protocol: str) -> Callable[[int, int], None]:
    def run(qos: int, n: int) -> None:
        client = MQTTClient(b.host, b.port, protocol=protocol, track_in_registry=False)
        sid = client.connect(_cid("ours-batch"))["session_id"]
        messages = [{"topic": TOPIC, "payload": PAYLOAD, "qos": qos} for _ in range(n)]
        t.start()
        result = client.publish_batch(sid, messages)
        t.stop()
        client.close()
        if result["published_count"] != n:
            raise RuntimeError(f"publish_batch: {result['failed_count']} failed: "
                               f"{result['errors'][:1]}")
    return run


def ours_one_at_a_time(b: Broker, t: Timer, protocol: str) -> Callable[[int, int], None]:
    def run(qos: int, n: int) -> None:
        client = MQTTClient(b.host, b.port, protocol=protocol, track_in_registry=False)
        sid = client.connect(_cid("ours-one"))["session_id"]
        t.start()
        for _ in range(n):
            client.publish(sid, TOPIC, PAYLOAD, qos)
        t.stop()
        client.close()
    return run


# -- other asyncio libraries (optional) ------------------------------------------------------

def aiomqtt_run(b: Broker, t: Timer, pipelined: bool) -> Callable[[int, int], None]:
    aiomqtt = optional_import("aiomqtt")
    assert aiomqtt is not None

    async def main(qos: int, n: int) -> None:
        async with aiomqtt.Client(b.host, b.port, identifier=_cid("aiomqtt"),
                                  protocol=aiomqtt.ProtocolVersion.V311,
                                  logger=_QUIET) as client:
            t.start()
            if pipelined:
                await asyncio.gather(*(client.publish(TOPIC, PAYLOAD, qos, timeout=WAIT_TIMEOUT)
                                       for _ in range(n)))
            else:
                for _ in range(n):
                    await client.publish(TOPIC, PAYLOAD, qos, timeout=WAIT_TIMEOUT)
            t.stop()

    return lambda qos, n: asyncio.run(main(qos, n))


def gmqtt_run(b: Broker, t: Timer) -> Callable[[int, int], None]:
    """gmqtt publish() is fire-and-forget with no in-flight cap; completion is read from its
    store of unacknowledged messages (QoS 0: a final QoS 1 message, acknowledged in order)."""
    gmqtt = optional_import("gmqtt")
    assert gmqtt is not None
    from gmqtt.mqtt.constants import MQTTv311  # type: ignore[import-untyped, import-not-found, unused-ignore]

    async def main(qos: int, n: int) -> None:
        client = gmqtt.Client(_cid("gmqtt"))
        await client.connect(b.host, b.port, version=MQTTv311)
        t.start()
        for _ in range(n):
            client.publish(TOPIC, PAYLOAD, qos=qos)
        if qos == 0:
            client.publish(TOPIC, PAYLOAD, qos=1)
        await asyncio.wait_for(client._persistent_storage.wait_empty(), WAIT_TIMEOUT)
        t.stop()
        await client.disconnect()

    return lambda qos, n: asyncio.run(main(qos, n))


# -- the benchmark ---------------------------------------------------------------------------

def build_variants(b: Broker, t: Timer, n: int, n_single: int, n_cpp: int,
                   notes: list[str]) -> list[Variant]:
    v: list[Variant] = []

    def add(label: str, run: Callable[[int, int], None], messages: int,
            qos_levels: tuple[int, ...] = QOS_LEVELS) -> None:
        v.extend(Variant(label, q, messages, run) for q in qos_levels)

    add("ref paho: connect per publish (old approach)", paho_connect_per_publish(b, t), n_cpp,
        (1,))
    add("ref paho: publish + wait_for_publish each", paho_one_at_a_time(b, t), n_single)
    add("ref paho: pipelined, window 20, loop_start", paho_pipelined_thread(b, t), n)
    add("ref paho: pipelined, window 20, one thread", paho_pipelined_manual(b, t), n)
    add("ours: publish() each (3.1.1)", ours_one_at_a_time(b, t, "3.1.1"), n_single)
    add("ours: publish_batch (3.1.1)", ours_batch(b, t, "3.1.1"), n)
    add("ours: publish_batch (MQTT 5)", ours_batch(b, t, "5"), n)
    if optional_import("aiomqtt") is not None:
        add(f"aiomqtt {version_of('aiomqtt')}: await publish each",
            aiomqtt_run(b, t, pipelined=False), n_single)
        # Fewer messages: every aiomqtt publish() copies the list of pending calls, so a
        # gather of n publishes costs O(n^2).
        add(f"aiomqtt {version_of('aiomqtt')}: gather (window 20), {n_single:,} msgs",
            aiomqtt_run(b, t, pipelined=True), n_single)
    else:
        notes.append("aiomqtt: not installed (pip install aiomqtt to measure it)")
    if optional_import("gmqtt") is not None:
        add(f"gmqtt {version_of('gmqtt')}: publish all, wait acks", gmqtt_run(b, t), n, (0, 1))
        notes.append("gmqtt QoS 2 not measured: gmqtt has no in-flight cap and Mosquitto "
                     "silently discards QoS 2 messages past its max_inflight_messages (20)")
    else:
        notes.append("gmqtt: not installed (pip install gmqtt to measure it)")
    return v


def measure(variants: list[Variant], t: Timer, runs: int, verbose: bool) -> None:
    """Interleave: every round runs each variant once, so load spikes hit all of them."""
    for _ in range(runs):
        for var in variants:
            if var.rates.error is not None:
                continue
            try:
                var.run(var.qos, var.messages)
            except Exception as exc:  # keep measuring the others; the table says ERROR
                var.rates.error = f"{type(exc).__name__}: {exc}"
                continue
            m = t.result
            assert m is not None
            var.rates.values.append(var.messages / m.wall)
            var.cpu_us.values.append(m.cpu / var.messages * 1e6)
            var.broker_us.values.append(m.broker_cpu / var.messages * 1e6)
            progress(verbose, f"{var.label} QoS {var.qos}: {var.rates.values[-1]:,.0f} msg/s "
                     f"({m.wall:.2f} s)")


def report(variants: list[Variant], runs: int, n: int, n_single: int, n_cpp: int,
           notes: list[str]) -> None:
    labels = list(dict.fromkeys(v.label for v in variants))
    by = {(v.label, v.qos): v for v in variants}

    def cell(label: str, qos: int, attr: str = "rates") -> str:
        var = by.get((label, qos))
        if var is None:
            return "-"
        samples: Samples = getattr(var, attr)
        if attr == "rates":
            return fmt_samples(samples)
        return fmt_samples(samples, lambda x: f"{x:.1f}")

    rows = [[label, *(cell(label, q) for q in QOS_LEVELS)] for label in labels]
    errors = [f"{v.label} QoS {v.qos}: {v.rates.error}" for v in variants if v.rates.error]
    print_table(
        f"Publish throughput, msg/s (median of {runs} runs ± half-range; 64-byte payload; "
        f"{n:,} msgs pipelined, {n_single:,} one at a time, {n_cpp:,} connect-per-publish)",
        ["client / mode", "QoS 0", "QoS 1", "QoS 2"], rows, notes + errors)

    def rate(label: str, qos: int) -> float:
        var = by.get((label, qos))
        return var.rates.median if var is not None and var.rates.values else float("nan")

    batch, single = "ours: publish_batch (3.1.1)", "ours: publish() each (3.1.1)"
    pairs = [
        (batch, "ref paho: pipelined, window 20, loop_start"),
        (batch, "ref paho: pipelined, window 20, one thread"),
        (single, "ref paho: publish + wait_for_publish each"),
        ("ours: publish_batch (MQTT 5)", "ref paho: pipelined, window 20, loop_start"),
    ]
    ratio_rows = [[f"{a}  /  {r}", *(fmt_ratio(rate(a, q), rate(r, q)) for q in QOS_LEVELS)]
                  for a, r in pairs]
    ratio_rows.append([f"{batch}  /  ref paho: connect per publish", "-",
                       fmt_ratio(rate(batch, 1), rate("ref paho: connect per publish "
                                                      "(old approach)", 1)), "-"])
    print_table("Throughput ratios (ours / reference, >1 means ours is faster)",
                ["comparison", "QoS 0", "QoS 1", "QoS 2"], ratio_rows)

    cpu_rows = [[label, *(cell(label, q, "cpu_us") for q in QOS_LEVELS),
                 *(cell(label, q, "broker_us") for q in QOS_LEVELS)] for label in labels]
    print_table("CPU per message, µs (client process all threads | Mosquitto), median",
                ["client / mode", "client Q0", "client Q1", "client Q2",
                 "broker Q0", "broker Q1", "broker Q2"], cpu_rows,
                ["client CPU above 1,000,000 / rate means more than one core was busy"])


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, help="messages per pipelined run (5,000)")
    parser.add_argument("--single-messages", type=int,
                        help="messages per one-at-a-time run, and per aiomqtt gather (1,000)")
    parser.add_argument("--cpp-messages", type=int,
                        help="messages per connect-per-publish run (200)")
    args = parse(parser, argv)
    runs = pick(args.runs, 5, 3, args.quick)
    n = pick(args.messages, 5_000, 1_000, args.quick)
    n_single = pick(args.single_messages, 1_000, 200, args.quick)
    n_cpp = pick(args.cpp_messages, 200, 30, args.quick)
    logging.getLogger("gmqtt").setLevel(logging.WARNING)
    with broker() as b:
        t = Timer(b)
        notes: list[str] = ["MQTT 5 sessions: Mosquitto announces receive-maximum 20, which "
                            "caps QoS 1/2 in flight at 20 like the 3.1.1 window"]
        variants = build_variants(b, t, n, n_single, n_cpp, notes)
        measure(variants, t, runs, args.verbose)
        report(variants, runs, n, n_single, n_cpp, notes)


if __name__ == "__main__":
    main()
