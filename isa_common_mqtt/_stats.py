"""Broker-wide figures from ``$SYS`` (Mosquitto and compatible brokers).

Each figure is what the broker last published; Mosquitto refreshes ``$SYS`` every
``sys_interval`` seconds, so a value can be one interval stale. A broker without
``$SYS`` (RabbitMQ, NATS) gives ``available: False`` and ``None`` for every figure.
"""

from __future__ import annotations

from typing import Any

from ._snapshot import MarkerChannel

SYS_FILTER = "$SYS/broker/#"

FIGURES = {
    "connected_clients": "$SYS/broker/clients/connected",
    "total_clients": "$SYS/broker/clients/total",
    "subscriptions": "$SYS/broker/subscriptions/count",
    "retained_messages": "$SYS/broker/retained messages/count",
    "messages_sent": "$SYS/broker/messages/sent",
    "messages_received": "$SYS/broker/messages/received",
    "publish_messages_dropped": "$SYS/broker/publish/messages/dropped",
    "bytes_sent": "$SYS/broker/bytes/sent",
    "bytes_received": "$SYS/broker/bytes/received",
}
"""Figure name -> the ``$SYS`` topic it is read from (all integers)."""


def parse_sys(values: dict[str, bytes]) -> dict[str, Any]:
    """Shape raw ``$SYS`` payloads by topic into the documented figures."""
    result: dict[str, Any] = {"available": bool(values), "source": "$SYS"}
    for name, topic in FIGURES.items():
        result[name] = _int(values.get(topic))
    uptime = (values.get("$SYS/broker/uptime") or b"").split()  # b"48 seconds"
    result["uptime_seconds"] = _int(uptime[0]) if uptime else None
    version = values.get("$SYS/broker/version")
    result["version"] = version.decode("utf-8", "replace") if version else None
    return result


def _int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(float(raw.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError, OverflowError):
        return None


def read_broker_stats(markers: MarkerChannel, timeout: float) -> dict[str, Any]:
    """Read the broker's retained ``$SYS`` tree now."""
    found = markers.read_retained(SYS_FILTER, timeout)
    return parse_sys({topic: message.payload for topic, message in found.items()})
