"""Output shapes of the command line: aligned tables, key/value blocks, JSON and small formats.

Human output is sanitised (control characters escaped) so a device name or topic can never
move the cursor or break a table; JSON output is the library's result, made serialisable.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any


def clean(value: object) -> str:
    """``value`` as one printable line: control characters become ``\\xNN`` escapes."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100
                   else f"\\u{ord(c):04x}" for c in text)


def width(text: str) -> int:
    """Terminal columns taken by ``text`` (wide East Asian characters count two)."""
    total = 0
    for c in text:
        if unicodedata.combining(c):
            continue
        total += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return total


def _pad(text: str, size: int, align: str) -> str:
    gap = " " * max(size - width(text), 0)
    return gap + text if align == ">" else text + gap


def table(headers: Sequence[str], rows: Iterable[Sequence[object]],
          align: str | None = None) -> list[str]:
    """Lines of an aligned table: a header, then one line per row, columns two spaces apart.

    ``align`` has one character per column, ``<`` (left, the default) or ``>`` (right).
    """
    cells = [[clean(c) for c in headers]] + [[clean(c) for c in row] for row in rows]
    sizes = [max(width(row[i]) for row in cells) for i in range(len(headers))]
    aligns = (align or "").ljust(len(headers), "<")
    lines = []
    for row in cells:
        parts = [_pad(text, sizes[i], aligns[i]) for i, text in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return lines


def key_values(pairs: Iterable[tuple[str, object]], indent: str = "") -> list[str]:
    """Lines of ``label: value`` with the values aligned."""
    items = [(f"{label}:", clean(value)) for label, value in pairs]
    size = max((width(label) for label, _ in items), default=0)
    return [f"{indent}{_pad(label, size, '<')}  {value}".rstrip() for label, value in items]


def labelled(result: Mapping[str, Any], labels: Mapping[str, str],
             skip: Iterable[str] = ()) -> list[tuple[str, object]]:
    """Known keys under their labels (in ``labels`` order), then any other key as it is."""
    skipped = set(skip)
    pairs: list[tuple[str, object]] = [(label, show(result[key])) for key, label in labels.items()
                                       if key in result and key not in skipped]
    pairs += [(key, show(value)) for key, value in result.items()
              if key not in labels and key not in skipped]
    return pairs


def show(value: object) -> str:
    """A result value for people: None as '-', booleans as yes/no, containers as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (dict, list, tuple, bytes)):
        return json.dumps(jsonable(value), separators=(", ", ": "), ensure_ascii=False)
    return str(value)


# == JSON ===============================================================================
def payload_fields(payload: bytes) -> dict[str, Any]:
    """A payload in JSON: exact text (or base64), plus the parsed value when it is JSON."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode("ascii"),
                "payload_encoding": "base64"}
    fields: dict[str, Any] = {"payload": text, "payload_encoding": "utf-8"}
    with contextlib.suppress(ValueError):
        fields["payload_json"] = json.loads(text, parse_constant=_no_constant)
    return fields


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; a payload holding them is shown as text only."""
    raise ValueError(f"{name} is not JSON")


def jsonable(value: Any) -> Any:
    """``value`` made serialisable: bytes via :func:`payload_fields`, tuples/sets as lists."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, (bytes, bytearray)):
                fields = payload_fields(bytes(item))
                out[str(key)] = fields.pop("payload")
                out.update({f"{key}{name.removeprefix('payload')}": v
                            for name, v in fields.items()})
            else:
                out[str(key)] = jsonable(item)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return payload_fields(bytes(value))["payload"]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def dumps(value: Any, *, pretty: bool = True) -> str:
    """JSON text of a result: indented for one result, compact for a stream of lines."""
    if pretty:
        return json.dumps(jsonable(value), indent=2, ensure_ascii=False)
    return json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False)


# == small formats ======================================================================
def short_time(value: object) -> str:
    """An ISO 8601 time (or unix time) as ``YYYY-MM-DD HH:MM:SSZ`` in UTC; '-' when absent."""
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, (int, float)):
            moment = datetime.fromtimestamp(value, timezone.utc)
        else:
            moment = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return clean(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def number(value: object) -> str:
    """An int with thousands separators; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def size(value: float | None) -> str:
    """Bytes in B / KiB / MiB / GiB."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"  # pragma: no cover - the loop always returns


def rate(value: float | None, unit: str = "/s") -> str:
    """A per-second rate; '-' when it cannot be measured yet."""
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if value < 100 else f"{value:,.0f}{unit}"


def duration(seconds: float | None) -> str:
    """Seconds as ``3d 04h``, ``1h 02m``, ``5m 07s`` or ``12s``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86_400)
    hours, s = divmod(s, 3_600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"
