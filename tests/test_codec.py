"""Payload and record encodings (isa_common_mqtt._codec)."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest

from isa_common_mqtt import InvalidPayloadError, RegistryError
from isa_common_mqtt._codec import (
    SCHEMA_VERSION,
    as_bytes,
    decode_record,
    encode_json,
    encode_msgpack,
    encode_record,
)

# -- as_bytes -----------------------------------------------------------------------------

def test_invalid_payload_error_is_a_value_error() -> None:
    assert issubclass(InvalidPayloadError, ValueError)


def test_as_bytes_returns_bytes_unchanged() -> None:
    payload = b"\x00\xffhello"
    assert as_bytes(payload) is payload


@pytest.mark.parametrize(
    "payload",
    [bytearray(b"\x00\xffhello"), memoryview(b"\x00\xffhello"),
     memoryview(bytearray(b"\x00\xffhello"))],
    ids=["bytearray", "memoryview", "memoryview-of-bytearray"],
)
def test_as_bytes_copies_bytes_like_values_into_bytes(payload: object) -> None:
    result = as_bytes(payload)
    assert type(result) is bytes
    assert result == b"\x00\xffhello"


def test_as_bytes_takes_a_snapshot_of_a_bytearray() -> None:
    buffer = bytearray(b"abc")
    result = as_bytes(buffer)
    buffer[0] = ord("z")
    assert result == b"abc"


def test_as_bytes_accepts_empty_payloads() -> None:
    assert as_bytes(b"") == b""
    assert as_bytes(bytearray()) == b""


@pytest.mark.parametrize("payload", ["text", "", 42, 1.5, None, [1, 2], {"a": 1}])
def test_as_bytes_rejects_anything_not_bytes_like(payload: object) -> None:
    with pytest.raises(InvalidPayloadError, match=type(payload).__name__):
        as_bytes(payload)


def test_as_bytes_points_str_users_to_encode_and_publish_json() -> None:
    with pytest.raises(InvalidPayloadError) as info:
        as_bytes("text")
    assert "str.encode()" in str(info.value)
    assert "publish_json()" in str(info.value)


# -- encode_json --------------------------------------------------------------------------

def test_encode_json_is_compact() -> None:
    assert encode_json({"a": 1, "b": [1, 2]}) == b'{"a":1,"b":[1,2]}'


def test_encode_json_writes_non_ascii_as_utf8_not_escapes() -> None:
    encoded = encode_json({"température": "22 °C"})
    assert encoded == '{"température":"22 °C"}'.encode()
    assert b"\\u" not in encoded


@pytest.mark.parametrize(
    "data",
    [None, True, 0, -1.5, "", "x", [], {}, {"nested": {"list": [1, "two", None, False]}}],
)
def test_encode_json_round_trips_json_values(data: Any) -> None:
    assert json.loads(encode_json(data)) == data


@pytest.mark.parametrize(
    "data",
    [math.nan, math.inf, -math.inf, {"reading": math.nan}, [math.inf]],
    ids=["nan", "inf", "-inf", "nan-in-dict", "inf-in-list"],
)
def test_encode_json_refuses_nan_and_infinity(data: object) -> None:
    with pytest.raises(InvalidPayloadError, match="JSON"):
        encode_json(data)


@pytest.mark.parametrize(
    "data",
    [{1, 2}, object(), b"bytes", {"when": object()}, {(1, 2): "tuple key"}],
    ids=["set", "object", "bytes", "object-in-dict", "tuple-key"],
)
def test_encode_json_refuses_non_json_types(data: object) -> None:
    with pytest.raises(InvalidPayloadError, match="JSON"):
        encode_json(data)


def test_encode_json_refuses_circular_structures() -> None:
    data: list[object] = []
    data.append(data)
    with pytest.raises(InvalidPayloadError):
        encode_json(data)


def test_encode_json_chains_the_original_error() -> None:
    with pytest.raises(InvalidPayloadError) as info:
        encode_json({1, 2})
    assert isinstance(info.value.__cause__, TypeError)


# -- encode_msgpack -----------------------------------------------------------------------

def test_encode_msgpack_keeps_bytes_binary_and_str_text() -> None:
    data = {"raw": b"\x00\xff", "text": "é"}
    decoded = msgpack.unpackb(encode_msgpack(data), raw=False)
    assert decoded == data
    assert type(decoded["raw"]) is bytes
    assert type(decoded["text"]) is str


def test_encode_msgpack_uses_the_bin_type_for_bytes() -> None:
    assert encode_msgpack(b"\x01") == b"\xc4\x01\x01"  # bin 8, length 1


@pytest.mark.parametrize("data", [{1, 2}, object(), 2**64, {"too big": -(2**63) - 1}],
                         ids=["set", "object", "uint-overflow", "int-underflow"])
def test_encode_msgpack_refuses_unserialisable_data(data: object) -> None:
    with pytest.raises(InvalidPayloadError, match="msgpack"):
        encode_msgpack(data)


# -- encode_record / decode_record --------------------------------------------------------

def test_schema_version_is_one() -> None:
    assert SCHEMA_VERSION == 1


def test_encode_record_writes_schema_version_and_kind() -> None:
    record = msgpack.unpackb(encode_record("device", {"device_id": "d1"}), raw=False)
    assert record == {"v": SCHEMA_VERSION, "kind": "device", "device_id": "d1"}


@pytest.mark.parametrize("kind", ["device", "status", "metrics", "client", "topics"])
def test_decode_record_round_trips_encode_record(kind: str) -> None:
    fields = {"name": "n", "blob": b"\x00", "metadata": {"k": [1, 2.5, None]}, "count": 3}
    assert decode_record(encode_record(kind, fields)) == {"v": SCHEMA_VERSION, "kind": kind,
                                                          **fields}


def test_decode_record_accepts_older_schema_versions() -> None:
    record = decode_record(msgpack.packb({"v": 0, "kind": "device"}))
    assert record["v"] == 0


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x92\x01", b"\x81\xa1v\x01extra", b"not msgpack at all"],
    ids=["empty", "never-used-byte", "truncated-array", "trailing-data", "text"],
)
def test_decode_record_raises_registry_error_for_garbage(payload: bytes) -> None:
    with pytest.raises(RegistryError, match="not a registry record"):
        decode_record(payload)


@pytest.mark.parametrize("value", [[1, 2], "v", 1, None, b"\x01"],
                         ids=["array", "str", "int", "nil", "bin"])
def test_decode_record_raises_registry_error_for_a_non_map(value: object) -> None:
    with pytest.raises(RegistryError, match="no schema version"):
        decode_record(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize("record", [{}, {"kind": "device"}, {"v": "1"}, {"v": None},
                                    {"v": 1.0}])
def test_decode_record_raises_registry_error_without_an_integer_schema_version(
        record: dict[str, object]) -> None:
    with pytest.raises(RegistryError, match="no schema version"):
        decode_record(msgpack.packb(record))


def test_decode_record_asks_for_an_upgrade_on_a_newer_schema_version() -> None:
    payload = msgpack.packb({"v": SCHEMA_VERSION + 1, "kind": "device"})
    with pytest.raises(RegistryError, match="upgrade") as info:
        decode_record(payload)
    assert str(SCHEMA_VERSION + 1) in str(info.value)
