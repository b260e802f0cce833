"""Peak memory while publishing many QoS 0 messages into a slow broker: ours vs raw paho.

"Slow broker" here is a broker that stops reading: Mosquitto is frozen with SIGSTOP for
``--pause`` seconds from the moment publishing starts, then resumed (SIGCONT). Its sockets
stay open, so the kernel buffers about 4 MB (~50,000 of these messages on loopback) and
then a client must either wait or queue in its own memory. Each kind runs in a fresh
process against a fresh broker; the figure is VmHWM (peak RSS) minus RSS just before
publishing (the caller's message list, for publish_batch, is built before that baseline).

    python -m benchmarks.memory [--messages 200000] [--pause 5] [--quick] [-v]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from typing import Any

from isa_common_mqtt import MQTTClient

from ._common import (
    PAYLOAD,
    REPO_ROOT,
    base_parser,
    broker,
    fmt_ratio,
    median,
    paho_client,
    paho_close,
    parse,
    pick,
    print_table,
    proc_status,
    progress,
    reset_peak_rss,
    wait_info,
)

TOPIC = "bench/memory"
KINDS = ("ours-publish", "ours-batch", "paho-pipelined")
LABELS = {
    "ours-publish": "ours: publish(qos=0) in a loop",
    "ours-batch": "ours: one publish_batch of all messages",
    "paho-pipelined": "ref paho: publish() all, loop_start (window 20)",
}


# -- worker side ------------------------------------------------------------------------------

def _handshake() -> None:
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        raise SystemExit("memory worker: expected GO")


def worker(kind: str, host: str, port: int, n: int) -> dict[str, Any]:
    """Publish ``n`` QoS 0 messages after the parent says GO; return times and memory."""
    longest = 0.0
    cid = f"bench-mem-{uuid.uuid4().hex[:8]}"
    if kind.startswith("ours"):
        client = MQTTClient(host, port, protocol="3.1.1", track_in_registry=False)
        sid = client.connect(cid)["session_id"]
        messages = ([{"topic": TOPIC, "payload": PAYLOAD, "qos": 0} for _ in range(n)]
                    if kind == "ours-batch" else [])
        base = proc_status("VmRSS")
        reset = reset_peak_rss()
        _handshake()
        t0 = time.perf_counter()
        if kind == "ours-batch":
            result = client.publish_batch(sid, messages)
            longest = time.perf_counter() - t0
            if result["published_count"] != n:
                raise RuntimeError(f"publish_batch: {result['failed_count']} failed")
        else:
            for _ in range(n):
                t = time.perf_counter()
                client.publish(sid, TOPIC, PAYLOAD, 0)
                longest = max(longest, time.perf_counter() - t)
        done = time.perf_counter() - t0
        peak = proc_status("VmHWM")
        client.close()
    else:
        c = paho_client(cid, host, port)
        base = proc_status("VmRSS")
        reset = reset_peak_rss()
        _handshake()
        t0 = time.perf_counter()
        info = None
        for _ in range(n):
            t = time.perf_counter()
            info = c.publish(TOPIC, PAYLOAD, 0)
            longest = max(longest, time.perf_counter() - t)
        assert info is not None
        wait_info(info, "paho pipelined QoS 0")  # in order: the last written means all are
        done = time.perf_counter() - t0
        peak = proc_status("VmHWM")
        paho_close(c)
    return {"kind": kind, "n": n, "seconds": done, "peak_growth_mib": (peak - base) / 1024,
            "base_mib": base / 1024, "longest_call_s": longest, "peak_reset": reset}


# -- parent side ------------------------------------------------------------------------------

def run_kind(kind: str, n: int, pause: float, timeout: float) -> dict[str, Any]:
    """One kind in a fresh process against a fresh broker frozen for ``pause`` seconds."""
    with broker() as b:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.memory", "--worker", kind,
                                 b.host, str(b.port), str(n)], cwd=REPO_ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = proc.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"memory worker {kind} did not start: {line!r}")
            b.pause()
            proc.stdin.write("GO\n")
            proc.stdin.flush()
            time.sleep(pause)
            b.resume()
            out, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {kind} failed with code {proc.returncode}")
        return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, help="QoS 0 messages per kind (200,000)")
    parser.add_argument("--pause", type=float, help="seconds the broker is frozen (5)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "HOST", "PORT", "N"),
                        help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if args.worker:
        kind, host, port, n = args.worker
        print(json.dumps(worker(kind, host, int(port), int(n))))
        return
    runs = pick(args.runs, 1, 1, args.quick)
    n = pick(args.messages, 200_000, 20_000, args.quick)
    pause = pick(args.pause, 5.0, 1.0, args.quick)
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(runs):
        for kind in kinds:
            r = run_kind(kind, n, pause, timeout=pause + 60 + n / 500)
            results[kind].append(r)
            progress(args.verbose, f"{kind}: {r}")
    rows = []
    for kind, rs in results.items():
        def m(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return median([r[key] for r in rs])
        rows.append([LABELS[kind], f"{n:,}", f"{m('peak_growth_mib'):.1f}",
                     f"{m('base_mib'):.1f}", f"{m('seconds'):.2f}",
                     f"{n / m('seconds'):,.0f}", f"{m('longest_call_s'):.3f}"])
    notes = [f"the broker is frozen (SIGSTOP) for the first {pause:g} s of publishing",
             "peak growth: VmHWM at the end minus VmRSS just before publishing",
             "longest call: the longest single publish()/publish_batch() call; a bounded "
             "client blocks there while the broker is frozen"]
    if runs > 1:
        notes.insert(0, f"median of {runs} runs")
    if not all(r["peak_reset"] for rs in results.values() for r in rs):
        notes.append("VmHWM could not be reset; peaks include anything before the baseline")
    print_table(f"Peak memory publishing {n:,} QoS 0 messages into a frozen-then-resumed broker",
                ["client", "messages", "peak growth MiB", "baseline MiB", "seconds", "msg/s",
                 "longest call s"], rows, notes)
    if "paho-pipelined" in results:
        ref = median([r["peak_growth_mib"] for r in results["paho-pipelined"]])
        ratio_rows = [[f"{LABELS[k]}  /  {LABELS['paho-pipelined']}",
                       fmt_ratio(median([r["peak_growth_mib"] for r in rs]), ref)]
                      for k, rs in results.items() if k != "paho-pipelined"]
        print_table("Peak memory ratio (ours / reference, <1 means ours uses less)",
                    ["comparison", "peak growth"], ratio_rows)


if __name__ == "__main__":
    main()
