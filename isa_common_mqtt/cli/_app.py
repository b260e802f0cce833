"""Argument parsing, the client the commands share, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from isa_common_mqtt import MQTTClient, TLSSettings, __version__

from . import _devices, _messages, _overview, _top
from ._console import PROG, Console
from ._exit import ExitCode, classify

Handler = Callable[[MQTTClient, argparse.Namespace, Console], int]

DEFAULT_USER_ID = "isa-mqtt"

EPILOG = """\
environment: MQTT_HOST, MQTT_PORT (broker, when --host/--port are not given; then Consul,
then localhost:1883), MQTT_USER, MQTT_PASSWORD (credentials), CONSUL_HOST, CONSUL_PORT.

exit codes: 0 success; 1 failed or not found; 2 usage error; 3 broker unreachable;
4 authentication or authorisation refused; 5 timeout; 130 interrupted (Ctrl-C).
"""


# == argument types =====================================================================
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65_536:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, not {text!r}")
    return int(text)


def _readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read file {text!r}")
    return text


# == parser =============================================================================
def _add_global_options(parser: argparse.ArgumentParser, *, top: bool,
                        with_timeout: bool = True) -> None:
    """The broker options; on subcommands they default to SUPPRESS so either place works."""
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    def doc(text: str) -> str:  # documented once, in `isa-mqtt --help`
        return text if top else argparse.SUPPRESS

    group = parser.add_argument_group("broker options (before or after the command)")
    group.add_argument("--host", default=default(None),
                       help=doc("broker host (default: $MQTT_HOST, Consul, then localhost)"))
    group.add_argument("--port", type=_port, default=default(None),
                       help=doc("broker port (default: $MQTT_PORT, Consul, then 1883)"))
    group.add_argument("--org", default=default(None), metavar="ORG",
                       help=doc("organization_id whose registry to use (default: default-org)"))
    group.add_argument("--user", default=default(None), metavar="USER_ID",
                       help=doc(f"user_id recorded on what this command writes "
                                f"(default: {DEFAULT_USER_ID})"))
    group.add_argument("--username", default=default(None),
                       help=doc("MQTT username (default: $MQTT_USER)"))
    group.add_argument("--password", default=default(None),
                       help=doc("MQTT password (default: $MQTT_PASSWORD)"))
    group.add_argument("--tls", action="store_true", default=default(False),
                       help=doc("connect with TLS (server certificate and hostname verified)"))
    group.add_argument("--ca-file", type=_readable_file, default=default(None), metavar="FILE",
                       help=doc("CA bundle to verify the broker with (implies --tls)"))
    group.add_argument("--registry-root", default=default(None), metavar="ROOT",
                       help=doc("first topic level of the registry (default: $registry)"))
    group.add_argument("--protocol", choices=("auto", "5", "3.1.1"), default=default(None),
                       help=doc("MQTT version (default: auto, 5 then 3.1.1)"))
    if with_timeout:
        group.add_argument("--timeout", type=_positive_float, default=default(None),
                           metavar="SECONDS", dest="op_timeout",
                           help=doc("bound for connecting and for each broker round trip"))
    group.add_argument("-v", "--verbose", action="count", default=default(0),
                       help=doc("log to stderr (-vv for debug) and show tracebacks"))


SUBCOMMAND_EPILOG = "broker options (--host, --port, --org, --timeout, ...) can also be given " \
    "after the command; see isa-mqtt --help"


def _command(subparsers: Any, name: str, handler: Handler, help_text: str, *,
             json: str | None = "print the library's result as JSON (for scripts)",
             with_timeout: bool = True) -> argparse.ArgumentParser:
    epilog = SUBCOMMAND_EPILOG if with_timeout else SUBCOMMAND_EPILOG.replace(
        "--timeout, ", "") + "; here --timeout bounds the listening"
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text, epilog=epilog)
    parser.set_defaults(handler=handler)
    if json:
        parser.add_argument("--json", action="store_true", help=json)
    _add_global_options(parser, top=False, with_timeout=with_timeout)
    return parser


def _add_message_source(parser: argparse.ArgumentParser, *, lines: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--message", help="the payload (UTF-8 text)")
    source.add_argument("-f", "--file", metavar="FILE",
                        help="the payload: the bytes of FILE ('-' for standard input)")
    source.add_argument("-n", "--null-message", action="store_true",
                        help="an empty payload")
    if lines:
        source.add_argument("-l", "--lines", action="store_true",
                            help="one message per line of standard input")


def _add_paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page", type=_positive_int, default=1, help="page number (from 1)")
    parser.add_argument("--page-size", type=_positive_int, default=50,
                        help="items per page (at most 1000; default 50)")


def _session_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--client-id", help="MQTT client id (default: a random one)")
    parser.add_argument("--track", action="store_true",
                        help="count this session's traffic in the registry like a library "
                             "session (use with a stable --client-id)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of ``isa-mqtt``."""
    parser = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Publish, subscribe and manage the device registry on an MQTT broker.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pub = _command(commands, "pub", _messages.cmd_pub, "publish a message",
                   json="print each publish result as one JSON line")
    pub.add_argument("-t", "--topic", required=True, help="topic to publish to")
    _add_message_source(pub, lines=True)
    pub.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=1,
                     help="QoS (default 1)")
    pub.add_argument("-r", "--retain", action="store_true", help="publish as retained")
    _session_options(pub)

    sub = _command(commands, "sub", _messages.cmd_sub,
                   "print each message of the topic filters", with_timeout=False,
                   json="print one JSON object per message (topic, payload, qos, retained, "
                        "timestamp)")
    sub.add_argument("-t", "--topic", required=True, action="append", metavar="FILTER",
                     help="topic filter (repeat for several)")
    sub.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=1,
                     help="QoS (default 1)")
    sub.add_argument("-C", "--count", type=_positive_int, metavar="N",
                     help="exit after N messages (exit 5 if --timeout runs out first)")
    sub.add_argument("-W", "--timeout", type=_positive_float, dest="wait", metavar="SECONDS",
                     help="stop listening after SECONDS (the broker --timeout goes before "
                          "'sub')")
    sub.add_argument("-R", "--no-retained", action="store_true",
                     help="skip retained messages sent on subscribing")
    sub.add_argument("-T", "--with-topic", action="store_true",
                     help="print 'TOPIC PAYLOAD' instead of the payload alone")
    _session_options(sub)

    devices = commands.add_parser("devices", help="the device registry",
                                  description="the device registry of the organisation")
    device_commands = devices.add_subparsers(dest="devices_command", required=True,
                                             metavar="SUBCOMMAND")
    listing = _command(device_commands, "list", _devices.cmd_list, "list devices")
    listing.add_argument("--status", type=_devices.parse_status,
                         help="only devices with this status (0..4 or ONLINE, OFFLINE, ...)")
    _add_paging(listing)
    show = _command(device_commands, "show", _devices.cmd_show, "show one device")
    show.add_argument("device_id", metavar="ID")
    register = _command(device_commands, "register", _devices.cmd_register,
                        "register a device, or every device of a CSV file")
    register.add_argument("device_id", metavar="ID", nargs="?")
    register.add_argument("--name", help="device name")
    register.add_argument("--type", help="device type (default: sensor)")
    register.add_argument("--meta", type=_devices.parse_meta, action="append",
                          metavar="KEY=VALUE", help="metadata entry (repeatable)")
    register.add_argument("--from-csv", metavar="FILE",
                          help="CSV rows device_id,device_name,device_type[,metadata JSON]; "
                               "'-' for standard input")
    unregister = _command(device_commands, "unregister", _devices.cmd_unregister,
                          "remove a device and its records")
    unregister.add_argument("device_id", metavar="ID")
    status = _command(device_commands, "status", _devices.cmd_status, "set a device's status")
    status.add_argument("device_id", metavar="ID")
    status.add_argument("status", type=_devices.parse_status, metavar="STATUS",
                        help="0..4 or UNKNOWN, ONLINE, OFFLINE, SLEEPING, ERROR")

    topics = _command(commands, "topics", _overview.cmd_topics,
                      "list topics with their counters")
    topics.add_argument("--prefix", default="", help="only topics starting with PREFIX")
    _add_paging(topics)

    retained = commands.add_parser("retained", help="retained messages",
                                   description="get, set or delete a retained message")
    retained_commands = retained.add_subparsers(dest="retained_command", required=True,
                                                metavar="SUBCOMMAND")
    get = _command(retained_commands, "get", _messages.cmd_retained_get,
                   "print the retained message of a topic")
    get.add_argument("topic", metavar="TOPIC")
    put = _command(retained_commands, "set", _messages.cmd_retained_set,
                   "store a retained message")
    put.add_argument("topic", metavar="TOPIC")
    _add_message_source(put, lines=False)
    put.add_argument("-q", "--qos", type=int, choices=(0, 1, 2), default=1,
                     help="QoS (default 1)")
    delete = _command(retained_commands, "delete", _messages.cmd_retained_delete,
                      "delete the retained message of a topic")
    delete.add_argument("topic", metavar="TOPIC")

    _command(commands, "stats", _overview.cmd_stats, "organisation and broker statistics")
    health = _command(commands, "health", _overview.cmd_health, "check the broker")
    health.add_argument("--deep", action="store_true",
                        help="also a round trip, the registry and $SYS")
    top = _command(commands, "top", _top.cmd_top,
                   "live view of devices online, message rates and $SYS", json=None)
    top.add_argument("--interval", type=_positive_float, default=2.0, metavar="SECONDS",
                     help="seconds between refreshes (default 2)")
    top.add_argument("--once", action="store_true",
                     help="take two samples --interval apart, print one frame and exit")
    return parser


# == running ============================================================================
def make_client(args: argparse.Namespace) -> MQTTClient:
    """The MQTTClient of the global options; unset options keep the library's defaults."""
    options: dict[str, Any] = {"track_in_registry": bool(getattr(args, "track", False))}
    for name in ("username", "password", "registry_root", "protocol"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.ca_file is not None:
        options["tls"] = TLSSettings(ca_file=args.ca_file)
    elif args.tls:
        options["tls"] = True
    timeout = getattr(args, "op_timeout", None)
    if timeout is not None:
        options.update(connect_timeout=timeout, request_timeout=timeout,
                       publish_timeout=timeout)
    return MQTTClient(host=args.host, port=args.port, user_id=args.user or DEFAULT_USER_ID,
                      organization_id=args.org, **options)


def _setup_logging(verbosity: int) -> None:
    root = logging.getLogger()
    if verbosity <= 0:
        root.addHandler(logging.NullHandler())  # library warnings never reach the terminal
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)


def _run(args: argparse.Namespace, console: Console) -> int:
    client = make_client(args)
    try:
        handler: Handler = args.handler
        return int(handler(client, args, console))
    finally:
        client.close()


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``isa-mqtt`` with ``argv`` (default: the process arguments); return the exit code."""
    console = Console()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (2)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    verbosity = int(args.verbose or 0)
    _setup_logging(verbosity)
    try:
        return _run(args, console)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return ExitCode.BROKEN_PIPE
    except Exception as exc:
        code, message = classify(exc)
        if verbosity > 0:
            traceback.print_exception(exc, file=sys.stderr)
        with contextlib.suppress(BrokenPipeError):
            console.error(message)
        return code
