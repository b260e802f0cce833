"""``topics``, ``stats`` and ``health``: what the registry and the broker say right now."""

from __future__ import annotations

import argparse
from typing import Any

from isa_common_mqtt import MQTTClient

from ._console import Console
from ._exit import CliError, ExitCode
from ._render import duration, key_values, labelled, number, short_time, show, size, table

HEALTH_LABELS = {
    "healthy": "Healthy", "broker_status": "Broker status", "broker": "Broker",
    "protocol": "Protocol", "active_connections": "Active connections",
    "message": "Message", "round_trip_ms": "Round trip (ms)", "registry": "Registry",
    "sys_available": "$SYS available",
}

REFUSALS = {"AuthenticationError", "AuthorizationError"}
TIMEOUTS = {"MQTTTimeoutError", "PublishTimeoutError"}


def health_exit_code(result: dict[str, Any]) -> ExitCode:
    """Exit code of an unhealthy ``health_check`` result (its ``error`` names the exception)."""
    if result.get("error") in REFUSALS:
        return ExitCode.REFUSED
    if result.get("error") in TIMEOUTS:
        return ExitCode.TIMEOUT
    if result.get("broker_status") == "unreachable":
        return ExitCode.UNREACHABLE
    return ExitCode.FAILED


def cmd_topics(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    result = client.list_topics(prefix=args.prefix, page=args.page, page_size=args.page_size)
    if args.json:
        console.json(result)
        return ExitCode.OK
    topics = result["topics"]
    total = int(result["total_count"])
    under = f" under {args.prefix!r}" if args.prefix else ""
    if not topics:
        console.line(f"no topics{under}")
        return ExitCode.OK
    console.lines(table(
        ("TOPIC", "SUBSCRIBERS", "MESSAGES", "LAST MESSAGE", "RETAINED"),
        [(t["topic"], number(t.get("subscriber_count")), number(t.get("message_count")),
          short_time(t.get("last_message_time")), show(t.get("has_retained_message")))
         for t in topics],
        align="<>><<"))
    if len(topics) < total:
        first = (args.page - 1) * args.page_size + 1
        console.line(f"topics {first}-{first + len(topics) - 1} of {number(total)}{under} "
                     f"(page {args.page} of {-(-total // args.page_size)})")
    else:
        console.line(f"{number(total)} topic{'s' if total != 1 else ''}{under}")
    return ExitCode.OK


def broker_lines(broker: dict[str, Any] | None) -> list[str]:
    """The broker's $SYS figures as labelled lines (or why there are none)."""
    if not broker or not broker.get("available"):
        return ["  no $SYS figures: this broker does not publish $SYS (RabbitMQ, NATS)"]
    return key_values([
        ("Version", show(broker.get("version"))),
        ("Uptime", duration(broker.get("uptime_seconds"))),
        ("Connected clients", f"{number(broker.get('connected_clients'))} "
                              f"({number(broker.get('total_clients'))} known)"),
        ("Subscriptions", number(broker.get("subscriptions"))),
        ("Retained messages", number(broker.get("retained_messages"))),
        ("Messages received", number(broker.get("messages_received"))),
        ("Messages sent", number(broker.get("messages_sent"))),
        ("Publishes dropped", number(broker.get("publish_messages_dropped"))),
        ("Bytes received", size(broker.get("bytes_received"))),
        ("Bytes sent", size(broker.get("bytes_sent"))),
    ], indent="  ")


def cmd_stats(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    stats = client.get_statistics()
    if args.json:
        console.json(stats)
        return ExitCode.OK
    types = stats.get("device_type_distribution") or {}
    console.line(f"Organisation {stats.get('organization_id', client.organization_id)}")
    console.lines(key_values([
        ("Devices", f"{number(stats['total_devices'])} ({number(stats['online_devices'])} "
                    "online)"),
        ("Device types", ", ".join(f"{k} {number(v)}" for k, v in sorted(types.items()))
         or "-"),
        ("Topics", number(stats["total_topics"])),
        ("Active sessions", number(stats["active_sessions"])),
        ("Subscriptions", number(stats["total_subscriptions"])),
        ("Sent today", number(stats["messages_sent_today"])),
        ("Received today", number(stats["messages_received_today"])),
    ], indent="  "))
    console.line()
    console.line("Broker ($SYS)")
    console.lines(broker_lines(stats.get("broker")))
    return ExitCode.OK


def cmd_health(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    result = client.health_check(deep_check=args.deep)
    if args.json:
        console.json(result)
    else:
        registry = result.get("registry")
        shown = dict(result)
        if isinstance(registry, dict):
            shown["registry"] = (f"{'synced' if registry.get('synced') else 'not synced'}, "
                                 f"{number(registry.get('devices'))} devices, "
                                 f"{number(registry.get('unreadable_records'))} unreadable")
        console.lines(key_values(labelled(shown, HEALTH_LABELS)))
    if not result.get("healthy"):
        raise CliError(str(result.get("message") or "the broker is not healthy"),
                       health_exit_code(result))
    return ExitCode.OK

