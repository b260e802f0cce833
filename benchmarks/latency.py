"""Publish-to-callback latency at QoS 1 and a steady rate: ours on both sides vs raw paho.

The publisher stamps ``perf_counter_ns()`` into the payload just before its publish call;
the subscriber's callback (same process, so the same clock) takes the difference. Ours:
``MQTTClient.publish(qos=1)`` and a ``subscribe(callback=...)`` session. Reference: two raw
paho clients with ``loop_start``, ``publish`` + ``wait_for_publish`` and ``on_message``.

A second table times request/response exchanges in which the broker answers with several
small packets back to back (a retained read: SUBACK, then the message), which Mosquitto's
default ``set_tcp_nodelay false`` holds back until the client acknowledges the first one.
Ours: ``get_retained_message()``. Reference: raw paho subscribes, waits for the retained
message and unsubscribes (it cannot tell "none retained" without a timeout, so one is set).

    python -m benchmarks.latency [--runs 5] [--rate 1000] [--seconds 1] [--reads 200]
                                 [--quick] [-v]
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from isa_common_mqtt import MQTTClient

from ._common import (
    PAYLOAD,
    Broker,
    base_parser,
    broker,
    fmt_ratio,
    median,
    paho_client,
    paho_close,
    parse,
    percentile,
    pick,
    print_table,
    progress,
    wait_info,
)

QOS = 1


@dataclass
class Side:
    """A publisher and a subscriber whose callback records latencies in ``received``."""

    label: str
    send: Callable[[bytes], None]
    close: Callable[[], None]
    received: list[int]
    runs: list[dict[str, float]] = field(default_factory=list)
    maximum: float = 0.0
    sent_total: int = 0
    received_total: int = 0


def _stamp() -> bytes:
    return time.perf_counter_ns().to_bytes(8, "big") + PAYLOAD[8:]


def _latency(payload: bytes) -> int:
    return time.perf_counter_ns() - int.from_bytes(payload[:8], "big")


def ours(b: Broker) -> Side:
    topic = f"bench/latency/ours/{uuid.uuid4().hex[:8]}"
    received: list[int] = []
    client = MQTTClient(b.host, b.port, protocol="3.1.1", track_in_registry=False)
    pub = client.connect(f"bench-lat-pub-{uuid.uuid4().hex[:8]}")["session_id"]
    sub = client.connect(f"bench-lat-sub-{uuid.uuid4().hex[:8]}")["session_id"]
    client.subscribe(sub, topic, QOS,
                     callback=lambda _t, payload, _q, _r, _ts: received.append(_latency(payload)))

    def send(payload: bytes) -> None:
        client.publish(pub, topic, payload, QOS)

    return Side("ours: publish(qos=1) -> subscribe callback", send, client.close, received)


def raw_paho(b: Broker) -> Side:
    topic = f"bench/latency/paho/{uuid.uuid4().hex[:8]}"
    received: list[int] = []
    publisher = paho_client(f"bench-lat-ppub-{uuid.uuid4().hex[:8]}", b.host, b.port)
    subscriber = paho_client(f"bench-lat-psub-{uuid.uuid4().hex[:8]}", b.host, b.port)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_a: subscribed.set()
    subscriber.on_message = lambda _c, _u, msg: received.append(_latency(bytes(msg.payload)))
    subscriber.subscribe(topic, QOS)
    if not subscribed.wait(10):
        raise RuntimeError("raw paho subscriber got no SUBACK")

    def send(payload: bytes) -> None:
        wait_info(publisher.publish(topic, payload, QOS), "latency publish")

    def close() -> None:
        paho_close(publisher)
        paho_close(subscriber)

    return Side("ref paho: publish+wait_for_publish -> on_message", send, close, received)


def run_once(side: Side, rate: float, seconds: float) -> None:
    """Publish at ``rate`` msg/s for ``seconds`` (no catch-up bursts), then collect."""
    side.received.clear()
    count = max(1, round(rate * seconds))
    interval = 1.0 / rate
    start = time.perf_counter() + 0.005
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        side.send(_stamp())
    took = time.perf_counter() - start
    deadline = time.monotonic() + 10
    while len(side.received) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    values = sorted(ns / 1e6 for ns in side.received)
    side.sent_total += count
    side.received_total += len(values)
    side.maximum = max(side.maximum, values[-1] if values else float("nan"))
    side.runs.append({"p50": percentile(values, 50), "p90": percentile(values, 90),
                      "p99": percentile(values, 99), "rate": count / took})


def retained_reads(b: Broker, reads: int) -> dict[str, list[float]]:
    """Milliseconds per retained read, ours and raw paho's, on the same retained message."""
    topic = f"bench/latency/retained/{uuid.uuid4().hex[:8]}"
    client = MQTTClient(b.host, b.port, protocol="3.1.1", track_in_registry=False)
    client.set_retained_message(topic, PAYLOAD)
    times: dict[str, list[float]] = {"ours": [], "paho": []}
    for _ in range(reads):
        t0 = time.perf_counter()
        if not client.get_retained_message(topic)["found"]:
            raise RuntimeError("the retained message was not read back")
        times["ours"].append((time.perf_counter() - t0) * 1000)
    reader = paho_client(f"bench-lat-ret-{uuid.uuid4().hex[:8]}", b.host, b.port)
    got, unsubscribed = threading.Event(), threading.Event()
    reader.on_message = lambda *_a: got.set()
    reader.on_unsubscribe = lambda *_a: unsubscribed.set()
    for _ in range(reads):
        got.clear()
        unsubscribed.clear()
        t0 = time.perf_counter()
        reader.subscribe(topic, QOS)
        if not got.wait(10):
            raise RuntimeError("raw paho did not receive the retained message")
        reader.unsubscribe(topic)
        if not unsubscribed.wait(10):
            raise RuntimeError("raw paho got no UNSUBACK")
        times["paho"].append((time.perf_counter() - t0) * 1000)
    paho_close(reader)
    client.delete_retained_message(topic)
    client.close()
    return times


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second (1000)")
    parser.add_argument("--seconds", type=float, help="seconds per run (1.0; 5 runs = 5 s)")
    parser.add_argument("--reads", type=int, help="retained reads per client (200)")
    args = parse(parser, argv)
    runs = pick(args.runs, 5, 3, args.quick)
    seconds = pick(args.seconds, 1.0, 0.5, args.quick)
    reads = pick(args.reads, 200, 50, args.quick)
    with broker() as b:
        read_times = retained_reads(b, reads)
        sides = [ours(b), raw_paho(b)]
        try:
            for side in sides:  # warm-up: first-call costs, TCP slow start
                run_once(side, args.rate, 0.1)
                side.runs.clear()
                side.maximum = 0.0
                side.sent_total = side.received_total = 0
            for _ in range(runs):
                for side in sides:
                    run_once(side, args.rate, seconds)
                    last = side.runs[-1]
                    progress(args.verbose, f"{side.label}: p50 {last['p50']:.3f} ms, "
                                           f"p99 {last['p99']:.3f} ms, {last['rate']:.0f} msg/s")
        finally:
            for side in sides:
                side.close()

    def fig(side: Side, key: str) -> float:
        return median([r[key] for r in side.runs])

    rows = [[s.label, f"{s.received_total:,}/{s.sent_total:,}", f"{fig(s, 'rate'):,.0f}",
             f"{fig(s, 'p50'):.3f}", f"{fig(s, 'p90'):.3f}", f"{fig(s, 'p99'):.3f}",
             f"{s.maximum:.3f}"] for s in sides]
    a, ref = sides
    rows.append(["ratio ours / ref (<1 means ours is faster)", "", "",
                 *(fmt_ratio(fig(a, k), fig(ref, k)) for k in ("p50", "p90", "p99")),
                 fmt_ratio(a.maximum, ref.maximum)])
    print_table(f"Latency publish -> subscriber callback, QoS 1, ms (median over {runs} runs of "
                f"{seconds:g} s at {args.rate:,.0f} msg/s; max over all runs)",
                ["client", "received/sent", "msg/s", "p50", "p90", "p99", "max"], rows,
                ["publisher and subscriber are separate connections in one process"])
    read_rows = []
    for label, key in (("ours: get_retained_message()", "ours"),
                       ("ref paho: subscribe, message, unsubscribe", "paho")):
        values = sorted(read_times[key])
        read_rows.append([label, f"{len(values):,}", *(f"{percentile(values, p):.3f}"
                                                       for p in (50, 90, 99))])
    read_rows.append(["ratio ours / ref (<1 means ours is faster)", "", *(
        fmt_ratio(percentile(sorted(read_times["ours"]), p),
                  percentile(sorted(read_times["paho"]), p)) for p in (50, 90, 99))])
    print_table("Retained read round trip, ms (Mosquitto's default set_tcp_nodelay false)",
                ["client", "reads", "p50", "p90", "p99"], read_rows,
                ["ours also confirms that nothing else is retained (a marker after the "
                 "snapshot): one more exchange than the reference"])


if __name__ == "__main__":
    main()
