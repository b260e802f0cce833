"""Payload and record encodings: JSON and msgpack payloads, versioned registry records."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from ._errors import InvalidPayloadError, RegistryError

SCHEMA_VERSION = 1
"""Version written into every registry record (field ``v``)."""


def as_bytes(payload: object) -> bytes:
    """Return ``payload`` as bytes; only bytes-like values are accepted."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise InvalidPayloadError(
        f"payload must be bytes, bytearray or memoryview, not {type(payload).__name__}; "
        "use publish_json() for structured data or encode text with str.encode()")


def encode_json(data: object) -> bytes:
    """Serialise ``data`` as compact UTF-8 JSON, refusing NaN and non-JSON types."""
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayloadError(f"data cannot be serialised as JSON: {exc}") from exc


def encode_msgpack(data: object) -> bytes:
    """Serialise ``data`` with msgpack (bytes stay binary)."""
    try:
        return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidPayloadError(f"data cannot be serialised as msgpack: {exc}") from exc


def encode_record(kind: str, fields: dict[str, Any]) -> bytes:
    """A registry record: a msgpack map carrying schema version ``v`` and ``kind``."""
    return encode_msgpack({"v": SCHEMA_VERSION, "kind": kind, **fields})


def decode_record(payload: bytes) -> dict[str, Any]:
    """Decode a registry record; raise RegistryError for anything that is not one."""
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RegistryError(f"not a registry record: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("v"), int):
        raise RegistryError("not a registry record: no schema version")
    if record["v"] > SCHEMA_VERSION:
        raise RegistryError(f"registry record has schema version {record['v']}; this library "
                            f"reads up to {SCHEMA_VERSION}: upgrade isa-common-mqtt")
    return record
