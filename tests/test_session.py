"""Sessions are real MQTT connections: failures, reconnects, takeovers, buffers, threads."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import pytest

from isa_common_mqtt import (
    BrokerUnavailableError,
    BufferFullError,
    MQTTClient,
    NotConnectedError,
    PublishTimeoutError,
)
from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory

from .conftest import WAIT, Recorder, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dead_broker_raises_connection_error_naming_host_and_port() -> None:
    port = free_port()
    client = MQTTClient(host="127.0.0.1", port=port, connect_timeout=2)
    with pytest.raises(BrokerUnavailableError) as caught:
        client.connect("nobody-home")
    assert isinstance(caught.value, ConnectionError)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", port)
    client.close()


def test_connect_many_to_a_dead_broker_raises_naming_host_and_port() -> None:
    port = free_port()
    client = MQTTClient(host="127.0.0.1", port=port, connect_timeout=2)
    with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
        client.connect_many(["first", "second"])
    client.close()


def test_silent_listener_times_out_within_connect_timeout() -> None:
    """A socket that accepts but never answers CONNECT (a hung broker) must not hang us."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = MQTTClient(host="127.0.0.1", port=port, connect_timeout=0.5, protocol="3.1.1")
        with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}.*CONNECT"):
            client.connect("waiting")
        client.close()


def test_reconnect_restores_subscriptions_and_delivers_accepted_qos1(
        mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory()
    client = MQTTClient(host=broker.host, port=broker.port, publish_timeout=0.3,
                        reconnect_max_delay=0.5)
    received: list[bytes] = []
    got_after_restart = threading.Event()

    def on_message(topic: str, payload: bytes, qos: int, retained: bool, ts: float) -> None:
        received.append(payload)
        if payload == b"after":
            got_after_restart.set()

    sub = client.connect("subscriber")["session_id"]  # clean: must subscribe again itself
    client.subscribe(sub, "restart/#", qos=1, callback=on_message)
    # A persistent raw subscriber: the broker queues for it whatever the order of reconnects.
    witness = Recorder(broker.host, broker.port, "restart/#", qos=1, client_id="witness",
                       clean_session=False)
    pub = client.connect("publisher")["session_id"]
    client.publish(pub, "restart/x", b"before", qos=1)

    broker.stop()
    assert eventually(lambda: not client.get_connection_status(pub)["connected"])
    with pytest.raises(NotConnectedError):
        client.publish(pub, "restart/x", b"lost on purpose", qos=0)
    with pytest.raises(PublishTimeoutError, match="stay queued"):
        client.publish(pub, "restart/x", b"during", qos=1)
    broker.start()

    assert eventually(lambda: client.get_connection_status(sub)["connected"])
    assert eventually(lambda: client.get_connection_status(pub)["connected"])
    client.publish(pub, "restart/x", b"after", qos=1)
    assert got_after_restart.wait(WAIT), "subscription was not restored after the restart"
    assert eventually(lambda: {m.payload for m in witness.messages} >= {b"during", b"after"})
    witness.close()
    seen = list(dict.fromkeys(m.payload for m in witness.messages))  # QoS 1 may duplicate
    assert seen == [b"before", b"during", b"after"]  # accepted while down, delivered once back
    assert b"lost on purpose" not in received
    assert client.list_subscriptions(sub) == [{"topic_filter": "restart/#", "qos": 1}]
    assert client.get_connection_status(pub)["reconnects"] >= 1
    client.close()


def test_outgoing_buffer_is_bounded_and_keeps_what_it_accepted(
        mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory()
    # A persistent subscriber: the broker keeps its queue across the restart.
    rec = Recorder(broker.host, broker.port, "bounded/#", qos=1, client_id="bounded-rec",
                   clean_session=False)
    client = MQTTClient(host=broker.host, port=broker.port, max_buffered_messages=3,
                        publish_timeout=0.2, reconnect_max_delay=0.5)
    sid = client.connect("bounded")["session_id"]
    broker.stop()
    assert eventually(lambda: not client.get_connection_status(sid)["connected"])
    for i in range(3):
        with pytest.raises(PublishTimeoutError):
            client.publish(sid, "bounded/x", f"m{i}".encode(), qos=1)
    with pytest.raises(BufferFullError, match="max_buffered_messages"):
        client.publish(sid, "bounded/x", b"one too many", qos=1)
    assert client.get_connection_status(sid)["pending_messages"] == 3
    broker.start()
    try:
        assert eventually(lambda: client.get_connection_status(sid)["pending_messages"] == 0)
        client.publish(sid, "bounded/x", b"last", qos=1)
        got = [m.payload for m in rec.wait_for(4)]
        assert got == [b"m0", b"m1", b"m2", b"last"]  # nothing accepted was lost
    finally:
        rec.close()
    assert client.get_connection_status(sid)["messages_sent"] == 4
    client.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_client_id_clash_slows_down_instead_of_ping_pong(
        mqtt_broker: BrokerAddress, protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    """Mosquitto closes the old connection without a reason code, under v5 too, exactly as
    a flapping link looks. Neither side gives up (links flap on devices), but after three
    closes right after CONNACK a side pauses for reconnect_max_delay and says why."""
    options = {"protocol": protocol, "reconnect_min_delay": 0.05, "reconnect_max_delay": 5}
    first = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, **options)
    second = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, **options)
    client_id = f"clash-{uuid.uuid4().hex[:8]}"
    a = first.connect(client_id)["session_id"]
    b = second.connect(client_id)["session_id"]

    def statuses() -> list[dict[str, Any]]:
        return [first.get_connection_status(a), second.get_connection_status(b)]

    assert eventually(lambda: any(s["clash_suspected"] for s in statuses()))
    assert f"another client using client_id '{client_id}'" in caplog.text
    assert all(s["stopped_reason"] is None for s in statuses())  # nobody gave up for good
    paused = sum(s["reconnects"] for s in statuses())
    time.sleep(1.0)  # an observation window: a ping-pong would reconnect ~10 times a second
    assert sum(s["reconnects"] for s in statuses()) - paused <= 3
    first.close()
    second.close()


def test_slow_callback_stalls_neither_acknowledgements_nor_other_sessions(
        client: MQTTClient, unique_topic: str) -> None:
    release = threading.Event()
    fast = threading.Event()
    slow_session = client.connect(f"slow-{uuid.uuid4().hex[:8]}")["session_id"]
    fast_session = client.connect(f"fast-{uuid.uuid4().hex[:8]}")["session_id"]
    client.subscribe(slow_session, f"{unique_topic}/slow", 1,
                     callback=lambda *a: release.wait(WAIT))
    client.subscribe(fast_session, f"{unique_topic}/fast", 1, callback=lambda *a: fast.set())
    client.publish(fast_session, f"{unique_topic}/slow", b"block", qos=1)
    # The slow callback now blocks; acknowledgements and other sessions carry on.
    client.publish(slow_session, f"{unique_topic}/other", b"acked", qos=2)
    client.publish(slow_session, f"{unique_topic}/fast", b"go", qos=1)
    assert fast.wait(WAIT), "another session's callback was stalled by a slow one"
    release.set()


def test_callback_queue_is_bounded_and_counts_drops(client: MQTTClient,
                                                    unique_topic: str) -> None:
    bounded = MQTTClient(host=client.host, port=client.port, max_pending_callbacks=2)
    release = threading.Event()
    sid = bounded.connect(f"drops-{uuid.uuid4().hex[:8]}")["session_id"]
    bounded.subscribe(sid, f"{unique_topic}/#", 1, callback=lambda *a: release.wait(WAIT))
    pub = client.connect(f"pub-{uuid.uuid4().hex[:8]}")["session_id"]
    client.publish_batch(pub, [{"topic": f"{unique_topic}/x", "payload": b"m", "qos": 1}
                               for _ in range(10)])
    assert eventually(lambda: bounded.get_connection_status(sid)["messages_received"] == 10)
    assert bounded.get_connection_status(sid)["messages_dropped"] == 10 - 2
    release.set()
    bounded.close()


def test_persistent_session_gets_messages_queued_while_away(
        client: MQTTClient, unique_topic: str) -> None:
    client_id = f"durable-{uuid.uuid4().hex[:8]}"
    sid = client.connect(client_id, clean_session=False)["session_id"]
    client.subscribe(sid, f"{unique_topic}/#", qos=1)
    client.disconnect(sid)
    pub = client.connect(f"pub-{uuid.uuid4().hex[:8]}")["session_id"]
    for i in range(3):
        client.publish(pub, f"{unique_topic}/q", f"m{i}".encode(), qos=1)
    conn = client.connect(client_id, clean_session=False)
    assert conn["session_present"] is True
    got = [client.receive(conn["session_id"], timeout=WAIT) for _ in range(3)]
    assert [m.payload for m in got if m] == [b"m0", b"m1", b"m2"]


def test_many_sessions_share_one_network_thread(client: MQTTClient) -> None:
    client.connect(f"first-{uuid.uuid4().hex[:6]}")
    before = threading.active_count()
    sessions = [client.connect(f"many-{i}-{uuid.uuid4().hex[:6]}")["session_id"]
                for i in range(25)]
    for sid in sessions:
        client.publish(sid, "many/x", b"1", qos=1)
    names = [t.name for t in threading.enumerate() if t.name.startswith("isa-mqtt")]
    assert names.count("isa-mqtt-network") == 1
    assert threading.active_count() - before <= 2  # not a thread per session
