"""Bounded memory: publishing into a dead broker stops at the bound, with a clear error.

A session whose broker is gone keeps what it accepted (QoS 1/2) up to
``max_buffered_messages``; past that every publish raises BufferFullError and the memory
the process holds stays flat, however much the application keeps trying. QoS 0 is never
queued. Once the broker is back, exactly the accepted messages arrive, in order, checked
by an independent raw paho subscriber with a persistent session. The inbox of a
subscription without callback is bounded too: it keeps the newest messages.

Run ``pytest tests/test_memory.py -s`` to see the figures.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from isa_common_mqtt import BufferFullError, MQTTClient, NotConnectedError, PublishTimeoutError
from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory, MosquittoProcess

from .conftest import WAIT, Recorder, eventually

BOUND = 500
"""max_buffered_messages of the session under test."""
EXTRA = 5_000
"""Publishes attempted past the bound: 5 MB of payloads if they were kept."""
PAYLOAD = 1024
FLAT = 256 * 1024
"""Growth of traced memory that still counts as flat (20x less than EXTRA payloads)."""


def payload(tag: str, i: int) -> bytes:
    """A distinct 1 KiB payload: a readable head, then filler."""
    head = f"{tag}{i:05d}".encode()
    return head + b"." * (PAYLOAD - len(head))


def traced() -> int:
    """Bytes traced now, after garbage cycles are collected (what is really held)."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@dataclass
class DeadBroker:
    broker: MosquittoProcess
    client: MQTTClient
    session_id: str
    recorder: Recorder
    topic: str

    def connected(self) -> bool:
        return bool(self.client.get_connection_status(self.session_id)["connected"])

    def pending(self) -> int:
        return int(self.client.get_connection_status(self.session_id)["pending_messages"])


@pytest.fixture
def dead(mosquitto_factory: MosquittoFactory) -> Iterator[DeadBroker]:
    """A session that published once, then lost its broker (stopped, not yet restarted)."""
    broker = mosquitto_factory()
    topic = f"memory/{uuid.uuid4().hex}"
    # Persistent and subscribed before the outage: the broker keeps its queue across it.
    recorder = Recorder(broker.host, broker.port, f"{topic}/#", qos=1,
                        client_id=f"mem-rec-{uuid.uuid4().hex[:8]}", clean_session=False)
    # A tiny publish_timeout keeps 5,500 publishes into the dead broker within seconds;
    # no registry tracking: only the session under test talks to the broker.
    client = MQTTClient(host=broker.host, port=broker.port, max_buffered_messages=BOUND,
                        publish_timeout=0.001, reconnect_max_delay=0.5,
                        track_in_registry=False)
    sid = str(client.connect(f"mem-{uuid.uuid4().hex[:8]}")["session_id"])
    client.publish(sid, f"{topic}/data", b"before", qos=1)
    assert [m.payload for m in recorder.wait_for(1)] == [b"before"]
    broker.stop()
    setup = DeadBroker(broker, client, sid, recorder, topic)
    assert eventually(lambda: not setup.connected()), "the session did not notice the outage"
    try:
        yield setup
    finally:
        client.close()
        recorder.close()


@pytest.fixture
def tracing() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.usefixtures("tracing")
def test_qos1_into_a_dead_broker_stops_at_the_bound_with_flat_memory(dead: DeadBroker) -> None:
    client, sid, topic = dead.client, dead.session_id, f"{dead.topic}/data"
    start = traced()
    accepted = [payload("a", i) for i in range(BOUND)]
    for body in accepted:  # accepted and queued: each times out waiting for its PUBACK
        with pytest.raises(PublishTimeoutError, match="stay queued"):
            client.publish(sid, topic, body, qos=1)
    assert dead.pending() == BOUND
    at_bound = traced()
    # Sanity check of the measurement: the queue really holds the accepted payloads.
    assert at_bound - start >= BOUND * PAYLOAD

    refusals = 0
    message = ""
    for i in range(EXTRA):
        try:
            client.publish(sid, topic, payload("r", i), qos=1)
        except BufferFullError as exc:
            refusals += 1
            message = message or str(exc)
    grown = traced() - at_bound
    print(f"\nqos=1 bound={BOUND}: held by the queue {(at_bound - start) // 1024} KiB; "
          f"after {EXTRA} refused publishes of {PAYLOAD} B: {grown / 1024:+.1f} KiB")
    assert refusals == EXTRA
    assert "max_buffered_messages" in message and f"{BOUND} unacknowledged" in message
    assert dead.pending() == BOUND
    assert grown < FLAT, f"memory grew by {grown} B over {EXTRA} refused publishes"

    dead.broker.start()
    assert eventually(lambda: dead.connected() and dead.pending() == 0, 30), \
        "the accepted messages were not delivered after the broker came back"
    wanted = [b"before", *accepted]
    assert eventually(lambda: len({m.payload for m in dead.recorder.messages}) >= len(wanted),
                      30)
    got = list(dict.fromkeys(m.payload for m in dead.recorder.messages))  # QoS 1 may repeat
    assert got == wanted  # exactly the accepted ones, in order; none of the refused
    assert client.get_connection_status(sid)["messages_sent"] == len(wanted)


@pytest.mark.usefixtures("tracing")
def test_qos0_into_a_dead_broker_fails_at_once_with_flat_memory(dead: DeadBroker) -> None:
    client, sid, topic = dead.client, dead.session_id, f"{dead.topic}/data"
    before = traced()
    refusals = 0
    message = ""
    for i in range(EXTRA):
        try:
            client.publish(sid, topic, payload("z", i), qos=0)
        except NotConnectedError as exc:
            refusals += 1
            message = message or str(exc)
    grown = traced() - before
    print(f"\nqos=0: after {EXTRA} refused publishes of {PAYLOAD} B: {grown / 1024:+.1f} KiB")
    assert refusals == EXTRA
    assert "not connected" in message and "QoS 0 messages are never queued" in message
    assert dead.pending() == 0
    assert grown < FLAT, f"memory grew by {grown} B over {EXTRA} refused publishes"

    dead.broker.start()
    assert eventually(dead.connected, 30)
    # publish_timeout is 1 ms here: on a busy machine the PUBACK comes later, and the
    # message stays queued until it does.
    with contextlib.suppress(PublishTimeoutError):
        client.publish(sid, topic, b"after", qos=1)
    got = [m.payload for m in dead.recorder.wait_for(2, WAIT)]
    assert got[-1] == b"after"
    assert [p for p in dict.fromkeys(got) if p != b"after"] == [b"before"]  # no QoS 0 leaked
    assert eventually(lambda: client.get_connection_status(sid)["messages_sent"] == 2)


def test_inbox_keeps_the_newest_messages_up_to_its_bound(mqtt_broker: BrokerAddress,
                                                         client: MQTTClient,
                                                         unique_topic: str) -> None:
    """A subscription without callback fills the inbox; nobody calls receive() for a while:
    past max_pending_callbacks the oldest message goes, and each drop is counted."""
    bounded = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port,
                         max_pending_callbacks=3, track_in_registry=False)
    try:
        sid = bounded.connect(f"inbox-{uuid.uuid4().hex[:8]}")["session_id"]
        bounded.subscribe(sid, f"{unique_topic}/#", qos=1)
        pub = client.connect(f"inbox-pub-{uuid.uuid4().hex[:8]}")["session_id"]
        client.publish_batch(pub, [{"topic": f"{unique_topic}/x", "payload": f"m{i}".encode(),
                                    "qos": 1} for i in range(10)])
        assert eventually(lambda: bounded.get_connection_status(sid)["messages_received"] == 10)
        assert bounded.get_connection_status(sid)["messages_dropped"] == 10 - 3
        got = []
        while (message := bounded.receive(sid, timeout=0.2)) is not None:
            got.append(message.payload)
        assert got == [b"m7", b"m8", b"m9"]
    finally:
        bounded.close()
