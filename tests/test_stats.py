"""Broker-wide figures from Mosquitto's ``$SYS`` tree (isa_common_mqtt._stats.parse_sys)."""

from __future__ import annotations

import pytest

from isa_common_mqtt._stats import FIGURES, SYS_FILTER, parse_sys
from isa_common_mqtt._topics import check_filter, matches

ALL_FIGURES = [*FIGURES, "uptime_seconds", "version"]

MOSQUITTO = {
    "$SYS/broker/version": b"mosquitto version 2.0.11",
    "$SYS/broker/uptime": b"48 seconds",
    "$SYS/broker/clients/connected": b"4",
    "$SYS/broker/clients/total": b"6",
    "$SYS/broker/subscriptions/count": b"12",
    "$SYS/broker/retained messages/count": b"37",
    "$SYS/broker/messages/sent": b"1024",
    "$SYS/broker/messages/received": b"998",
    "$SYS/broker/publish/messages/dropped": b"0",
    "$SYS/broker/bytes/sent": b"65536",
    "$SYS/broker/bytes/received": b"70000",
    "$SYS/broker/load/messages/received/1min": b"12.50",  # figures not reported are ignored
}


def test_parse_sys_maps_mosquitto_payloads_to_figures() -> None:
    assert parse_sys(MOSQUITTO) == {
        "available": True,
        "source": "$SYS",
        "version": "mosquitto version 2.0.11",
        "uptime_seconds": 48,
        "connected_clients": 4,
        "total_clients": 6,
        "subscriptions": 12,
        "retained_messages": 37,
        "messages_sent": 1024,
        "messages_received": 998,
        "publish_messages_dropped": 0,
        "bytes_sent": 65536,
        "bytes_received": 70000,
    }


def test_a_zero_figure_stays_zero_not_none() -> None:
    assert parse_sys({"$SYS/broker/publish/messages/dropped": b"0"})[
        "publish_messages_dropped"] == 0


def test_without_sys_every_figure_is_none_and_available_is_false() -> None:
    result = parse_sys({})
    assert result["available"] is False
    assert result["source"] == "$SYS"
    for name in ALL_FIGURES:
        assert result[name] is None, name


def test_the_result_has_exactly_the_documented_keys() -> None:
    assert set(parse_sys({})) == {"available", "source", *ALL_FIGURES}
    assert set(parse_sys(MOSQUITTO)) == set(parse_sys({}))


def test_figures_the_broker_did_not_publish_are_none() -> None:
    result = parse_sys({"$SYS/broker/clients/connected": b"4"})
    assert result["available"] is True
    assert result["connected_clients"] == 4
    for name in ALL_FIGURES:
        if name != "connected_clients":
            assert result[name] is None, name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"4", 4), (b" 4 \n", 4), (b"4.0", 4), (b"12.9", 12), (b"0", 0),
     (b"123456789012", 123_456_789_012)],
)
def test_integer_figures_tolerate_whitespace_and_decimals(raw: bytes, expected: int) -> None:
    assert parse_sys({"$SYS/broker/clients/connected": raw})["connected_clients"] == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"four", b"4 clients", b"\xff\xfe", b"nan", b"inf", b"-inf", b"1e400", b"\x00"],
)
def test_an_unparsable_figure_is_none(raw: bytes) -> None:
    assert parse_sys({"$SYS/broker/clients/connected": raw})["connected_clients"] is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"48 seconds", 48), (b"0 seconds", 0), (b"86400 seconds", 86_400), (b"7", 7)],
)
def test_uptime_is_read_from_the_leading_number(raw: bytes, expected: int) -> None:
    assert parse_sys({"$SYS/broker/uptime": raw})["uptime_seconds"] == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b" ", b"\n", b"seconds", b"forever seconds", b"inf s"],
    ids=["empty", "space", "newline", "no-number", "word", "infinity"],
)
def test_an_unparsable_uptime_is_none(raw: bytes) -> None:
    assert parse_sys({"$SYS/broker/uptime": raw})["uptime_seconds"] is None


def test_the_version_is_decoded_text() -> None:
    assert parse_sys({"$SYS/broker/version": b"mosquitto version 2.0.11"})["version"] == \
        "mosquitto version 2.0.11"


def test_a_version_that_is_not_utf8_is_decoded_with_replacement() -> None:
    assert parse_sys({"$SYS/broker/version": b"broker \xff"})["version"] == "broker \ufffd"


def test_an_empty_version_is_none() -> None:
    assert parse_sys({"$SYS/broker/version": b""})["version"] is None


def test_every_figure_topic_is_under_the_sys_filter() -> None:
    assert check_filter(SYS_FILTER) == SYS_FILTER
    for topic in [*FIGURES.values(), "$SYS/broker/uptime", "$SYS/broker/version"]:
        assert matches(SYS_FILTER, topic), topic
