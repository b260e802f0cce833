"""Broker compatibility: the library's core behaviour against Mosquitto, RabbitMQ and NATS.

RabbitMQ 3.10 (MQTT plugin) and NATS 2.9 (MQTT listener) speak MQTT 3.1.1 only, have no
QoS 2 and no ``$SYS``, let ``#`` match ``$`` topics, and mangle some topic characters
(measured: docs/compatibility.md). The library must detect what a broker cannot do, never
loop, raise a clear typed error (or downgrade where the user opted in), and keep every
other feature working. Each broker is a private instance on free loopback ports: RabbitMQ
and NATS from the session fixtures ``rabbitmq_broker`` / ``nats_broker``, Mosquitto from a
fixture of this module (so that '#' subscriptions here see no other test's traffic).
docs/compatibility.md is the matrix of what these tests showed.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from isa_common_mqtt import (
    DeviceStatus,
    InvalidTopicError,
    MQTTClient,
    ProtocolNotSupportedError,
)
from isa_common_mqtt.testing import MosquittoProcess, NatsProcess, RabbitMQProcess

from .conftest import WAIT, Recorder, eventually

MOSQUITTO, RABBITMQ, NATS = "mosquitto", "rabbitmq", "nats"
ENGINES = [MOSQUITTO, RABBITMQ, NATS]
LIMITED = [RABBITMQ, NATS]
"""Engines without MQTT 5, QoS 2 and $SYS."""
SHORT = 5.0
"""publish_timeout of the clients here: a publish the broker never acknowledges fails fast."""
_FIXTURE = {MOSQUITTO: "compat_mosquitto", RABBITMQ: "rabbitmq_broker", NATS: "nats_broker"}


@dataclass(frozen=True)
class Engine:
    """One broker under test: its kind and where it listens."""

    name: str
    host: str
    port: int

    @property
    def full_mqtt(self) -> bool:
        """MQTT 5, QoS 2 and $SYS (Mosquitto)."""
        return self.name == MOSQUITTO


@pytest.fixture(scope="module")
def compat_mosquitto() -> Iterator[MosquittoProcess]:
    """A Mosquitto of this module only: '#' subscriptions here see no other test's traffic."""
    with MosquittoProcess() as broker:
        yield broker


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn (tests may narrow the list with indirect parametrization)."""
    broker = request.getfixturevalue(_FIXTURE[request.param])
    return Engine(request.param, broker.host, broker.port)


@pytest.fixture(params=LIMITED)
def limited(request: pytest.FixtureRequest) -> Engine:
    """RabbitMQ and NATS: the engines without MQTT 5, QoS 2 and $SYS."""
    broker = request.getfixturevalue(_FIXTURE[request.param])
    return Engine(request.param, broker.host, broker.port)


@pytest.fixture
def make_client(org: str) -> Iterator[Callable[..., MQTTClient]]:
    """Clients of one organisation with short, bounded waits; all closed at teardown."""
    clients: list[MQTTClient] = []

    def make(target: Engine, **options: object) -> MQTTClient:
        settings: dict[str, object] = {"registry_root": "registry", "publish_timeout": SHORT,
                                       "request_timeout": WAIT, "connect_timeout": WAIT}
        settings.update(options)
        client = MQTTClient(host=target.host, port=target.port, user_id="compat",
                            organization_id=org, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def rec_factory() -> Iterator[Callable[..., Recorder]]:
    """Independent raw paho subscribers, closed at teardown."""
    recorders: list[Recorder] = []

    def make(target: Engine, topic_filter: str, qos: int = 2) -> Recorder:
        recorder = Recorder(target.host, target.port, topic_filter, qos)
        recorders.append(recorder)
        return recorder

    yield make
    for recorder in recorders:
        recorder.close()


def _session(client: MQTTClient) -> str:
    return str(client.connect(f"compat-{uuid.uuid4().hex[:12]}")["session_id"])


def _assert_refused_for_lack_of_wildcard_retained(engine: Engine, exc: Exception) -> None:
    """RabbitMQ sends no retained messages to wildcard subscriptions, so the registry cannot
    be read from it: a typed refusal that says so is acceptable there (a registry made of
    exact-topic reads would be better); an empty or partial answer never is."""
    assert engine.name == RABBITMQ, exc
    assert isinstance(exc, ProtocolNotSupportedError), exc
    assert "retained" in str(exc), exc


def _assert_healthy_session(client: MQTTClient, session_id: str) -> None:
    """Still connected, never reconnected, never stopped: the broker did not close us."""
    status = client.get_connection_status(session_id)
    assert status["connected"], status
    assert status["reconnects"] == 0, status
    assert status["stopped_reason"] is None, status


# == connecting ==========================================================================


def test_connect_falls_back_to_the_protocol_the_broker_speaks(
        engine: Engine, make_client: Callable[..., MQTTClient]) -> None:
    client = make_client(engine)
    result = client.connect(f"compat-{uuid.uuid4().hex[:12]}")
    expected = "5" if engine.full_mqtt else "3.1.1"
    assert result["success"] is True
    assert result["protocol"] == expected
    assert client.get_connection_status(result["session_id"])["protocol"] == expected
    _assert_healthy_session(client, result["session_id"])
    health = client.health_check()
    assert health["healthy"] is True
    assert health["protocol"] == expected


def test_forced_mqtt5_is_refused_with_a_typed_error(
        limited: Engine, make_client: Callable[..., MQTTClient]) -> None:
    client = make_client(limited, protocol="5", track_in_registry=False)
    with pytest.raises(ProtocolNotSupportedError) as caught:
        client.connect(f"compat-{uuid.uuid4().hex[:12]}")
    assert (caught.value.host, caught.value.port) == (limited.host, limited.port)


# == publishing and subscribing ==========================================================


def test_qos0_and_qos1_reach_an_independent_subscriber(
        engine: Engine, make_client: Callable[..., MQTTClient],
        rec_factory: Callable[..., Recorder], unique_topic: str) -> None:
    rec = rec_factory(engine, f"{unique_topic}/#", qos=1)
    client = make_client(engine)
    sid = _session(client)
    client.publish(sid, f"{unique_topic}/zero", b"0", qos=0)
    client.publish(sid, f"{unique_topic}/one", b"1", qos=1)
    seen = rec.wait_for(2)
    assert {(m.topic, m.payload) for m in seen} == {(f"{unique_topic}/zero", b"0"),
                                                     (f"{unique_topic}/one", b"1")}
    assert [m.qos for m in seen if m.payload == b"1"] == [1]
    _assert_healthy_session(client, sid)


def test_subscribe_with_callback(engine: Engine, make_client: Callable[..., MQTTClient],
                                 unique_topic: str) -> None:
    client = make_client(engine)
    got: list[tuple[str, bytes, int, bool]] = []
    arrived = threading.Condition()

    def on_message(topic: str, payload: bytes, qos: int, retained: bool, ts: float) -> None:
        with arrived:
            got.append((topic, payload, qos, retained))
            arrived.notify_all()

    sub = _session(client)
    assert client.subscribe(sub, f"{unique_topic}/+", qos=1, callback=on_message) == {
        "success": True, "granted_qos": 1}
    pub = _session(client)
    for i in range(3):
        client.publish(pub, f"{unique_topic}/m{i}", f"p{i}".encode(), qos=1)
    with arrived:
        arrived.wait_for(lambda: len(got) >= 3, WAIT)
    assert sorted(got) == [(f"{unique_topic}/m{i}", f"p{i}".encode(), 1, False)
                           for i in range(3)]
    assert client.list_subscriptions(sub) == [{"topic_filter": f"{unique_topic}/+", "qos": 1}]


def test_subscribe_at_qos2_reports_the_granted_qos(
        engine: Engine, make_client: Callable[..., MQTTClient], unique_topic: str) -> None:
    client = make_client(engine)
    sid = _session(client)
    granted = client.subscribe(sid, f"{unique_topic}/#", qos=2)["granted_qos"]
    assert granted == (2 if engine.full_mqtt else 1)
    assert client.list_subscriptions(sid) == [{"topic_filter": f"{unique_topic}/#",
                                               "qos": granted}]


def test_retained_set_get_delete(engine: Engine, make_client: Callable[..., MQTTClient],
                                 rec_factory: Callable[..., Recorder],
                                 unique_topic: str) -> None:
    client = make_client(engine)
    topic = f"{unique_topic}/state"
    assert client.set_retained_message(topic, b'{"mode": "heat"}', qos=1) is True
    found = client.get_retained_message(topic)
    assert found["found"] is True
    assert (found["topic"], found["payload"], found["qos"]) == (topic, b'{"mode": "heat"}', 1)
    late = rec_factory(engine, topic, qos=1).wait_for(1)  # a new subscriber gets it too
    assert [(m.payload, m.retain) for m in late] == [(b'{"mode": "heat"}', True)]
    assert client.delete_retained_message(topic) is True
    assert client.get_retained_message(topic) == {"found": False}


def test_publish_batch(engine: Engine, make_client: Callable[..., MQTTClient],
                       rec_factory: Callable[..., Recorder], unique_topic: str) -> None:
    rec = rec_factory(engine, f"{unique_topic}/#", qos=1)
    client = make_client(engine)
    sid = _session(client)
    messages = [{"topic": f"{unique_topic}/b{i}", "payload": f"{i}".encode(), "qos": i % 2}
                for i in range(5)]
    messages.insert(2, {"topic": f"{unique_topic}/bad/#", "payload": b"x", "qos": 1})
    result = client.publish_batch(sid, messages)
    assert (result["published_count"], result["failed_count"]) == (5, 1)
    assert [e["index"] for e in result["errors"]] == [2]
    assert sorted(m.payload for m in rec.wait_for(5)) == [b"0", b"1", b"2", b"3", b"4"]
    _assert_healthy_session(client, sid)


# == device registry, statistics, health =================================================


@pytest.mark.parametrize("root", ["registry", "$registry"])
def test_device_registry(engine: Engine, make_client: Callable[..., MQTTClient],
                         root: str) -> None:
    client = make_client(engine, registry_root=root)
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    try:
        registered = client.register_device(device_id, "Lab sensor", "sensor", {"room": "lab"})
    except ProtocolNotSupportedError as exc:
        _assert_refused_for_lack_of_wildcard_retained(engine, exc)
        return
    assert registered["success"] is True
    info = client.get_device_info(device_id)
    assert info is not None
    assert (info["device_name"], info["device_type"], info["metadata"], info["status"]) == (
        "Lab sensor", "sensor", {"room": "lab"}, 0)
    updated = client.update_device_status(device_id, DeviceStatus.ONLINE, {"fw": "1.2"})
    assert updated["device"]["status"] == 1
    assert updated["device"]["metadata"] == {"room": "lab", "fw": "1.2"}
    online = client.list_devices(status=DeviceStatus.ONLINE)
    assert [d["device_id"] for d in online["devices"]] == [device_id]
    assert online["total_count"] == 1
    assert client.unregister_device(device_id) is True
    assert client.get_device_info(device_id) is None


def test_registry_is_shared_between_clients(
        engine: Engine, make_client: Callable[..., MQTTClient]) -> None:
    """A second client sees the first one's device, or says it cannot; never an empty list."""
    writer = make_client(engine)
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    reader = make_client(engine)
    try:
        writer.register_device(device_id, "Shared", "gateway")
        listed = reader.list_devices()
    except ProtocolNotSupportedError as exc:
        _assert_refused_for_lack_of_wildcard_retained(engine, exc)
        return
    assert [d["device_id"] for d in listed["devices"]] == [device_id]
    writer.update_device_status(device_id, DeviceStatus.SLEEPING)
    assert eventually(lambda: (reader.get_device_info(device_id) or {}).get("status") == 3)


def test_list_topics_includes_retained_topics(
        engine: Engine, make_client: Callable[..., MQTTClient], unique_topic: str) -> None:
    client = make_client(engine)
    sid = _session(client)
    client.set_retained_message(f"{unique_topic}/kept", b"r")
    client.publish(sid, f"{unique_topic}/sent", b"s", qos=1)
    try:
        listed = client.list_topics(prefix=f"{unique_topic}/")
    except ProtocolNotSupportedError as exc:
        _assert_refused_for_lack_of_wildcard_retained(engine, exc)
        return
    finally:
        client.delete_retained_message(f"{unique_topic}/kept")
    topics = {t["topic"]: t for t in listed["topics"]}
    assert set(topics) == {f"{unique_topic}/kept", f"{unique_topic}/sent"}
    assert topics[f"{unique_topic}/kept"]["has_retained_message"] is True
    assert topics[f"{unique_topic}/sent"]["message_count"] == 1


def test_statistics_say_broker_figures_are_unavailable_without_sys(
        engine: Engine, make_client: Callable[..., MQTTClient], unique_topic: str) -> None:
    client = make_client(engine)
    sid = _session(client)
    client.publish(sid, f"{unique_topic}/x", b"1", qos=1)
    try:
        stats = client.get_statistics()
    except ProtocolNotSupportedError as exc:
        _assert_refused_for_lack_of_wildcard_retained(engine, exc)
        return
    assert stats["active_sessions"] >= 1
    assert stats["messages_sent_today"] >= 1
    broker = stats["broker"]
    figures = {k: v for k, v in broker.items() if k not in ("available", "source")}
    assert figures, broker
    if engine.full_mqtt:
        assert broker["available"] is True
        assert isinstance(figures["messages_received"], int)
    else:
        assert broker["available"] is False
        assert all(v is None for v in figures.values()), broker  # never 0 for "unknown"


def test_deep_health_check(engine: Engine, make_client: Callable[..., MQTTClient]) -> None:
    """Healthy on every engine; a registry the broker cannot serve is reported, not fatal."""
    health = make_client(engine).health_check(deep_check=True)
    assert health["healthy"] is True, health
    assert health["broker_status"] == "connected"
    if engine.name == RABBITMQ and health["registry"].get("synced") is not True:
        assert "retained" in str(health["registry"]), health
    else:
        assert health["registry"]["synced"] is True, health
    assert health["sys_available"] is engine.full_mqtt


# == QoS 2 on brokers without it =========================================================


def test_qos2_publish_is_refused_with_a_typed_error(
        limited: Engine, make_client: Callable[..., MQTTClient],
        rec_factory: Callable[..., Recorder], unique_topic: str) -> None:
    rec = rec_factory(limited, f"{unique_topic}/#", qos=1)
    client = make_client(limited)
    sid = _session(client)
    with pytest.raises(ProtocolNotSupportedError, match="QoS 2"):
        client.publish(sid, f"{unique_topic}/refused", b"exactly once?", qos=2)
    with pytest.raises(ProtocolNotSupportedError, match="QoS 2"):
        client.set_retained_message(f"{unique_topic}/refused-retained", b"r", qos=2)
    client.publish(sid, f"{unique_topic}/after", b"after", qos=1)
    seen = rec.wait_for(1)
    assert [m.payload for m in seen] == [b"after"]  # nothing refused reached the broker
    _assert_healthy_session(client, sid)


def test_qos2_item_fails_alone_in_a_batch(
        limited: Engine, make_client: Callable[..., MQTTClient],
        rec_factory: Callable[..., Recorder], unique_topic: str) -> None:
    rec = rec_factory(limited, f"{unique_topic}/#", qos=1)
    client = make_client(limited)
    sid = _session(client)
    result = client.publish_batch(sid, [
        {"topic": f"{unique_topic}/a", "payload": b"a", "qos": 1},
        {"topic": f"{unique_topic}/b", "payload": b"b", "qos": 2},
        {"topic": f"{unique_topic}/c", "payload": b"c", "qos": 1},
    ])
    assert (result["published_count"], result["failed_count"]) == (2, 1)
    assert [e["index"] for e in result["errors"]] == [1]
    assert [m.payload for m in rec.wait_for(2)] == [b"a", b"c"]
    _assert_healthy_session(client, sid)


def test_qos2_is_downgraded_only_when_opted_in_and_only_where_needed(
        engine: Engine, make_client: Callable[..., MQTTClient],
        rec_factory: Callable[..., Recorder], unique_topic: str) -> None:
    rec = rec_factory(engine, f"{unique_topic}/#", qos=2)
    client = make_client(engine, downgrade_qos2=True)
    sid = _session(client)
    assert client.publish(sid, f"{unique_topic}/alert", b"high", qos=2)["success"] is True
    seen = rec.wait_for(1)
    assert [(m.payload, m.qos) for m in seen] == [(b"high", 2 if engine.full_mqtt else 1)]
    _assert_healthy_session(client, sid)


@pytest.fixture(params=LIMITED)
def fresh_limited(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A RabbitMQ or NATS this process never talked to: nothing about it is cached yet."""
    process = RabbitMQProcess() if request.param == RABBITMQ else NatsProcess()
    with process as broker:
        yield Engine(request.param, broker.host, broker.port)


def test_capabilities_are_detected_without_trying_mqtt5(
        fresh_limited: Engine, make_client: Callable[..., MQTTClient],
        unique_topic: str) -> None:
    """With protocol='3.1.1' the broker's refusal of MQTT 5 is never seen; what it cannot do
    must be found out all the same."""
    client = make_client(fresh_limited, protocol="3.1.1")
    sid = _session(client)
    with pytest.raises(ProtocolNotSupportedError, match="QoS 2"):
        client.publish(sid, f"{unique_topic}/q2", b"x", qos=2)
    with pytest.raises(InvalidTopicError):
        client.publish(sid, f"{unique_topic}/a.b", b"x", qos=1)
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    try:
        client.register_device(device_id, "Fresh", "sensor")
        listed = client.list_devices()
    except ProtocolNotSupportedError as exc:
        _assert_refused_for_lack_of_wildcard_retained(fresh_limited, exc)
    else:
        assert fresh_limited.name != RABBITMQ, "RabbitMQ cannot serve a shared registry"
        assert [d["device_id"] for d in listed["devices"]] == [device_id]
    _assert_healthy_session(client, sid)


# == topic characters and $ topics =======================================================


@pytest.mark.parametrize(("engine", "level"),
                         [(NATS, "a.b"), (NATS, "a b"), (RABBITMQ, "a.b"), (RABBITMQ, "a*b")],
                         indirect=["engine"])
def test_topics_the_broker_would_mangle_are_refused_locally(
        engine: Engine, level: str, make_client: Callable[..., MQTTClient],
        unique_topic: str) -> None:
    """NATS closes the connection on '.' or ' '; RabbitMQ turns '.' into '/' and '*' into
    '+' (so a retained read of the same topic finds nothing and a callback never fires)."""
    client = make_client(engine)
    sid = _session(client)
    topic = f"{unique_topic}/{level}"
    with pytest.raises(InvalidTopicError):
        client.publish(sid, topic, b"x", qos=1)
    with pytest.raises(InvalidTopicError):
        client.publish(sid, topic, b"x", qos=0)
    with pytest.raises(InvalidTopicError):
        client.subscribe(sid, f"{topic}/#", qos=1)
    with pytest.raises(InvalidTopicError):
        client.set_retained_message(topic, b"x")
    client.publish(sid, f"{unique_topic}/fine", b"still usable", qos=1)
    _assert_healthy_session(client, sid)


@pytest.mark.parametrize(("engine", "level"),
                         [(MOSQUITTO, "a.b"), (MOSQUITTO, "a b"), (MOSQUITTO, "a*b"),
                          (RABBITMQ, "a b"), (NATS, "a*b"), (NATS, "a>b")],
                         indirect=["engine"])
def test_topics_the_broker_carries_as_they_are(
        engine: Engine, level: str, make_client: Callable[..., MQTTClient],
        rec_factory: Callable[..., Recorder], unique_topic: str) -> None:
    rec = rec_factory(engine, f"{unique_topic}/#", qos=1)
    client = make_client(engine)
    sid = _session(client)
    client.publish(sid, f"{unique_topic}/{level}", b"x", qos=1)
    assert [m.topic for m in rec.wait_for(1)] == [f"{unique_topic}/{level}"]
    _assert_healthy_session(client, sid)


@pytest.mark.parametrize("engine", [MOSQUITTO, NATS], indirect=True)
def test_retained_messages_reach_the_callback_of_a_new_hash_subscription(
        engine: Engine, make_client: Callable[..., MQTTClient], unique_topic: str) -> None:
    """NATS sends the retained messages of a '#' subscription before its SUBACK (MQTT allows
    that); they belong to the subscription all the same. (RabbitMQ sends none on '#'.)"""
    client = make_client(engine, track_in_registry=False)
    client.set_retained_message(f"{unique_topic}/kept", b"r")
    arrived = threading.Event()

    def on_message(topic: str, payload: bytes, qos: int, retained: bool, ts: float) -> None:
        if topic == f"{unique_topic}/kept" and retained:
            arrived.set()

    try:
        sid = _session(client)
        client.subscribe(sid, "#", qos=1, callback=on_message)
        assert arrived.wait(WAIT), "the retained message did not reach the callback"
    finally:
        client.delete_retained_message(f"{unique_topic}/kept")


def test_hash_subscription_delivers_only_subscribed_topics(
        engine: Engine, make_client: Callable[..., MQTTClient], unique_topic: str) -> None:
    """RabbitMQ and NATS deliver '$' topics (NATS also JetStream internals) to '#'; they must
    reach neither the callback nor receive()."""
    client = make_client(engine, track_in_registry=False)
    got: list[str] = []
    end = threading.Event()

    def on_message(topic: str, payload: bytes, qos: int, retained: bool, ts: float) -> None:
        got.append(topic)
        if topic == f"{unique_topic}/end":
            end.set()

    sid = _session(client)
    client.subscribe(sid, "#", qos=1, callback=on_message)
    other = make_client(engine, track_in_registry=False)
    pub = _session(other)
    other.publish(pub, f"$compat/{uuid.uuid4().hex}", b"dollar", qos=1)
    other.publish(pub, f"{unique_topic}/end", b"end", qos=1)  # same connection: arrives last
    assert end.wait(WAIT)
    assert not [t for t in got if t.startswith("$")]
    leaked = client.receive(sid, timeout=0)
    assert leaked is None, f"receive() got {leaked.topic!r}, which nobody subscribed to"


# == the broker processes themselves =====================================================


def _processes_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is ``directory`` (even if removed)."""
    wanted = {str(directory.resolve()), f"{directory.resolve()} (deleted)"}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") in wanted:
                    pids.append(int(entry.name))
            except OSError:
                continue  # exited meanwhile, or not ours to inspect
    return pids


def test_rabbitmq_process_stops_without_leaving_a_process_behind() -> None:
    broker = RabbitMQProcess()
    try:
        broker.start()
        assert broker.boot_seconds is not None
        rec = Recorder(broker.host, broker.port, "boot/#", qos=1)
        rec.close()
        running = _processes_in(broker.directory)
        assert len(running) >= 2, running  # epmd and the node at least
        broker.stop()
        assert not broker.running
        assert eventually(lambda: not _processes_in(broker.directory)), \
            _processes_in(broker.directory)
    finally:
        broker.close()
    assert not broker.directory.exists()


def test_rabbitmq_process_that_cannot_start_says_why_and_leaves_nothing_behind() -> None:
    broker = RabbitMQProcess(extra_config="no_such_setting = 1")
    with pytest.raises(RuntimeError, match="failed_to_prepare_configuration"), broker:
        pass
    assert not broker.running
    assert not broker.directory.exists()
    assert eventually(lambda: not _processes_in(broker.directory))


def test_nats_restart_keeps_port_and_retained_messages(
        make_client: Callable[..., MQTTClient], unique_topic: str) -> None:
    with NatsProcess() as broker:
        port = broker.port
        target = Engine(NATS, broker.host, port)
        client = make_client(target, track_in_registry=False)
        client.set_retained_message(f"{unique_topic}/kept", b"across restarts")
        broker.restart()
        assert broker.port == port
        again = make_client(target, track_in_registry=False)
        assert again.get_retained_message(f"{unique_topic}/kept")["payload"] == b"across restarts"
        broker.kill()
        assert not broker.running
        assert eventually(lambda: not _processes_in(broker.directory))
