"""The same behaviour from both twins: each test runs against MQTTClient and AsyncMQTTClient.

The async twin is driven from a private event loop thread; a call on the adapter awaits the
coroutine there, so a test reads the same for both.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from isa_common_mqtt import (
    AsyncMQTTClient,
    BufferFullError,
    DeviceNotFoundError,
    InvalidPayloadError,
    InvalidQoSError,
    InvalidTopicError,
    MQTTClient,
    UnknownSessionError,
)
from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory

from .conftest import WAIT, Recorder, Seen


class AsyncAdapter:
    """Calls AsyncMQTTClient coroutines on a background event loop, synchronously."""

    def __init__(self, client: AsyncMQTTClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(method(*args, **kwargs),
                                                    self.loop).result(WAIT * 2)

        return call

    def shutdown(self) -> None:
        self.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest, mqtt_broker: BrokerAddress, org: str) -> Iterator[Any]:
    options = {"host": mqtt_broker.host, "port": mqtt_broker.port, "user_id": "twins",
               "organization_id": org, "publish_timeout": WAIT}
    if request.param == "sync":
        client = MQTTClient(**options)
        yield client
        client.close()
    else:
        adapter = AsyncAdapter(AsyncMQTTClient(**options))
        yield adapter
        adapter.shutdown()


@pytest.fixture
def sid(twin: Any) -> str:
    return str(twin.connect(f"twin-{uuid.uuid4().hex[:10]}")["session_id"])


def test_the_async_twin_has_every_public_method_of_the_sync_client() -> None:
    public = {name for name in dir(MQTTClient) if not name.startswith("_")}
    assert public - set(dir(AsyncMQTTClient)) == set()


def test_publish_at_each_qos_arrives_as_sent(twin: Any, sid: str, recorder: Recorder,
                                             unique_topic: str) -> None:
    for qos in (0, 1, 2):
        result = twin.publish(sid, f"{unique_topic}/q{qos}", f"v{qos}".encode(), qos=qos)
        assert result["success"] is True and result["message_id"] > 0
    twin.publish_json(sid, f"{unique_topic}/json", {"a": [1, 2]}, qos=1)
    twin.publish_msgpack(sid, f"{unique_topic}/mp", {"b": b"\x00"}, qos=1, retained=True)
    seen = {m.topic: m for m in recorder.wait_for(5)}  # MQTT orders per QoS level only
    assert [seen[f"{unique_topic}/{name}"] for name in ("q0", "q1", "q2", "json")] == [
        Seen(f"{unique_topic}/q0", b"v0", 0, False), Seen(f"{unique_topic}/q1", b"v1", 1, False),
        Seen(f"{unique_topic}/q2", b"v2", 2, False),
        Seen(f"{unique_topic}/json", b'{"a":[1,2]}', 1, False)]
    assert seen[f"{unique_topic}/mp"].payload == b"\x81\xa1b\xc4\x01\x00"
    twin.delete_retained_message(f"{unique_topic}/mp")


def test_batch_reports_bad_items_and_sends_the_rest(twin: Any, sid: str, recorder: Recorder,
                                                    unique_topic: str) -> None:
    result = twin.publish_batch(sid, [
        {"topic": f"{unique_topic}/a", "payload": b"1", "qos": 1},
        {"topic": f"{unique_topic}/+", "payload": b"2", "qos": 1},
        {"topic": f"{unique_topic}/b", "payload": "not bytes", "qos": 1},
        {"topic": f"{unique_topic}/c", "payload": b"3", "qos": 7},
        {"topic": f"{unique_topic}/d", "payload": b"4", "qos": 2, "retained": False}])
    assert (result["published_count"], result["failed_count"]) == (2, 3)
    assert [e["index"] for e in result["errors"]] == [1, 2, 3]
    assert [(m.topic, m.payload) for m in recorder.wait_for(2)] == [
        (f"{unique_topic}/a", b"1"), (f"{unique_topic}/d", b"4")]


@pytest.mark.parametrize("call,error", [
    (lambda t, s: t.publish(s, "a/#", b"x"), InvalidTopicError),
    (lambda t, s: t.publish(s, "", b"x"), InvalidTopicError),
    (lambda t, s: t.publish(s, "a\x00b", b"x"), InvalidTopicError),
    (lambda t, s: t.publish(s, "a" * 70_000, b"x"), InvalidTopicError),
    (lambda t, s: t.publish(s, "$SYS/x", b"x"), InvalidTopicError),
    (lambda t, s: t.publish(s, "a/b", b"x", qos=3), InvalidQoSError),
    (lambda t, s: t.publish(s, "a/b", "text"), InvalidPayloadError),
    (lambda t, s: t.publish_json(s, "a/b", {1, 2}), InvalidPayloadError),
    (lambda t, s: t.subscribe(s, "a/#/b"), InvalidTopicError),
    (lambda t, s: t.publish("no-such-session", "a/b", b"x"), UnknownSessionError),
    (lambda t, s: t.update_device_status("ghost", 1), DeviceNotFoundError),
], ids=["wildcard", "empty", "nul", "too-long", "sys", "qos", "str-payload", "json-set",
        "bad-filter", "unknown-session", "unknown-device"])
def test_bad_input_gets_a_typed_error_and_sends_nothing(twin: Any, sid: str,
                                                        recorder: Recorder,
                                                        call: Callable[[Any, str], Any],
                                                        error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        call(twin, sid)
    if error is UnknownSessionError:
        assert "session" in str(caught.value)
    if issubclass(error, (InvalidTopicError, InvalidQoSError, InvalidPayloadError)):
        assert isinstance(caught.value, ValueError)
    twin.publish(sid, "after/bad/input", b"x", qos=1)  # the session is still usable
    assert twin.get_connection_status(sid)["messages_sent"] == 1


def test_connect_many_opens_real_sessions_in_order(twin: Any, recorder: Recorder,
                                                   unique_topic: str) -> None:
    ids = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(40)]
    result = twin.connect_many(ids)
    assert (result["success"], result["connected_count"], result["failed_count"]) == (True, 40, 0)
    assert [s["client_id"] for s in result["sessions"]] == ids
    for i, session in enumerate(result["sessions"]):
        assert twin.get_connection_status(session["session_id"])["connected"] is True
        twin.publish(session["session_id"], f"{unique_topic}/{i}", b"hi", qos=1)
    assert sorted(m.topic for m in recorder.wait_for(40)) == sorted(
        f"{unique_topic}/{i}" for i in range(40))


def test_connect_many_reports_bad_items_by_index_and_opens_the_rest(twin: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    result = twin.connect_many([
        f"ok-{tag}-a", "", {"client_id": f"ok-{tag}-b", "keep_alive": 0}, 42,
        {"client_id": f"ok-{tag}-c", "colour": "red"}, f"ok-{tag}-a",
        {"client_id": f"ok-{tag}-d", "clean_session": False}])
    assert (result["success"], result["connected_count"], result["failed_count"]) == (False, 2, 5)
    assert [e["index"] for e in result["errors"]] == [1, 2, 3, 4, 5]
    assert "keep_alive" in result["errors"][1]["error"]
    assert "colour" in result["errors"][3]["error"]
    assert "appears twice" in result["errors"][4]["error"]
    assert [s["client_id"] for s in result["sessions"]] == [f"ok-{tag}-a", f"ok-{tag}-d"]


def test_connect_many_resumes_persistent_sessions(twin: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    kept = {"client_id": f"kept-{tag}", "clean_session": False}
    first = twin.connect_many([kept])
    assert first["sessions"][0]["session_present"] is False
    twin.disconnect(first["sessions"][0]["session_id"])
    again = twin.connect_many([f"fresh-{tag}", kept])  # the second one is pipelined
    assert [s["session_present"] for s in again["sessions"]] == [False, True]


def test_connect_many_of_nothing_opens_nothing(twin: Any) -> None:
    assert twin.connect_many([]) == {"success": True, "connected_count": 0, "failed_count": 0,
                                     "sessions": [], "errors": []}


def test_subscribed_messages_can_be_received(twin: Any, sid: str, unique_topic: str) -> None:
    granted = twin.subscribe(sid, f"{unique_topic}/#", qos=1)
    assert granted == {"success": True, "granted_qos": 1}
    twin.publish(sid, f"{unique_topic}/x", b"hello", qos=1)
    message = twin.receive(sid, timeout=WAIT)
    assert message is not None
    assert (message.topic, message.payload, message.qos, message.retained) == \
        (f"{unique_topic}/x", b"hello", 1, False)
    assert twin.list_subscriptions(sid) == [{"topic_filter": f"{unique_topic}/#", "qos": 1}]
    assert twin.unsubscribe(sid, [f"{unique_topic}/#", "never/subscribed"]) == 1
    assert twin.list_subscriptions(sid) == []


def test_retained_messages_round_trip(twin: Any, unique_topic: str) -> None:
    topic = f"{unique_topic}/state"
    assert twin.get_retained_message(topic) == {"found": False}
    assert twin.set_retained_message(topic, b"on", qos=1) is True
    found = twin.get_retained_message(topic)
    assert (found["found"], found["payload"], found["qos"]) == (True, b"on", 1)
    assert twin.delete_retained_message(topic) is True
    assert twin.get_retained_message(topic) == {"found": False}


def test_registry_operations(twin: Any) -> None:
    twin.register_device("twin-dev", "Twin", "sensor", {"k": "v"})
    assert twin.update_device_status("twin-dev", 3)["device"]["status"] == 3
    info = twin.get_device_info("twin-dev")
    assert (info["device_name"], info["status_name"], info["metadata"]) == \
        ("Twin", "SLEEPING", {"k": "v"})
    assert twin.list_devices()["total_count"] == 1
    assert twin.get_statistics()["device_type_distribution"] == {"sensor": 1}
    assert twin.get_device_metrics("twin-dev")["messages_sent"] == 0
    assert twin.unregister_device("twin-dev") is True
    assert twin.get_device_info("twin-dev") is None


def test_health_check_reports_the_broker(twin: Any, mqtt_broker: BrokerAddress) -> None:
    health = twin.health_check(deep_check=True)
    assert health["healthy"] is True
    assert health["broker"] == f"{mqtt_broker.host}:{mqtt_broker.port}"
    assert health["sys_available"] is True


def test_async_publish_does_not_block_the_event_loop(mqtt_broker: BrokerAddress,
                                                     unique_topic: str) -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        async with AsyncMQTTClient(host=mqtt_broker.host, port=mqtt_broker.port,
                                   max_buffered_messages=5) as client:
            sid = (await client.connect(f"nb-{uuid.uuid4().hex[:8]}"))["session_id"]
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            results = await asyncio.gather(*(client.publish(sid, f"{unique_topic}/{i}", b"x")
                                             for i in range(5)))
            task.cancel()
            status = await client.get_connection_status(sid)
            return ticks, {"results": results, "status": status}

    ticks, outcome = asyncio.run(scenario())
    assert ticks > 0  # the loop kept running while publishes waited for PUBACK
    assert all(r["success"] for r in outcome["results"])
    assert outcome["status"]["messages_sent"] == 5


def test_async_full_buffer_raises_at_once(mosquitto_factory: MosquittoFactory,
                                          unique_topic: str) -> None:
    broker = mosquitto_factory()

    async def scenario() -> None:
        async with AsyncMQTTClient(host=broker.host, port=broker.port, max_buffered_messages=1,
                                   publish_timeout=WAIT, reconnect_min_delay=5) as client:
            sid = (await client.connect(f"full-{uuid.uuid4().hex[:8]}"))["session_id"]
            broker.stop()  # nothing is acknowledged from now on
            while (await client.get_connection_status(sid))["connected"]:
                await asyncio.sleep(0.02)
            first = asyncio.ensure_future(client.publish(sid, f"{unique_topic}/a", b"x"))
            await asyncio.sleep(0)  # let it queue its message and start waiting
            with pytest.raises(BufferFullError):
                await client.publish(sid, f"{unique_topic}/b", b"x")
            assert not first.done()  # still waiting for its PUBACK, loop not blocked
            first.cancel()

    asyncio.run(scenario())


def test_async_callbacks_run_on_the_event_loop(mqtt_broker: BrokerAddress,
                                               unique_topic: str) -> None:
    async def scenario() -> tuple[bool, bytes]:
        async with AsyncMQTTClient(host=mqtt_broker.host, port=mqtt_broker.port) as client:
            sid = (await client.connect(f"cb-{uuid.uuid4().hex[:8]}"))["session_id"]
            loop = asyncio.get_running_loop()
            got: asyncio.Future[tuple[bool, bytes]] = loop.create_future()

            async def on_message(topic: str, payload: bytes, qos: int, retained: bool,
                                 ts: float) -> None:
                got.set_result((asyncio.get_running_loop() is loop, payload))

            await client.subscribe(sid, f"{unique_topic}/#", 1, callback=on_message)
            await client.publish(sid, f"{unique_topic}/x", b"ping")
            return await asyncio.wait_for(got, WAIT)

    assert asyncio.run(scenario()) == (True, b"ping")
