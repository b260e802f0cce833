"""Broker restarts: Mosquitto (persistence on, autosave 1 s) stopped with SIGTERM and started
again on the same port, twice, while a session publishes. An independent raw paho subscriber
with a persistent session, connected straight to the broker, counts what arrived.

Run ``pytest tests/test_restarts.py -s`` to see the counts (sent / received / lost /
duplicated); docs/reliability.md quotes them.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from isa_common_mqtt import MQTTClient
from isa_common_mqtt.testing import MosquittoFactory, MosquittoProcess

from .conftest import WAIT, Recorder, eventually
from .test_faults import PublishRun

COUNT = 300
RESTART_AFTER = (100, 200)
"""Numbers of accepted messages after which the broker is restarted."""


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> MosquittoProcess:
    return mosquitto_factory()


@pytest.fixture
def topic() -> str:
    return f"restarts/{uuid.uuid4().hex}"


@pytest.fixture
def recorder(broker: MosquittoProcess, topic: str) -> Iterator[Recorder]:
    rec = Recorder(broker.host, broker.port, f"{topic}/#", qos=2,
                   client_id=f"rec-{uuid.uuid4().hex[:10]}", clean_session=False)
    yield rec
    rec.close()


ClientFactory = Callable[..., MQTTClient]


@pytest.fixture
def clients(broker: MosquittoProcess) -> Iterator[ClientFactory]:
    """Make clients of ``broker``; all are closed before the broker stops."""
    made: list[MQTTClient] = []

    def make(**options: object) -> MQTTClient:
        client = MQTTClient(host=broker.host, port=broker.port, user_id="restarts",
                            reconnect_max_delay=0.5, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def restart_while_publishing(broker: MosquittoProcess, client: MQTTClient, session_id: str,
                             run: PublishRun) -> None:
    """Stop the broker after each number of RESTART_AFTER accepted messages; start it again
    once the publisher has had a publish time out during the outage."""
    for threshold in RESTART_AFTER:
        assert run.wait_accepted(threshold), "publishing stalled"
        timeouts = run.timeouts
        broker.stop()
        assert eventually(lambda: not client.get_connection_status(session_id)["connected"])
        assert eventually(lambda t=timeouts: run.timeouts > t or run.finished.is_set(), 30)
        broker.start()


def report(what: str, sent: list[bytes], received: list[bytes], timeouts: int) -> dict[str, int]:
    counts = collections.Counter(received)
    figures = {"sent": len(sent), "received": len(received),
               "lost": sum(1 for p in sent if p not in counts),
               "duplicated": sum(n - 1 for n in counts.values() if n > 1),
               "publish_timeouts": timeouts}
    print(f"\n{what}: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


@pytest.mark.parametrize(("qos", "clean_session"), [(1, True), (2, False), (2, True)],
                         ids=["qos1-clean", "qos2-persistent", "qos2-clean"])
def test_publishing_through_two_restarts(broker: MosquittoProcess, recorder: Recorder,
                                         clients: ClientFactory, topic: str, qos: int,
                                         clean_session: bool) -> None:
    client = clients(publish_timeout=1.0)
    # A library subscriber with a persistent session rides through the restarts too.
    got: list[bytes] = []
    lock = threading.Lock()

    def on_message(t: str, payload: bytes, q: int, retained: bool, ts: float) -> None:
        with lock:
            got.append(payload)

    sub = client.connect(f"rsub-{uuid.uuid4().hex[:8]}", clean_session=False)["session_id"]
    client.subscribe(sub, f"{topic}/data", qos=2, callback=on_message)
    pub = client.connect(f"rpub-{uuid.uuid4().hex[:8]}",
                         clean_session=clean_session)["session_id"]
    run = PublishRun(count=COUNT)
    run.start(client, pub, f"{topic}/data", qos)
    restart_while_publishing(broker, client, pub, run)
    assert run.finished.wait(120), "the publishing thread hung"
    assert run.unexpected == []
    assert len(run.accepted) == COUNT and run.timeouts >= len(RESTART_AFTER)

    wanted = set(run.accepted)
    assert eventually(lambda: wanted <= {m.payload for m in recorder.messages}, 30)
    assert eventually(lambda: wanted <= set(got), 30)
    raw = report(f"raw subscriber qos={qos} clean_session={clean_session}", run.accepted,
                 [m.payload for m in recorder.messages], run.timeouts)
    lib = report(f"library subscriber qos={qos} clean_session={clean_session}", run.accepted,
                 list(got), run.timeouts)
    assert raw["lost"] == lib["lost"] == 0
    if qos == 2:
        assert raw["duplicated"] == lib["duplicated"] == 0, "QoS 2 must arrive exactly once"


def test_persistent_subscriber_gets_what_was_queued_while_away(
        broker: MosquittoProcess, clients: ClientFactory, topic: str) -> None:
    client = clients(publish_timeout=WAIT)
    durable = f"durable-{uuid.uuid4().hex[:8]}"
    sid = client.connect(durable, clean_session=False)["session_id"]
    client.subscribe(sid, f"{topic}/#", qos=2)
    client.disconnect(sid)  # away: the broker keeps its subscription and queues for it

    pub = client.connect(f"qpub-{uuid.uuid4().hex[:8]}")["session_id"]
    before = [f"before-{i}".encode() for i in range(20)]
    for i, payload in enumerate(before):
        client.publish(pub, f"{topic}/q", payload, qos=1 + i % 2)
    broker.stop()
    broker.start()
    assert eventually(lambda: client.get_connection_status(pub)["connected"])
    after = [f"after-{i}".encode() for i in range(20)]
    for i, payload in enumerate(after):
        client.publish(pub, f"{topic}/q", payload, qos=1 + i % 2)

    # connect() needs the client's registry connection, which may still be in its reconnect
    # backoff: test_connect_works_as_soon_as_the_broker_is_back covers that on its own.
    assert eventually(lambda: client.health_check()["healthy"])
    conn = client.connect(durable, clean_session=False)
    assert conn["session_present"] is True
    got = []
    while (message := client.receive(conn["session_id"], timeout=WAIT)) is not None:
        got.append(message.payload)
        if len(got) == len(before) + len(after):
            break
    report("persistent subscriber away during a restart", before + after, got, 0)
    assert sorted(got) == sorted(before + after)  # all of it, once
    for qos in (1, 2):  # MQTT orders messages of one QoS; QoS 1 and 2 may interleave
        sent = [p for i, p in enumerate(before + after) if 1 + i % 2 == qos]
        assert [p for p in got if p in sent] == sent


def test_connect_works_as_soon_as_the_broker_is_back(broker: MosquittoProcess) -> None:
    """A new session must not fail because the client's own registry connection is still
    waiting out its reconnect backoff (up to reconnect_max_delay, 30 s by default) when the
    broker is already back."""
    client = MQTTClient(host=broker.host, port=broker.port, user_id="restarts")
    try:
        sid = client.connect(f"early-{uuid.uuid4().hex[:8]}")["session_id"]
        broker.stop()
        # Five failed attempts: the backoff has grown to a few seconds.
        assert eventually(lambda: client.get_connection_status(sid)["reconnects"] >= 5, 30)
        broker.start()
        conn = client.connect(f"late-{uuid.uuid4().hex[:8]}")
        assert client.publish(conn["session_id"], "restarts/late", b"x", qos=1)["success"]
    finally:
        client.close()
