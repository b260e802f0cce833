"""``top``: a live view of devices online, message rates and the broker's $SYS figures.

Each frame is one sample of ``get_statistics()`` and the ONLINE devices; rates are the
change between two samples divided by the time between them. On a terminal the frame is
redrawn in place (alternate screen, plain ANSI); otherwise frames follow one another.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from typing import Any

from isa_common_mqtt import BrokerConnectionError, DeviceStatus, MQTTClient, MQTTTimeoutError

from ._console import Console
from ._exit import CliError, ExitCode, one_line
from ._overview import health_exit_code
from ._render import clean, duration, number, rate, short_time, size, table, width

ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
HOME, CLEAR_LINE_END, CLEAR_SCREEN_END = "\x1b[H", "\x1b[K", "\x1b[J"
PAGE_SIZE = 1_000


@dataclass(frozen=True)
class Sample:
    """What the registry and $SYS said at one moment."""

    at: float
    """time.monotonic() when the sample was taken."""
    wall: float
    stats: dict[str, Any]
    online: list[dict[str, Any]]


def take_sample(client: MQTTClient) -> Sample:
    """Statistics plus every ONLINE device (paged through)."""
    stats = client.get_statistics()
    online: list[dict[str, Any]] = []
    page = 1
    while True:
        result = client.list_devices(status=DeviceStatus.ONLINE, page=page, page_size=PAGE_SIZE)
        online += result["devices"]
        if not result["devices"] or len(online) >= result["total_count"]:
            break
        page += 1
    return Sample(time.monotonic(), time.time(), stats, online)


def _delta(now: object, before: object, seconds: float) -> float | None:
    """Per-second change of a counter; None when unknown or when it went backwards."""
    if not isinstance(now, (int, float)) or not isinstance(before, (int, float)) \
            or seconds <= 0 or now < before:
        return None
    return (now - before) / seconds


def _traffic(d: dict[str, Any]) -> int:
    return int(d.get("messages_sent") or 0) + int(d.get("messages_received") or 0)


def frame(prev: Sample | None, cur: Sample, *, broker_address: str, interval: float,
          height: int | None = None, problem: str | None = None) -> list[str]:
    """The lines of one frame, at most ``height`` of them (None: every online device)."""
    stats, broker = cur.stats, cur.stats.get("broker") or {}
    seconds = cur.at - prev.at if prev is not None else 0.0
    before = prev.stats if prev is not None else {}
    before_broker = before.get("broker") or {}
    types = stats.get("device_type_distribution") or {}
    sent_rate = _delta(stats.get("messages_sent_today"), before.get("messages_sent_today"),
                       seconds)
    received_rate = _delta(stats.get("messages_received_today"),
                           before.get("messages_received_today"), seconds)
    lines = [
        f"isa-mqtt top   org {stats.get('organization_id', '?')}   broker {broker_address}   "
        f"{short_time(cur.wall)}   every {interval:g}s (Ctrl-C quits)",
        "",
        f"Devices   {number(stats.get('total_devices'))} registered   "
        f"{number(stats.get('online_devices'))} online   types: "
        + (", ".join(f"{k} {number(v)}" for k, v in sorted(types.items())) or "-"),
        f"Traffic   {number(stats.get('active_sessions'))} sessions   "
        f"{number(stats.get('total_subscriptions'))} subscriptions   "
        f"{number(stats.get('total_topics'))} topics   today: "
        f"{number(stats.get('messages_sent_today'))} sent, "
        f"{number(stats.get('messages_received_today'))} received   "
        f"rate: {rate(sent_rate)} sent, {rate(received_rate)} received",
    ]
    if broker.get("available"):
        def broker_rate(key: str) -> float | None:
            return _delta(broker.get(key), before_broker.get(key), seconds)

        bytes_in, bytes_out = broker_rate("bytes_received"), broker_rate("bytes_sent")
        lines += [
            f"Broker    {broker.get('version') or '?'}   up "
            f"{duration(broker.get('uptime_seconds'))}   "
            f"{number(broker.get('connected_clients'))} clients   "
            f"{number(broker.get('subscriptions'))} subscriptions   "
            f"{number(broker.get('retained_messages'))} retained",
            f"          in {rate(broker_rate('messages_received'), ' msg/s')} "
            f"{'-' if bytes_in is None else size(bytes_in) + '/s'}   "
            f"out {rate(broker_rate('messages_sent'), ' msg/s')} "
            f"{'-' if bytes_out is None else size(bytes_out) + '/s'}   "
            f"dropped {number(broker.get('publish_messages_dropped'))}",
        ]
    else:
        lines.append("Broker    no $SYS figures (this broker does not publish $SYS)")
    if problem:
        lines.append(f"!         {clean(problem)}")
    lines.append("")
    rows = None if height is None else max(height - len(lines), 3)
    lines += _device_table(prev, cur, seconds, rows)
    return lines


def _device_table(prev: Sample | None, cur: Sample, seconds: float,
                  rows: int | None) -> list[str]:
    if not cur.online:
        return ["no device is online"]
    earlier = {d["device_id"]: _traffic(d) for d in prev.online} if prev is not None else {}
    ranked = []
    for device in cur.online:
        before = earlier.get(device["device_id"])
        per_second = _delta(_traffic(device), before, seconds) if before is not None else None
        ranked.append((per_second, device))
    ranked.sort(key=lambda item: (-(item[0] or 0.0), item[1]["device_id"]))
    shown = ranked if rows is None else ranked[:max(rows - 2, 1)]
    lines = table(("DEVICE ID", "NAME", "TYPE", "SENT", "RECEIVED", "MSG/S", "LAST SEEN"),
                  [(d["device_id"], d["device_name"], d["device_type"],
                    number(d.get("messages_sent")), number(d.get("messages_received")),
                    rate(r, ""), short_time(d.get("last_seen"))) for r, d in shown],
                  align="<<<>>><")
    if len(shown) < len(ranked):
        lines.append(f"... and {number(len(ranked) - len(shown))} more online")
    return lines


def fit(line: str, columns: int) -> str:
    """Cut ``line`` to the terminal width so a frame never wraps."""
    if width(line) <= columns:
        return line
    out, used = [], 0
    for c in line:
        used += width(c)
        if used > columns:
            break
        out.append(c)
    return "".join(out)


def cmd_top(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    """Refresh every ``--interval`` seconds until Ctrl-C; ``--once`` prints one frame."""
    health = client.health_check()
    if not health.get("healthy"):
        raise CliError(str(health.get("message")), health_exit_code(health))
    address = str(health.get("broker", "?"))
    first = take_sample(client)
    if args.once:
        time.sleep(args.interval)
        console.lines(frame(first, take_sample(client), broker_address=address,
                            interval=args.interval))
        return ExitCode.OK
    live = console.out.isatty()
    if live:
        console.out.write(ALT_SCREEN_ON + HIDE_CURSOR)
    try:
        prev, cur, problem = None, first, None
        while True:
            if live:
                size_now = shutil.get_terminal_size()
                lines = frame(prev, cur, broker_address=address, interval=args.interval,
                              height=size_now.lines, problem=problem)
                lines = [fit(line, size_now.columns) for line in lines[:size_now.lines]]
                console.out.write(HOME + f"{CLEAR_LINE_END}\n".join(lines) + CLEAR_SCREEN_END)
            else:
                console.lines(frame(prev, cur, broker_address=address, interval=args.interval,
                                    problem=problem))
                console.line()
            console.out.flush()
            time.sleep(args.interval)
            try:
                prev, cur, problem = cur, take_sample(client), None
            except (BrokerConnectionError, MQTTTimeoutError) as exc:
                problem = one_line(f"{exc} (showing the last sample; retrying)")
    finally:
        if live:
            console.out.write(SHOW_CURSOR + ALT_SCREEN_OFF)
            console.out.flush()
