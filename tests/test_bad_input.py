"""Property-based tests: arbitrary topics, filters, payloads, QoS, batch items, client ids,
device ids, metadata and JSON values against a real broker session.

Each example must end in one of two ways: a documented error (a ValueError/TypeError subclass
of MQTTClientError, raised before anything is sent), or success with the message delivered.
An independent raw paho subscriber sees what really reached the broker; a sentinel published
after each example closes the window of what that example sent. Topics the MQTT
specification allows but discourages (control characters U+0001-U+001F, U+007F-U+009F, and
Unicode noncharacters, which Mosquitto refuses as malformed) may be either rejected or
delivered, never accepted and then lost.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from isa_common_mqtt import MQTTClient, MQTTClientError
from isa_common_mqtt.testing import MosquittoProcess

from .conftest import WAIT, Recorder, Seen

# The library draws reconnect jitter from the global ``random`` module; Hypothesis warns when
# that happens during an example (only when a bad example made a session reconnect, which
# the assertions report better).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning")

EXAMPLES = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

SPECIAL = ["/", "+", "#", "$", "\x00", "\x01", "\x1f", "\x7f", "\x85", " ", "\ufdd0", "\uffff",
           "\U0001fffe", "\ud800", "é", "😀", "a", "b"]
"""Characters that break, bend or stress topic rules, mixed into generated text."""
TEXT = st.text(st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=())),
               max_size=24)


def discouraged(text: str) -> bool:
    """Characters the MQTT spec allows with a SHOULD NOT, and Mosquitto refuses."""
    for ch in text:
        cp = ord(ch)
        if 0 < cp < 0x20 or 0x7F <= cp <= 0x9F or 0xFDD0 <= cp <= 0xFDEF \
                or (cp & 0xFFFE) == 0xFFFE:
            return True
    return False


def utf8_size(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def topic_verdict(topic: str) -> str:
    """"invalid" (spec MUST), "grey" (spec SHOULD NOT) or "valid" for a publish topic."""
    size = utf8_size(topic)
    if size is None or not 0 < size <= 65_535 or "\x00" in topic or "+" in topic \
            or "#" in topic:
        return "invalid"
    return "grey" if discouraged(topic) else "valid"


def filter_verdict(topic_filter: str) -> str:
    """The same for a subscription filter."""
    size = utf8_size(topic_filter)
    if size is None or not 0 < size <= 65_535 or "\x00" in topic_filter:
        return "invalid"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != len(levels) - 1)) or \
                ("+" in level and level != "+"):
            return "invalid"
    return "grey" if discouraged(topic_filter) else "valid"


def documented(exc: BaseException) -> bool:
    """The errors bad input may raise: typed, and ValueError or TypeError."""
    return isinstance(exc, MQTTClientError) and isinstance(exc, (ValueError, TypeError))


def attempt(call: Callable[[], object]) -> BaseException | None:
    """Run ``call``; return the documented error it raised, or None. Anything else fails."""
    try:
        call()
    except Exception as exc:
        assert documented(exc), f"undocumented error {exc!r}"
        return exc
    return None


class Bench:
    """A client and a raw recorder of everything under ``prefix``.

    Each example publishes under its own namespace and ends with three sentinels (QoS 0,
    1 and 2) from the same session: MQTT keeps each QoS level in order, so once all three
    arrived, everything the example sent has arrived too. Registry writes all go over the
    client's own connection at QoS 1, so one retained sentinel there closes their window.
    """

    def __init__(self, broker: MosquittoProcess) -> None:
        self.broker = broker
        self.prefix = f"bad/{uuid.uuid4().hex[:12]}"
        self.registry_root = f"{self.prefix}/registry"
        self.control_sentinel = f"{self.registry_root}-sentinel"
        self.recorder = Recorder(broker.host, broker.port, f"{self.prefix}/#", qos=2)
        self.client = self._new_client()
        self._control_seen = 0

    def _new_client(self) -> MQTTClient:
        return MQTTClient(host=self.broker.host, port=self.broker.port, user_id="bad-input",
                          organization_id="bad-input", registry_root=self.registry_root,
                          publish_timeout=3.0, request_timeout=3.0, reconnect_max_delay=0.2,
                          track_in_registry=False)

    def healthy_client(self) -> MQTTClient:
        """The client, replaced if an earlier bad example broke its own connection (that
        example has failed already; later ones should not fail for the same reason)."""
        if not self.client.health_check()["healthy"]:
            with contextlib.suppress(MQTTClientError):
                self.client.close()
            self.client = self._new_client()
            # What the broken connection left behind (its Last Will) is not the next
            # example's doing.
            self._control_seen = len(self._control_messages(list(self.recorder.messages)))
        return self.client

    def namespace(self) -> str:
        return f"{self.prefix}/{uuid.uuid4().hex[:10]}"

    @contextlib.contextmanager
    def session(self) -> Iterator[tuple[str, str]]:
        """A fresh session (one bad example cannot spoil the next) and a fresh namespace."""
        sid = str(self.client.connect(f"bad-{uuid.uuid4().hex[:12]}")["session_id"])
        try:
            yield sid, self.namespace()
        finally:
            self.client.disconnect(sid)

    def _wait(self, done: Callable[[list[Seen]], bool]) -> list[Seen]:
        deadline = time.monotonic() + WAIT
        while True:
            messages = list(self.recorder.messages)
            if done(messages):
                return messages
            assert time.monotonic() < deadline, "a sentinel never arrived"
            time.sleep(0.01)

    def window(self, sid: str, ns: str) -> list[tuple[str, bytes]]:
        """Everything that reached the broker under ``ns``, closed by three sentinels."""
        sentinel = f"{ns}/sentinel"
        tokens = {uuid.uuid4().hex.encode() for _ in range(3)}
        for qos, token in enumerate(sorted(tokens)):
            self.client.publish(sid, sentinel, token, qos=qos)
        messages = self._wait(lambda ms: tokens <= {m.payload for m in ms
                                                    if m.topic == sentinel})
        return [(m.topic, m.payload) for m in messages
                if m.topic.startswith(ns + "/") and m.topic != sentinel]

    def check(self, sid: str, ns: str, expected: list[tuple[str, bytes]]) -> None:
        """Exactly ``expected`` reached the broker under ``ns``."""
        assert collections.Counter(self.window(sid, ns)) == collections.Counter(expected)

    def _control_messages(self, messages: list[Seen]) -> list[Seen]:
        # Sync markers and live-session records are the client's own bookkeeping.
        return [m for m in messages if (m.topic.startswith(self.registry_root + "/")
                                        and "/marker/" not in m.topic
                                        and "/client/" not in m.topic)
                or m.topic == self.control_sentinel]

    def control_window(self) -> list[tuple[str, bytes]]:
        """Registry records the client wrote since the last control window."""
        token = uuid.uuid4().hex.encode()
        self.client.set_retained_message(self.control_sentinel, token)
        messages = self._control_messages(self._wait(lambda ms: any(
            m.topic == self.control_sentinel and m.payload == token
            for m in self._control_messages(ms)[self._control_seen:])))
        end = next(i for i in range(self._control_seen, len(messages))
                   if messages[i].topic == self.control_sentinel
                   and messages[i].payload == token)
        seen = [(m.topic, m.payload) for m in messages[self._control_seen:end]
                if m.topic != self.control_sentinel]
        self._control_seen = end + 1
        return seen

    def check_registry(self, expected_topics: list[str]) -> None:
        """After registry calls: exactly these record topics were written."""
        assert sorted(t for t, _ in self.control_window()) == sorted(expected_topics)

    def close(self) -> None:
        with contextlib.suppress(MQTTClientError):
            self.client.delete_retained_message(self.control_sentinel)
        self.client.close()
        self.recorder.close()


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    # A private broker: a bad example must not change how other tests see the shared one.
    # set_tcp_nodelay: without it Nagle and delayed ACKs hold each QoS 2 sentinel ~80 ms.
    with MosquittoProcess(extra_config="set_tcp_nodelay true") as broker:
        b = Bench(broker)
        yield b
        b.close()


# == topics, filters, client ids ===========================================================

@EXAMPLES
@given(suffix=TEXT, qos=st.sampled_from([0, 1, 2]))
@example(suffix="a\x01b", qos=1)
@example(suffix="\uffff", qos=0)
@example(suffix="x" * 65_000, qos=1)
@example(suffix="é" * 40_000, qos=1)
@example(suffix="a//b/", qos=2)
def test_publish_any_topic(bench: Bench, suffix: str, qos: int) -> None:
    with bench.session() as (sid, ns):
        topic = f"{ns}/{suffix}"
        verdict = topic_verdict(topic)
        error = attempt(lambda: bench.client.publish(sid, topic, b"t", qos=qos))
        if verdict == "invalid":
            assert error is not None, f"invalid topic {topic[:80]!r} accepted"
        if verdict == "valid":
            assert error is None, f"valid topic {topic[:80]!r} refused: {error}"
        assert bench.client.validate_topic(topic)["valid"] == (error is None)
        bench.check(sid, ns, [] if error else [(topic, b"t")])


@EXAMPLES
@given(suffix=TEXT)
@example(suffix="+/#")
@example(suffix="a/#/b")
@example(suffix="a+")
@example(suffix="\x7f/+")
def test_subscribe_any_filter(bench: Bench, suffix: str) -> None:
    with bench.session() as (sid, ns):
        topic_filter = f"{ns}/{suffix}"
        verdict = filter_verdict(topic_filter)
        error = attempt(lambda: bench.client.subscribe(sid, topic_filter, qos=1))
        if verdict == "invalid":
            assert error is not None, f"invalid filter {topic_filter[:80]!r} accepted"
        if verdict == "valid":
            assert error is None, f"valid filter {topic_filter[:80]!r} refused: {error}"
        held = [s["topic_filter"] for s in bench.client.list_subscriptions(sid)]
        assert held == ([] if error else [topic_filter])
        if error is None:
            assert bench.client.unsubscribe(sid, topic_filter) == 1
        bench.check(sid, ns, [])


@EXAMPLES
@given(client_id=TEXT)
@example(client_id="")
@example(client_id="dev\x01ice")
@example(client_id="\uffff")
@example(client_id="x" * 300)
def test_connect_any_client_id(bench: Bench, client_id: str) -> None:
    sid = None
    try:
        sid = bench.client.connect(client_id + uuid.uuid4().hex[:6] if client_id else "")[
            "session_id"]
    except Exception as exc:
        assert documented(exc), f"client id {client_id[:40]!r}: undocumented error {exc!r}"
        assert utf8_size(client_id) is None or discouraged(client_id) or not client_id \
            or "\x00" in client_id, f"plain client id {client_id!r} refused: {exc}"
    if sid is not None:
        ns = bench.namespace()
        bench.client.publish(sid, f"{ns}/cid", b"c", qos=1)
        bench.check(sid, ns, [(f"{ns}/cid", b"c")])
        bench.client.disconnect(sid)


# == payloads, QoS, flags ==================================================================

PAYLOADS = st.one_of(
    st.binary(max_size=64), st.binary(max_size=16).map(bytearray),
    st.binary(max_size=16).map(memoryview), st.text(max_size=8), st.integers(), st.none(),
    st.floats(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@EXAMPLES
@given(payload=PAYLOADS)
@example(payload=b"")
@example(payload=bytes(range(256)) * 4)
def test_publish_any_payload(bench: Bench, payload: object) -> None:
    bytes_like = isinstance(payload, (bytes, bytearray, memoryview))
    with bench.session() as (sid, ns):
        topic = f"{ns}/payload"
        error = attempt(lambda: bench.client.publish(sid, topic, payload, qos=1))  # type: ignore[arg-type]
        assert (error is None) == bytes_like
        bench.check(sid, ns, [(topic, bytes(payload))] if bytes_like else [])  # type: ignore[arg-type]


@EXAMPLES
@given(qos=st.one_of(st.integers(-3, 5), st.booleans(), st.floats(), st.text(max_size=2),
                     st.none()),
       retained=st.one_of(st.booleans(), st.integers(0, 2), st.none(), st.text(max_size=1)))
def test_publish_any_qos_and_retained_flag(bench: Bench, qos: object, retained: object) -> None:
    valid = type(qos) is int and 0 <= qos <= 2 and isinstance(retained, bool)
    with bench.session() as (sid, ns):
        topic = f"{ns}/qos"
        error = attempt(lambda: bench.client.publish(sid, topic, b"q", qos=qos,  # type: ignore[arg-type]
                                                     retained=retained))  # type: ignore[arg-type]
        assert (error is None) == valid
        bench.check(sid, ns, [(topic, b"q")] if valid else [])
    if valid and retained:
        bench.client.delete_retained_message(topic)


# == batches ===============================================================================

ITEM_KINDS = st.sampled_from(["valid0", "valid1", "valid2", "bad topic", "wildcard topic",
                              "str payload", "int payload", "bad qos", "bool qos", "extra key",
                              "not a dict", "no topic", "grey topic"])


def batch_item(ns: str, kind: str, index: int) -> tuple[object, str]:
    """A batch item of ``kind`` and its verdict ("valid", "invalid" or "grey")."""
    topic = f"{ns}/batch/{index}"
    item: dict[str, Any] = {"topic": topic, "payload": f"p{index}".encode(), "qos": 1,
                            "retained": False}
    if kind.startswith("valid"):
        item["qos"] = int(kind[-1])
        return item, "valid"
    if kind == "grey topic":
        item["topic"] = topic + "\x01"
        return item, "grey"
    if kind == "not a dict":
        return [topic, b"x"], "invalid"
    changes: dict[str, dict[str, Any]] = {
        "bad topic": {"topic": ""}, "wildcard topic": {"topic": topic + "/+"},
        "str payload": {"payload": "text"}, "int payload": {"payload": 7},
        "bad qos": {"qos": 3}, "bool qos": {"qos": True}, "extra key": {"qso": 1}}
    if kind == "no topic":
        del item["topic"]
    else:
        item.update(changes[kind])
    return item, "invalid"


@EXAMPLES
@given(kinds=st.lists(ITEM_KINDS, max_size=10))
def test_publish_batch_sends_every_valid_item(bench: Bench, kinds: list[str]) -> None:
    with bench.session() as (sid, ns):
        built = [batch_item(ns, kind, i) for i, kind in enumerate(kinds)]
        items = [item for item, _ in built]
        result = bench.client.publish_batch(sid, items)  # type: ignore[arg-type]
        failed = sorted(e["index"] for e in result["errors"])
        for i, (_, verdict) in enumerate(built):
            if verdict == "valid":
                assert i not in failed, f"valid item {i} failed: {result['errors']}"
            if verdict == "invalid":
                assert i in failed, f"invalid item {i} was not reported"
        sent = [i for i in range(len(items)) if i not in failed]
        assert result["published_count"] == len(sent) == len(result["message_ids"])
        assert result["failed_count"] == len(failed)
        assert result["success"] == (not failed)
        bench.check(sid, ns, [(items[i]["topic"], items[i]["payload"])  # type: ignore[index]
                              for i in sent])


@pytest.mark.parametrize("messages", [None, 5, "topic", b"x", {"topic": "a"}])
def test_publish_batch_of_a_non_list_raises_a_documented_error(bench: Bench,
                                                               messages: object) -> None:
    with bench.session() as (sid, ns):
        error = attempt(lambda: bench.client.publish_batch(sid, messages))  # type: ignore[arg-type]
        assert error is not None
        bench.check(sid, ns, [])


# == JSON ==================================================================================

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT,
                        st.binary(max_size=4), st.tuples(st.integers()),
                        st.frozensets(st.integers(), max_size=2))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(TEXT, st.integers(), st.none(),
                                                      st.floats(allow_nan=False)),
                                            inner, max_size=3)),
    max_leaves=12)


def deeply_nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def reference_json(data: object) -> bytes | None:
    """What the guide promises: UTF-8 JSON, or None when ``data`` is not JSON."""
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return None


@EXAMPLES
@given(data=JSON_VALUES)
@example(data={"nan": math.nan})
@example(data={"a": "\ud800"})
@example(data=[2**70, -(2**70)])
def test_publish_json_any_value(bench: Bench, data: object) -> None:
    expected = reference_json(data)
    with bench.session() as (sid, ns):
        topic = f"{ns}/json"
        error = attempt(lambda: bench.client.publish_json(sid, topic, data, qos=1))
        assert (error is None) == (expected is not None)
        window = bench.window(sid, ns)
        if expected is None:
            assert window == []
        else:
            assert len(window) == 1 and window[0][0] == topic
            assert json.loads(window[0][1]) == json.loads(expected)


# == device registry =======================================================================

JSON_SAFE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=10)


def device_verdict(device_id: str) -> str:
    """"invalid": would break the registry's topic layout; "valid": plain; else "grey"."""
    if not device_id or utf8_size(device_id) is None or any(c in device_id for c in "/+#\x00"):
        return "invalid"
    if discouraged(device_id) or device_id.startswith("$") or len(device_id) > 64:
        return "grey"
    return "valid"


@EXAMPLES
@given(device_id=TEXT, metadata=st.dictionaries(st.text(max_size=6), JSON_SAFE, max_size=4))
@example(device_id="\uffff", metadata={})
@example(device_id="$dev", metadata={})
@example(device_id="x" * 200, metadata={})
def test_register_any_device_id(bench: Bench, device_id: str, metadata: dict[str, Any]) -> None:
    client = bench.healthy_client()
    verdict = device_verdict(device_id)
    before = client.list_devices(page_size=1_000)["total_count"]
    error = attempt(lambda: client.register_device(device_id, "Name", "sensor", metadata))
    if verdict == "invalid":
        assert error is not None, f"device id {device_id!r} accepted"
    if verdict == "valid":
        assert error is None, f"device id {device_id!r} refused: {error}"
    if error is not None:
        bench.check_registry([])
        assert client.list_devices(page_size=1_000)["total_count"] == before
        return
    written = bench.control_window()
    assert [t.rsplit("/", 2)[-2:] for t, _ in written] == [["device", device_id]]
    info = client.get_device_info(device_id)
    assert info is not None and info["device_id"] == device_id
    assert info["metadata"] == metadata
    fresh = MQTTClient(host=client.host, port=client.port, organization_id="bad-input",
                       registry_root=client.options.registry_root, track_in_registry=False)
    try:
        assert fresh.get_device_info(device_id)["metadata"] == metadata  # as the broker holds it
    finally:
        fresh.close()
    assert client.unregister_device(device_id) is True
    bench.control_window()


GARBAGE_METADATA = st.one_of(
    st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.one_of(st.integers(), st.none(), TEXT), JSON_VALUES, max_size=3))


@EXAMPLES
@given(metadata=GARBAGE_METADATA, status=st.one_of(st.integers(-2, 6), st.booleans(),
                                                   st.floats(), st.none(), st.text(max_size=2)))
@example(metadata={"big": 2**70}, status=1)
def test_device_metadata_and_status_of_any_shape(bench: Bench, metadata: object,
                                                 status: object) -> None:
    client = bench.healthy_client()
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    error = attempt(lambda: client.register_device(device_id, "Name", "sensor",
                                                   metadata))  # type: ignore[arg-type]
    if error is not None:
        bench.check_registry([])
        assert client.get_device_info(device_id) is None
        return
    bench.control_window()
    stored = client.get_device_info(device_id)
    assert stored is not None
    valid_status = type(status) is int and 0 <= status <= 4
    error = attempt(lambda: client.update_device_status(device_id, status))  # type: ignore[arg-type]
    assert (error is None) == valid_status
    info = client.get_device_info(device_id)
    assert info is not None
    assert info["status"] == (status if valid_status else 0)
    assert info["metadata"] == stored["metadata"]
    assert client.unregister_device(device_id) is True
    bench.control_window()


def test_deeply_nested_values_raise_a_documented_error(bench: Bench) -> None:
    """Nesting deeper than the interpreter's recursion limit is bad input, not a crash."""
    client = bench.healthy_client()
    deep = deeply_nested(100_000)
    with bench.session() as (sid, ns):
        assert attempt(lambda: client.publish_json(sid, f"{ns}/json", deep, qos=1)) is not None
        bench.check(sid, ns, [])
    assert attempt(lambda: client.register_device("deep", "Deep", "sensor",
                                                  {"deep": deep})) is not None
    bench.check_registry([])
    assert client.get_device_info("deep") is None
