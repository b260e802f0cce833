"""``devices list|show|register|unregister|status``: the organisation's device registry."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from isa_common_mqtt import DeviceNotFoundError, DeviceStatus, InvalidArgumentError, MQTTClient

from ._console import Console, Progress
from ._exit import CliError, ExitCode
from ._render import key_values, number, short_time, show, table

COLUMNS = ("device_id", "device_name", "device_type", "metadata")


def parse_status(text: str) -> DeviceStatus:
    """``0``..``4`` or a status name (any case) as a DeviceStatus; argparse type."""
    value = text.strip()
    if value.isdigit() and int(value) in {s.value for s in DeviceStatus}:
        return DeviceStatus(int(value))
    try:
        return DeviceStatus[value.upper()]
    except KeyError:
        names = ", ".join(f"{s.value}={s.name}" for s in DeviceStatus)
        raise argparse.ArgumentTypeError(f"invalid status {text!r}; use one of {names}") \
            from None


def parse_meta(text: str) -> tuple[str, str]:
    """``key=value`` for ``--meta``; argparse type."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid metadata {text!r}; use key=value")
    return key, value


def _status_name(device: dict[str, Any]) -> str:
    name = device.get("status_name")
    if name:
        return str(name)
    try:
        return DeviceStatus(device.get("status", 0)).name
    except ValueError:
        return str(device.get("status"))


def _not_registered(client: MQTTClient, device_id: str) -> CliError:
    return CliError(f"device {device_id!r} is not registered in organisation "
                    f"{client.organization_id!r}")


# == list / show ========================================================================
def cmd_list(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    result = client.list_devices(status=args.status, page=args.page, page_size=args.page_size)
    if args.json:
        console.json(result)
        return ExitCode.OK
    devices = result["devices"]
    total = int(result["total_count"])
    which = f" with status {args.status.name}" if args.status is not None else ""
    if not devices:
        console.line(f"no devices{which} (page {result['page']}, {number(total)} in total)"
                     if total else f"no devices{which}")
        return ExitCode.OK
    console.lines(table(
        ("DEVICE ID", "NAME", "TYPE", "STATUS", "LAST SEEN", "SENT", "RECEIVED"),
        [(d["device_id"], d["device_name"], d["device_type"], _status_name(d),
          short_time(d.get("last_seen")), number(d.get("messages_sent")),
          number(d.get("messages_received"))) for d in devices],
        align="<<<<<>>"))
    first = (result["page"] - 1) * result["page_size"] + 1
    if len(devices) < total:
        pages = -(-total // result["page_size"])
        console.line(f"devices {first}-{first + len(devices) - 1} of {number(total)}{which} "
                     f"(page {result['page']} of {pages})")
    else:
        console.line(f"{number(total)} device{'s' if total != 1 else ''}{which}")
    return ExitCode.OK


def cmd_show(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    info = client.get_device_info(args.device_id)
    if info is None:
        if args.json:
            console.json(None)
        raise _not_registered(client, args.device_id)
    if args.json:
        console.json(info)
        return ExitCode.OK
    pairs: list[tuple[str, object]] = [
        ("Device ID", info["device_id"]), ("Name", info["device_name"]),
        ("Type", info["device_type"]),
        ("Status", f"{_status_name(info)} ({info['status']})"),
        ("Registered at", short_time(info.get("registered_at"))),
        ("Last seen", short_time(info.get("last_seen"))),
        ("Session", show(info.get("session"))),
        ("Messages sent", number(info.get("messages_sent"))),
        ("Messages received", number(info.get("messages_received"))),
        ("Bytes sent", number(info.get("bytes_sent"))),
        ("Bytes received", number(info.get("bytes_received"))),
        ("Subscribed topics", ", ".join(info.get("subscribed_topics") or []) or "-"),
    ]
    metadata = info.get("metadata") or {}
    pairs.append(("Metadata", "-" if not metadata else ""))
    console.lines(key_values(pairs))
    if metadata:
        console.lines(key_values([(k, v if isinstance(v, str) else show(v))
                                  for k, v in metadata.items()], indent="  "))
    return ExitCode.OK


# == register / unregister / status =====================================================
def cmd_register(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    if args.from_csv is not None:
        if args.device_id is not None or args.name is not None or args.type is not None \
                or args.meta:
            raise CliError("--from-csv takes the devices from the file; give no ID, --name, "
                           "--type or --meta with it", ExitCode.USAGE)
        return _register_csv(client, args, console)
    if args.device_id is None or args.name is None:
        raise CliError("devices register needs ID and --name NAME (or --from-csv FILE)",
                       ExitCode.USAGE)
    result = client.register_device(args.device_id, args.name, args.type or "sensor",
                                    dict(args.meta or []))
    if args.json:
        console.json(result)
    else:
        console.line(f"registered device {args.device_id} ({args.type or 'sensor'}) in "
                     f"organisation {client.organization_id}")
    return ExitCode.OK


def cmd_unregister(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    removed = client.unregister_device(args.device_id)
    if args.json:
        console.json(removed)
    if not removed:
        raise _not_registered(client, args.device_id)
    if not args.json:
        console.line(f"unregistered device {args.device_id}")
    return ExitCode.OK


def cmd_status(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    try:
        result = client.update_device_status(args.device_id, args.status)
    except DeviceNotFoundError:
        raise _not_registered(client, args.device_id) from None
    if args.json:
        console.json(result)
    else:
        console.line(f"device {args.device_id} is now {args.status.name}")
    return ExitCode.OK


# == register --from-csv ================================================================
@dataclass
class Row:
    """One device of a CSV file, or the reason the line cannot be used."""

    line: int
    device_id: str = ""
    name: str = ""
    device_type: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def read_csv(text: str) -> Iterator[Row]:
    """Rows of ``device_id,device_name,device_type[,metadata JSON]``; a header is optional."""
    reader = csv.reader(io.StringIO(text))
    columns: tuple[str, ...] = COLUMNS
    first = True
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if first:
            first = False
            if cells[0].strip().lower() == "device_id":
                columns = tuple(c.strip().lower() for c in cells)
                unknown = sorted(set(columns) - set(COLUMNS))
                missing = sorted(set(COLUMNS[:3]) - set(columns))
                if unknown or missing:
                    raise CliError(f"CSV header line {line}: unknown column(s) {unknown}, "
                                   f"missing {missing}; expected {','.join(COLUMNS)}")
                continue
        yield _row(line, cells, columns)


def _row(line: int, cells: list[str], columns: tuple[str, ...]) -> Row:
    if len(cells) > len(columns):
        first = cells[columns.index("device_id")].strip()
        return Row(line, first, problem=f"{len(cells)} columns, at most {len(columns)} expected "
                                 "(quote a metadata JSON that contains commas)")
    values = dict(zip(columns, (c.strip() for c in cells), strict=False))
    row = Row(line, values.get("device_id", ""), values.get("device_name", ""),
              values.get("device_type", ""))
    empty = [c for c in COLUMNS[:3] if not values.get(c)]
    if empty:
        row.problem = f"empty or missing {', '.join(empty)}"
        return row
    raw = values.get("metadata", "")
    if raw:
        try:
            metadata = json.loads(raw)
        except ValueError as exc:
            row.problem = f"metadata is not valid JSON: {exc}"
            return row
        if not isinstance(metadata, dict):
            row.problem = "metadata must be a JSON object"
            return row
        row.metadata = metadata
    return row


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.buffer.read().decode("utf-8-sig")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"cannot read CSV file {path!r}: {reason}") from exc


def _register_csv(client: MQTTClient, args: argparse.Namespace, console: Console) -> int:
    try:
        rows = list(read_csv(_read_text(args.from_csv)))
    except csv.Error as exc:
        raise CliError(f"CSV file {args.from_csv!r}: {exc}") from exc
    progress = Progress(console, len(rows), "devices")
    errors: list[dict[str, Any]] = []
    registered = 0
    for done, row in enumerate(rows, 1):
        if row.problem is None:
            try:
                client.register_device(row.device_id, row.name, row.device_type, row.metadata)
                registered += 1
            except InvalidArgumentError as exc:
                row.problem = str(exc)
        if row.problem is not None:
            errors.append({"line": row.line, "device_id": row.device_id or None,
                           "error": row.problem})
        progress.update(done)
    progress.finish()
    if args.json:
        console.json({"total": len(rows), "registered": registered, "failed": len(errors),
                      "errors": errors})
    else:
        for error in errors:
            console.warning(f"{args.from_csv}:{error['line']}: {error['error']}")
        console.line(f"registered {number(registered)} of {number(len(rows))} device(s) in "
                     f"organisation {client.organization_id}; {len(errors)} failed")
    if errors:
        raise CliError(f"{number(len(errors))} of {number(len(rows))} CSV row(s) were not "
                       "registered")
    return ExitCode.OK
