"""Profile ``publish_batch`` (QoS 1, 50,000 messages) with cProfile in both busy threads.

The calling thread and the library's network thread (``isa-mqtt-network``, which reads
acknowledgements and writes what the caller could not) each get their own profiler; the
network thread's is switched on and off from inside that thread with ``call_soon``. Prints
the top functions by own time (tottime) for both threads together, then per thread.

    python -m benchmarks.profile_publish [--messages 50000] [--qos 1] [--top 25]
"""

from __future__ import annotations

import cProfile
import io
import pstats
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from isa_common_mqtt import MQTTClient

from ._common import PAYLOAD, base_parser, broker, parse, print_table

TOPIC = "bench/profile"


def network_loop() -> Any | None:
    """The library's shared network loop (internal API; None if it moved)."""
    try:
        from isa_common_mqtt._io import NetworkLoop
    except ImportError:
        return None
    return NetworkLoop.shared()


def on_network_thread(loop: Any, fn: Callable[[], None]) -> bool:
    """Run ``fn`` on the network thread and wait (bounded) until it ran."""
    done = threading.Event()

    def call() -> None:
        fn()
        done.set()

    loop.call_soon(call)
    return done.wait(10)


def stats_text(stats: pstats.Stats, top: int) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.rstrip() for line in lines[start:] if line.strip())


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    parser.add_argument("--protocol", default="3.1.1", choices=("3.1.1", "5"))
    parser.add_argument("--top", type=int, default=25)
    args = parse(parser, argv)
    n = 5_000 if args.quick and args.messages == 50_000 else args.messages
    with broker() as b:
        client = MQTTClient(b.host, b.port, protocol=args.protocol, track_in_registry=False)
        sid = client.connect(f"bench-profile-{uuid.uuid4().hex[:8]}")["session_id"]
        messages = [{"topic": TOPIC, "payload": PAYLOAD, "qos": args.qos} for _ in range(n)]
        client.publish_batch(sid, messages[:1_000])  # warm-up
        start = time.perf_counter()
        plain = client.publish_batch(sid, messages)
        plain_s = time.perf_counter() - start

        main_prof, net_prof = cProfile.Profile(), cProfile.Profile()
        loop = network_loop()
        net_ok = loop is not None and on_network_thread(loop, net_prof.enable)
        main_prof.enable()
        start = time.perf_counter()
        profiled = client.publish_batch(sid, messages)
        profiled_s = time.perf_counter() - start
        main_prof.disable()
        if net_ok and not on_network_thread(loop, net_prof.disable):
            net_ok = False
        client.close()
    for result in (plain, profiled):
        if result["published_count"] != n:
            raise SystemExit(f"publish_batch failed: {result['errors'][:1]}")

    print_table(f"publish_batch of {n:,} messages, QoS {args.qos}, MQTT {args.protocol}",
                ["run", "seconds", "msg/s"],
                [["without profiler", f"{plain_s:.2f}", f"{n / plain_s:,.0f}"],
                 ["under cProfile (both threads)", f"{profiled_s:.2f}", f"{n / profiled_s:,.0f}"]],
                [] if net_ok else ["network thread NOT profiled (internal loop not reachable)"])
    combined = pstats.Stats(main_prof)
    if net_ok:
        combined.add(net_prof)
    sections = [("both threads", combined, args.top),
                ("calling thread only", pstats.Stats(main_prof), min(args.top, 12))]
    if net_ok:
        sections.append(("network thread only", pstats.Stats(net_prof), min(args.top, 12)))
    for title, stats, top in sections:
        stats.strip_dirs()
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"\nTop {top} functions by tottime, {title} ({total:.2f} s profiled, wall "
              "clock per thread: waits in epoll.poll and lock.acquire count as time)")
        print(stats_text(stats, top))


if __name__ == "__main__":
    main()
