"""Commands that move messages: ``pub``, ``sub`` and ``retained get|set|delete``."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator

from isa_common_mqtt import Message, MQTTClient

from ._console import Console
from ._exit import CliError, ExitCode
from ._render import payload_fields

POLL = 0.5
"""Seconds between checks that a subscribing session is still alive."""


def _client_id(args: argparse.Namespace, role: str) -> str:
    return str(args.client_id or f"isa-mqtt-{role}-{uuid.uuid4().hex[:12]}")


def message_bytes(args: argparse.Namespace) -> bytes:
    """The payload of ``-m`` (argv bytes kept as given), ``-f FILE`` / ``-f -``, or ``-n``."""
    if getattr(args, "null_message", False):
        return b""
    if args.file is not None:
        if args.file == "-":
            return sys.stdin.buffer.read()
        try:
            with open(args.file, "rb") as f:
                return f.read()
        except OSError as exc:
            raise CliError(f"cannot read message file {args.file!r}: {exc.strerror or exc}") \
                from exc
    return str(args.message).encode("utf-8", "surrogateescape")


def check_topics(client: MQTTClient, topics: list[str], *, wildcards: bool) -> None:
    """Reject a bad topic (or filter) as a usage error before connecting."""
    for topic in topics:
        verdict = client.validate_topic(topic, allow_wildcards=wildcards)
        if not verdict["valid"]:
            what = "topic filter" if wildcards else "topic"
            raise CliError(f"invalid {what} {topic!r}: {verdict['message']}", ExitCode.USAGE)


def cmd_pub(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    """Publish one message, or one per line of standard input with ``-l``."""
    check_topics(client, [args.topic], wildcards=False)
    payload = None if args.lines else message_bytes(args)
    session_id = client.connect(_client_id(args, "pub"))["session_id"]
    try:
        for message in _stdin_lines() if payload is None else [payload]:
            result = client.publish(session_id, args.topic, message, args.qos, args.retain)
            if args.json:
                console.json_line(result)
    finally:
        client.disconnect(session_id)
    return ExitCode.OK


def _stdin_lines() -> Iterator[bytes]:
    """Lines of standard input as they arrive, without their line end (LF or CRLF)."""
    for line in sys.stdin.buffer:
        line = line[:-1] if line.endswith(b"\n") else line
        yield line[:-1] if line.endswith(b"\r") else line


def _show_message(message: Message, args: argparse.Namespace, console: Console) -> None:
    if args.json:
        console.json_line({"topic": message.topic, **payload_fields(message.payload),
                           "qos": message.qos, "retained": message.retained,
                           "timestamp": message.timestamp})
    elif args.with_topic:
        console.raw(message.topic.encode("utf-8", "surrogateescape") + b" "
                    + message.payload + b"\n")
    else:
        console.raw(message.payload + b"\n")


def cmd_sub(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    """Print each message of the filters until ``--count`` messages or ``--timeout`` seconds."""
    check_topics(client, args.topic, wildcards=True)
    session_id = client.connect(_client_id(args, "sub"))["session_id"]
    try:
        client.subscribe_multiple(session_id, [{"topic_filter": f, "qos": args.qos}
                                               for f in args.topic])
        deadline = None if args.wait is None else time.monotonic() + args.wait
        received = 0
        while args.count is None or received < args.count:
            remaining = POLL if deadline is None else min(deadline - time.monotonic(), POLL)
            if remaining <= 0:
                break
            message = client.receive(session_id, remaining)
            if message is None:
                _check_alive(client, session_id)
                continue
            if args.no_retained and message.retained:
                continue
            _show_message(message, args, console)
            received += 1
        if args.count is not None and received < args.count:
            raise CliError(f"received {received} of {args.count} message(s) within "
                           f"{args.wait:g} s", ExitCode.TIMEOUT)
    finally:
        client.disconnect(session_id)
    return ExitCode.OK


def _check_alive(client: MQTTClient, session_id: str) -> None:
    """Stop waiting when the session has stopped for good (taken over, refused)."""
    status = client.get_connection_status(session_id)
    if status.get("stopped_reason"):
        raise CliError(f"the subscription stopped: {status['stopped_reason']}",
                       ExitCode.UNREACHABLE)


def cmd_retained_get(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    result = client.get_retained_message(args.topic)
    if args.json:
        console.json(result)
    if not result.get("found"):
        raise CliError(f"no retained message on topic {args.topic!r}")
    if not args.json:
        console.raw(result["payload"] + b"\n")
    return ExitCode.OK


def cmd_retained_set(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    result = client.set_retained_message(args.topic, message_bytes(args), args.qos)
    if args.json:
        console.json(result)
    else:
        console.line(f"retained message set on {args.topic}")
    return ExitCode.OK


def cmd_retained_delete(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    result = client.delete_retained_message(args.topic)
    if args.json:
        console.json(result)
    else:
        console.line(f"retained message of {args.topic} deleted")
    return ExitCode.OK

