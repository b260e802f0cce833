"""The registry schema, record view and counters (isa_common_mqtt._registry, pure parts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zlib
from collections import Counter
from typing import Any

import msgpack
import pytest

from isa_common_mqtt import DeviceStatus, InvalidDeviceIdError
from isa_common_mqtt._codec import SCHEMA_VERSION, decode_record, encode_record
from isa_common_mqtt._registry import (
    KINDS,
    MAX_PART_BYTES,
    MAX_TOPICS_PER_WRITER,
    SERIES_MINUTES,
    SHARDS,
    Counters,
    RegistryView,
    Schema,
    check_path_part,
    device_record,
    minute,
    shard_of,
    status_record,
)
from isa_common_mqtt._topics import check_filter, check_publishable, matches

ROOT = "$registry/acme"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY = 86_400


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


# -- check_path_part ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "value",
    ["d1", "sensor-temp-01", "température", "капитан", "设备", "🌡️", "a.b", ".", "..",
     "with space", " ", "a_b~c", "A" * MAX_PART_BYTES, "é" * (MAX_PART_BYTES // 2)],
)
def test_check_path_part_returns_an_acceptable_part_unchanged(value: str) -> None:
    assert check_path_part(value) is value


@pytest.mark.parametrize(
    "value",
    ["a/b", "/", "a+", "+", "a#", "#", "a\x00b", "\x00", "a\tb", "a\nb", "\x01", "\x1f",
     "a\rb", "\x1b[0m"],
)
def test_check_path_part_rejects_topic_syntax_nul_and_control_characters(value: str) -> None:
    with pytest.raises(InvalidDeviceIdError, match="cannot be used in a topic level"):
        check_path_part(value)


@pytest.mark.parametrize("value", ["a\x7fb", "\x80", "a\x85b", "\x9f"],
                         ids=["DEL", "U+0080", "NEL", "U+009F"])
def test_check_path_part_rejects_del_and_c1_control_characters(value: str) -> None:
    # MQTT 5 section 1.5.4 lists U+007F..U+009F alongside U+0001..U+001F as control
    # characters; the error message promises that control characters are refused.
    with pytest.raises(InvalidDeviceIdError):
        check_path_part(value)


@pytest.mark.parametrize("value", ["$", "$SYS", "$registry"])
def test_check_path_part_rejects_a_leading_dollar_reserved_for_broker_topics(value: str) -> None:
    with pytest.raises(InvalidDeviceIdError, match="starts with '\\$'"):
        check_path_part(value)


@pytest.mark.parametrize("value", ["a$b", "device$"])
def test_check_path_part_accepts_a_dollar_inside(value: str) -> None:
    assert check_path_part(value) == value


@pytest.mark.parametrize("value", ["", None, 1, b"d1", ["d1"]])
def test_check_path_part_rejects_empty_and_non_str(value: object) -> None:
    with pytest.raises(InvalidDeviceIdError, match="non-empty str"):
        check_path_part(value)


@pytest.mark.parametrize(
    "value",
    ["A" * (MAX_PART_BYTES + 1), "é" * (MAX_PART_BYTES // 2) + "a", "😀" * 33],
    ids=["129-ascii", "129-bytes-2-byte-chars", "132-bytes-emoji"],
)
def test_check_path_part_rejects_more_than_128_utf8_bytes(value: str) -> None:
    assert len(value.encode("utf-8")) > MAX_PART_BYTES
    with pytest.raises(InvalidDeviceIdError, match="longer than 128"):
        check_path_part(value)


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb"])
def test_check_path_part_rejects_lone_surrogates(value: str) -> None:
    with pytest.raises(InvalidDeviceIdError, match="UTF-8"):
        check_path_part(value)


def test_check_path_part_names_the_argument_in_its_error() -> None:
    with pytest.raises(InvalidDeviceIdError, match="organization_id"):
        check_path_part("a/b", "organization_id")


def test_invalid_device_id_error_is_a_value_error() -> None:
    assert issubclass(InvalidDeviceIdError, ValueError)


# -- shard_of -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["d1", "sensor-temp-01", "température", "x" * 128])
def test_shard_of_is_two_lowercase_hex_digits_below_shards(key: str) -> None:
    shard = shard_of(key)
    assert re.fullmatch(r"[0-9a-f]{2}", shard)
    assert int(shard, 16) < SHARDS


def test_shard_of_is_deterministic() -> None:
    assert shard_of("d1") == shard_of("d1")
    assert [shard_of(f"device-{i}") for i in range(100)] == \
        [shard_of(f"device-{i}") for i in range(100)]


def test_shard_of_is_the_same_in_every_process() -> None:
    # Every client must agree on where a record lives: no per-process hash seed.
    code = ("from isa_common_mqtt._registry import shard_of; "
            "print(' '.join(shard_of(f'device-{i}') for i in range(100)))")
    expected = " ".join(shard_of(f"device-{i}") for i in range(100))
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.stdout.split() == expected.split()


@pytest.mark.parametrize("key", ["d1", "client-a", "température"])
def test_shard_of_is_crc32_of_the_utf8_key_mod_64(key: str) -> None:
    assert shard_of(key) == f"{zlib.crc32(key.encode('utf-8')) % 64:02x}"


def test_shard_of_spreads_keys_over_every_shard() -> None:
    counts = Counter(shard_of(f"device-{i}") for i in range(1_000))
    assert set(counts) == {f"{s:02x}" for s in range(SHARDS)}
    assert max(counts.values()) <= 3 * 1_000 / SHARDS


# -- Schema -------------------------------------------------------------------------------

schema = Schema(ROOT)


def test_schema_topics_follow_the_documented_layout() -> None:
    assert schema.device("d1") == f"{ROOT}/{shard_of('d1')}/device/d1"
    assert schema.status("d1") == f"{ROOT}/{shard_of('d1')}/status/d1"
    assert schema.metrics("d1", "w1") == f"{ROOT}/{shard_of('d1')}/metrics/d1/w1"
    assert schema.client("c1") == f"{ROOT}/{shard_of('c1')}/client/c1"
    assert schema.topics("w1") == f"{ROOT}/{shard_of('w1')}/topics/w1"
    assert schema.marker("c1") == f"{ROOT}/marker/c1"


RECORD_TOPICS = [
    (schema.device("d1"), ("device", ("d1",))),
    (schema.status("d1"), ("status", ("d1",))),
    (schema.metrics("d1", "writer-1"), ("metrics", ("d1", "writer-1"))),
    (schema.client("client-1"), ("client", ("client-1",))),
    (schema.topics("writer-1"), ("topics", ("writer-1",))),
    (schema.device("température"), ("device", ("température",))),
]


@pytest.mark.parametrize(("topic", "expected"), RECORD_TOPICS)
def test_schema_parse_round_trips_every_kind(topic: str, expected: Any) -> None:
    assert schema.parse(topic) == expected


def test_schema_covers_every_kind() -> None:
    assert {kind for _, (kind, _) in RECORD_TOPICS} == set(KINDS)


@pytest.mark.parametrize(("topic", "expected"), RECORD_TOPICS)
def test_record_topics_are_publishable_names(topic: str, expected: Any) -> None:
    assert check_publishable(topic) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "$registry/other/00/device/d1",
        "$registry/acme2/00/device/d1",
        "$registry/acm/00/device/d1",
        "registry/acme/00/device/d1",
        "sport/tennis",
        ROOT,
        ROOT + "/",
    ],
)
def test_schema_parse_rejects_topics_outside_the_organisation(topic: str) -> None:
    assert schema.parse(topic) is None


def test_schema_parse_rejects_markers() -> None:
    assert schema.parse(schema.marker("c1")) is None


@pytest.mark.parametrize(
    "topic",
    [
        f"{ROOT}/0/device/d1",
        f"{ROOT}/000/device/d1",
        f"{ROOT}//device/d1",
        f"{ROOT}/00/devices/d1",
        f"{ROOT}/00/unknown/d1",
        f"{ROOT}/00/device",
        f"{ROOT}/00",
        f"{ROOT}/device/d1",
    ],
)
def test_schema_parse_rejects_malformed_record_topics(topic: str) -> None:
    assert schema.parse(topic) is None


def test_shard_filters_are_one_valid_filter_per_shard() -> None:
    filters = schema.shard_filters()
    assert len(filters) == SHARDS == len(set(filters))
    assert all(check_filter(f) == f for f in filters)


@pytest.mark.parametrize(("topic", "expected"), RECORD_TOPICS)
def test_every_record_topic_is_in_exactly_one_shard_filter(topic: str, expected: Any) -> None:
    assert sum(matches(f, topic) for f in schema.shard_filters()) == 1


def test_shard_filters_do_not_cover_markers() -> None:
    assert not any(matches(f, schema.marker("c1")) for f in schema.shard_filters())


# -- RegistryView -------------------------------------------------------------------------

def device(device_id: str, name: str = "Sensor", device_type: str = "sensor") -> bytes:
    return device_record(device_id, name, device_type, {"room": "lab"}, T0, "alice")


def client_record(client_id: str, sessions: list[dict[str, Any]]) -> bytes:
    return encode_record("client", {"client_id": client_id, "user_id": "alice",
                                    "sessions": sessions, "updated_at": T0})


def session(client_id: str, subscriptions: list[str], connected: bool = True) -> dict[str, Any]:
    return {"client_id": client_id, "connected": connected, "device_id": None,
            "connected_at": T0, "subscriptions": subscriptions}


@pytest.fixture
def view() -> RegistryView:
    return RegistryView(Schema(ROOT))


def test_a_device_record_adds_the_device(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1", "Sensor 1"))
    record = view.devices["d1"]
    assert record["v"] == SCHEMA_VERSION
    assert record["kind"] == "device"
    assert record["device_name"] == "Sensor 1"
    assert record["device_type"] == "sensor"
    assert record["metadata"] == {"room": "lab"}
    assert record["registered_by"] == "alice"


def test_a_newer_device_record_replaces_the_older(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1", "old"))
    view.apply(schema.device("d1"), device("d1", "new"))
    assert view.devices["d1"]["device_name"] == "new"


def test_an_empty_payload_deletes_the_device(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1"))
    view.apply(schema.device("d1"), b"")
    assert "d1" not in view.devices


def test_deleting_an_unknown_record_is_a_no_op(view: RegistryView) -> None:
    view.apply(schema.device("d1"), b"")
    view.apply(schema.metrics("d1", "w1"), b"")
    assert view.devices == {}
    assert view.metrics == {}
    assert view.bad_records == 0


def test_a_status_record_sets_the_device_status(view: RegistryView) -> None:
    view.apply(schema.status("d1"), status_record("d1", DeviceStatus.ONLINE, T0, "s1", "up"))
    assert view.device_status("d1") == DeviceStatus.ONLINE
    assert view.status["d1"]["last_seen"] == T0
    assert view.status["d1"]["session"] == "s1"


def test_a_device_without_status_is_unknown(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1"))
    assert view.device_status("d1") == DeviceStatus.UNKNOWN
    assert view.device_status("never-seen") == DeviceStatus.UNKNOWN


def test_metrics_are_kept_per_writer(view: RegistryView) -> None:
    view.apply(schema.metrics("d1", "w1"), encode_record("metrics", {"messages_sent": 1}))
    view.apply(schema.metrics("d1", "w2"), encode_record("metrics", {"messages_sent": 2}))
    view.apply(schema.metrics("d2", "w1"), encode_record("metrics", {"messages_sent": 3}))
    assert {w: r["messages_sent"] for w, r in view.metrics["d1"].items()} == {"w1": 1, "w2": 2}
    assert {w: r["messages_sent"] for w, r in view.metrics["d2"].items()} == {"w1": 3}


def test_deleting_one_writers_metrics_keeps_the_others(view: RegistryView) -> None:
    view.apply(schema.metrics("d1", "w1"), encode_record("metrics", {"messages_sent": 1}))
    view.apply(schema.metrics("d1", "w2"), encode_record("metrics", {"messages_sent": 2}))
    view.apply(schema.metrics("d1", "w1"), b"")
    assert set(view.metrics["d1"]) == {"w2"}


def test_deleting_the_last_writers_metrics_forgets_the_device(view: RegistryView) -> None:
    view.apply(schema.metrics("d1", "w1"), encode_record("metrics", {"messages_sent": 1}))
    view.apply(schema.metrics("d1", "w1"), b"")
    assert "d1" not in view.metrics


def test_client_and_topics_records_are_kept_by_id(view: RegistryView) -> None:
    view.apply(schema.client("c1"), client_record("c1", [session("s1", ["a/#"])]))
    view.apply(schema.topics("w1"), encode_record("topics", {"topics": {"a/b": [2, T0]}}))
    assert view.clients["c1"]["sessions"][0]["client_id"] == "s1"
    assert view.topics["w1"]["topics"] == {"a/b": [2, T0]}
    view.apply(schema.client("c1"), b"")
    view.apply(schema.topics("w1"), b"")
    assert view.clients == {}
    assert view.topics == {}


def test_live_sessions_are_the_connected_sessions_of_every_client(view: RegistryView) -> None:
    view.apply(schema.client("c1"), client_record("c1", [session("s1", []),
                                                         session("s2", [], connected=False)]))
    view.apply(schema.client("c2"), client_record("c2", [session("s3", [])]))
    assert sorted(s["client_id"] for s in view.live_sessions()) == ["s1", "s3"]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("sport/tennis/player1", 3),  # s1 (exact), s2 (sport/#), s3 (+/tennis/+)
        ("sport/tennis", 1),          # s2 only: '#' covers the parent level
        ("sport", 1),
        ("sport/golf/x", 1),
        ("news", 0),
        ("$SYS/broker", 0),           # leading wildcards of s3/s4 do not match '$'
    ],
)
def test_subscriber_count_counts_connected_sessions_with_a_matching_filter(
        view: RegistryView, topic: str, expected: int) -> None:
    view.apply(schema.client("c1"), client_record("c1", [
        session("s1", ["sport/tennis/player1"]),
        session("s2", ["sport/#", "sport/tennis/#"]),  # two matches count once
        session("s-off", ["#"], connected=False),
    ]))
    view.apply(schema.client("c2"), client_record("c2", [session("s3", ["+/tennis/+"]),
                                                         session("s4", ["+/$SYS"])]))
    assert view.subscriber_count(topic) == expected


def test_device_ids_are_sorted(view: RegistryView) -> None:
    for device_id in ["d3", "d1", "température", "D2"]:
        view.apply(schema.device(device_id), device(device_id))
    assert view.device_ids() == ["D2", "d1", "d3", "température"]


def test_device_ids_include_a_device_added_after_they_were_listed(view: RegistryView) -> None:
    view.apply(schema.device("d2"), device("d2"))
    assert view.device_ids() == ["d2"]
    view.apply(schema.device("d1"), device("d1"))
    assert view.device_ids() == ["d1", "d2"]


def test_device_ids_drop_a_device_deleted_after_they_were_listed(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1"))
    view.apply(schema.device("d2"), device("d2"))
    assert view.device_ids() == ["d1", "d2"]
    view.apply(schema.device("d1"), b"")
    assert view.device_ids() == ["d2"]


def test_device_ids_are_unchanged_by_updates_of_known_devices(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1", "old"))
    assert view.device_ids() == ["d1"]
    view.apply(schema.device("d1"), device("d1", "new"))
    view.apply(schema.status("d1"), status_record("d1", 1, T0, None, "x"))
    assert view.device_ids() == ["d1"]


@pytest.mark.parametrize(
    "payload",
    [b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({"kind": "device"}),
     msgpack.packb({"v": SCHEMA_VERSION + 1, "kind": "device", "device_name": "future"})],
    ids=["garbage", "non-map", "no-version", "newer-version"],
)
def test_an_undecodable_record_is_counted_and_not_applied(
        view: RegistryView, payload: bytes) -> None:
    view.apply(schema.device("d1"), payload)
    assert view.bad_records == 1
    assert view.devices == {}
    assert view.device_ids() == []


def test_an_undecodable_record_leaves_the_previous_record_in_place(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1", "good"))
    view.apply(schema.device("d1"), b"\xc1")
    assert view.devices["d1"]["device_name"] == "good"
    assert view.bad_records == 1


def test_bad_records_accumulate(view: RegistryView) -> None:
    view.apply(schema.device("d1"), b"\xc1")
    view.apply(schema.status("d1"), b"\xc1")
    view.apply(schema.metrics("d1", "w1"), b"\xc1")
    assert view.bad_records == 3


@pytest.mark.parametrize("topic", ["sport/tennis", "$registry/other/00/device/d1",
                                   schema.marker("c1")])
def test_topics_outside_the_schema_are_ignored_even_when_undecodable(
        view: RegistryView, topic: str) -> None:
    view.apply(topic, b"\xc1")
    view.apply(topic, device("d1"))
    assert view.bad_records == 0
    assert view.devices == {}


@pytest.mark.parametrize(
    "topic",
    [
        f"{ROOT}/00/device/d1/extra",
        f"{ROOT}/00/device/",
        f"{ROOT}/00/status/d1/extra",
        f"{ROOT}/00/client/c1/extra",
        f"{ROOT}/00/topics/w1/extra",
        f"{ROOT}/00/metrics/d1",
        f"{ROOT}/00/metrics/d1/w1/extra",
    ],
)
def test_record_topics_with_the_wrong_number_of_levels_are_ignored(
        view: RegistryView, topic: str) -> None:
    view.apply(topic, encode_record("device", {"device_name": "stray", "status": 1}))
    assert (view.devices, view.status, view.metrics, view.clients, view.topics) == \
        ({}, {}, {}, {}, {})


def test_clear_forgets_every_record(view: RegistryView) -> None:
    view.apply(schema.device("d1"), device("d1"))
    view.apply(schema.status("d1"), status_record("d1", 1, T0, None, "x"))
    view.apply(schema.metrics("d1", "w1"), encode_record("metrics", {}))
    view.apply(schema.client("c1"), client_record("c1", [session("s1", ["#"])]))
    view.apply(schema.topics("w1"), encode_record("topics", {}))
    assert view.device_ids() == ["d1"]
    view.clear()
    assert (view.devices, view.status, view.metrics, view.clients, view.topics) == \
        ({}, {}, {}, {}, {})
    assert view.device_ids() == []


# -- device_record / status_record --------------------------------------------------------

def test_device_record_carries_every_field() -> None:
    record = decode_record(device_record("d1", "Sensor", "sensor", {"k": 1}, T0, "alice"))
    assert record["kind"] == "device"
    assert record["v"] == SCHEMA_VERSION
    assert {k: record[k] for k in ("device_id", "device_name", "device_type", "metadata",
                                   "registered_at", "registered_by")} == \
        {"device_id": "d1", "device_name": "Sensor", "device_type": "sensor",
         "metadata": {"k": 1}, "registered_at": T0, "registered_by": "alice"}
    assert isinstance(record["updated_at"], float)


def test_status_record_stores_the_status_as_a_plain_int() -> None:
    record = decode_record(status_record("d1", DeviceStatus.SLEEPING, T0, None, "nap"))
    assert record["kind"] == "status"
    assert record["status"] == 3
    assert type(record["status"]) is int
    assert (record["last_seen"], record["session"], record["reason"]) == (T0, None, "nap")


# -- Counters -----------------------------------------------------------------------------

def test_new_counters_are_zero_and_clean() -> None:
    c = Counters()
    assert (c.messages_sent, c.messages_received, c.bytes_sent, c.bytes_received,
            c.errors) == (0, 0, 0, 0, 0)
    assert (c.topics, c.days, c.series, c.dirty) == ({}, {}, {}, False)


def test_sent_bumps_totals_topic_minute_and_day() -> None:
    c = Counters()
    c.sent("a/b", 10, T0)
    assert (c.messages_sent, c.bytes_sent) == (1, 10)
    assert c.topics == {"a/b": [1, T0]}
    assert c.series == {minute(T0): [1, 0, 0]}
    assert c.days == {day_of(T0): [1, 0]}
    assert c.dirty is True


def test_received_bumps_totals_minute_and_day_but_no_topic() -> None:
    c = Counters()
    c.received(7, T0)
    assert (c.messages_received, c.bytes_received) == (1, 7)
    assert c.topics == {}
    assert c.series == {minute(T0): [0, 1, 0]}
    assert c.days == {day_of(T0): [0, 1]}
    assert c.dirty is True


def test_failed_bumps_errors_and_the_minute_but_not_the_daily_messages() -> None:
    c = Counters()
    c.failed(T0)
    assert c.errors == 1
    assert c.series == {minute(T0): [0, 0, 1]}
    assert c.days.get(day_of(T0), [0, 0]) == [0, 0]
    assert c.dirty is True


def test_events_in_one_minute_share_a_bucket_and_later_minutes_get_their_own() -> None:
    c = Counters()
    start = minute(T0)
    c.sent("a", 1, start)
    c.received(1, start + 59.9)
    c.failed(start + 30)
    c.sent("a", 1, start + 60)
    assert c.series == {start: [1, 1, 1], start + 60: [1, 0, 0]}


def test_topic_entries_count_messages_and_keep_the_last_publish_time() -> None:
    c = Counters()
    c.sent("a", 1, T0)
    c.sent("b", 1, T0 + 1)
    c.sent("a", 1, T0 + 2)
    assert c.topics == {"a": [2, T0 + 2], "b": [1, T0 + 1]}
    assert list(c.topics) == ["b", "a"]  # most recently used last


def test_topics_are_bounded_by_max_topics_per_writer() -> None:
    c = Counters()
    for i in range(MAX_TOPICS_PER_WRITER + 50):
        c.sent(f"t/{i}", 1, T0 + i)
    assert len(c.topics) == MAX_TOPICS_PER_WRITER
    assert "t/0" not in c.topics
    assert f"t/{MAX_TOPICS_PER_WRITER + 49}" in c.topics
    assert c.messages_sent == MAX_TOPICS_PER_WRITER + 50  # totals still count everything


def test_the_least_recently_used_topic_is_evicted_first() -> None:
    c = Counters()
    for i in range(MAX_TOPICS_PER_WRITER):
        c.sent(f"t/{i}", 1, T0 + i)
    c.sent("t/0", 1, T0 + MAX_TOPICS_PER_WRITER)  # t/0 is now the most recent
    c.sent("new", 1, T0 + MAX_TOPICS_PER_WRITER + 1)
    assert "t/0" in c.topics
    assert c.topics["t/0"][0] == 2
    assert "t/1" not in c.topics
    assert "new" in c.topics


def test_the_series_keeps_only_the_last_series_minutes() -> None:
    c = Counters()
    start = minute(T0)
    for m in range(SERIES_MINUTES + 30):
        c.received(1, start + m * 60)
    last = start + (SERIES_MINUTES + 29) * 60
    assert len(c.series) == SERIES_MINUTES
    assert min(c.series) == last - (SERIES_MINUTES - 1) * 60
    assert max(c.series) == last


def test_the_series_drops_minutes_older_than_the_window_after_a_gap() -> None:
    c = Counters()
    c.sent("a", 1, T0)
    c.sent("a", 1, T0 + 10 * 60)
    c.sent("a", 1, T0 + (SERIES_MINUTES + 5) * 60)
    assert sorted(c.series) == [minute(T0 + 10 * 60), minute(T0 + (SERIES_MINUTES + 5) * 60)]


def test_days_keep_only_today_and_yesterday() -> None:
    c = Counters()
    c.sent("a", 1, T0)
    c.sent("a", 1, T0 + DAY)
    c.received(1, T0 + 2 * DAY)
    c.sent("a", 1, T0 + 2 * DAY)
    assert c.days == {day_of(T0 + DAY): [1, 0], day_of(T0 + 2 * DAY): [1, 1]}


def test_days_are_utc_calendar_days() -> None:
    c = Counters()
    midnight = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC
    c.sent("a", 1, midnight - 1)
    c.sent("a", 1, midnight)
    assert c.days == {"2023-11-14": [1, 0], "2023-11-15": [1, 0]}


def test_metrics_fields_describe_the_writer_and_every_counter() -> None:
    c = Counters()
    c.sent("a", 10, T0)
    c.received(5, T0 + 60)
    c.failed(T0 + 60)
    fields = c.metrics_fields("d1", "w1")
    assert {k: v for k, v in fields.items() if k != "updated_at"} == {
        "device_id": "d1", "writer": "w1", "messages_sent": 1, "messages_received": 1,
        "bytes_sent": 10, "bytes_received": 5, "errors": 1,
        "series": [(minute(T0), [1, 0, 0]), (minute(T0) + 60, [0, 1, 1])],
    }
    assert isinstance(fields["updated_at"], float)


def test_topics_fields_describe_the_writer_topics_and_days() -> None:
    c = Counters()
    c.sent("a", 1, T0)
    fields = c.topics_fields("w1")
    assert {k: v for k, v in fields.items() if k != "updated_at"} == {
        "writer": "w1", "topics": {"a": [1, T0]}, "days": {day_of(T0): [1, 0]}}


def test_from_records_without_records_starts_from_zero() -> None:
    c = Counters.from_records(None, None)
    assert (c.messages_sent, c.errors, c.topics, c.days, c.series, c.dirty) == \
        (0, 0, {}, {}, {}, False)


def flushed(c: Counters) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a later session reads back from the broker after ``c`` was flushed."""
    metrics = decode_record(encode_record("metrics", c.metrics_fields("d1", "w1")))
    topics = decode_record(encode_record("topics", c.topics_fields("w1")))
    return metrics, topics


def test_metrics_and_topics_fields_round_trip_through_from_records() -> None:
    c = Counters()
    c.sent("a", 10, T0)
    c.sent("b", 20, T0 + 60)
    c.received(5, T0 + 120)
    c.failed(T0 + 120)
    restored = Counters.from_records(*flushed(c))
    assert (restored.messages_sent, restored.messages_received, restored.bytes_sent,
            restored.bytes_received, restored.errors) == (2, 1, 30, 5, 1)
    assert restored.topics == c.topics
    assert list(restored.topics) == list(c.topics)
    assert restored.days == c.days
    assert restored.series == c.series
    assert restored.dirty is False


def test_from_records_continues_counting_from_the_flushed_values() -> None:
    c = Counters()
    c.sent("a", 10, T0)
    c.received(5, T0)
    restored = Counters.from_records(*flushed(c))
    restored.sent("a", 1, T0 + 1)
    restored.received(1, T0 + 1)
    restored.failed(T0 + 1)
    assert (restored.messages_sent, restored.messages_received, restored.bytes_sent,
            restored.bytes_received, restored.errors) == (2, 2, 11, 6, 1)
    assert restored.topics["a"] == [2, T0 + 1]
    assert restored.series[minute(T0)] == [2, 2, 1]
    assert restored.days[day_of(T0)] == [2, 2]


def test_from_records_keeps_the_topic_recency_order_for_eviction() -> None:
    c = Counters()
    for i in range(MAX_TOPICS_PER_WRITER):
        c.sent(f"t/{i}", 1, T0 + i)
    restored = Counters.from_records(*flushed(c))
    restored.sent("new", 1, T0 + MAX_TOPICS_PER_WRITER)
    assert "t/0" not in restored.topics
    assert "t/1" in restored.topics
    assert len(restored.topics) == MAX_TOPICS_PER_WRITER


def test_from_records_reads_metrics_without_topics_and_topics_without_metrics() -> None:
    c = Counters()
    c.sent("a", 10, T0)
    metrics, topics = flushed(c)
    only_metrics = Counters.from_records(metrics, None)
    assert (only_metrics.messages_sent, only_metrics.topics) == (1, {})
    only_topics = Counters.from_records(None, topics)
    assert (only_topics.messages_sent, only_topics.topics) == (0, {"a": [1, T0]})
