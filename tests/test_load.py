"""Load: 100 sessions of one client, published to from 20 threads at once (every thread uses
every session), at QoS 1 and QoS 2, while a library subscriber and an independent raw paho
subscriber count. Everything must arrive, nothing may hang, QoS 2 arrives exactly once.

Run ``pytest tests/test_load.py -s`` to see the figures.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from isa_common_mqtt import MQTTClient
from isa_common_mqtt.testing import MosquittoFactory, MosquittoProcess

from .conftest import Recorder, eventually

SESSIONS = 100
THREADS = 20
PER_THREAD = 150
BATCH = 10
"""Threads with an odd number publish in batches of this size; the others one by one."""
BOUND = 60.0
"""Seconds within which publishing must finish: far above a healthy run, far below a hang."""


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> MosquittoProcess:
    return mosquitto_factory()


@pytest.fixture
def client(broker: MosquittoProcess) -> Iterator[MQTTClient]:
    c = MQTTClient(host=broker.host, port=broker.port, user_id="load", publish_timeout=30.0)
    yield c
    c.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_many_sessions_many_threads(broker: MosquittoProcess, client: MQTTClient,
                                    qos: int) -> None:
    topic = f"load/{uuid.uuid4().hex[:8]}"
    recorder = Recorder(broker.host, broker.port, f"{topic}/#", qos=2)
    got: list[bytes] = []
    lock = threading.Lock()

    def on_message(t: str, payload: bytes, q: int, retained: bool, ts: float) -> None:
        with lock:
            got.append(payload)

    sub = client.connect(f"load-sub-{uuid.uuid4().hex[:8]}")["session_id"]
    client.subscribe(sub, f"{topic}/#", qos=2, callback=on_message)
    started = time.monotonic()
    sessions = [client.connect(f"load-{i}-{uuid.uuid4().hex[:6]}")["session_id"]
                for i in range(SESSIONS)]
    connect_s = time.monotonic() - started

    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def publisher(t: int) -> None:
        try:
            start.wait(BOUND)
            payloads = [f"{t}-{n}".encode() for n in range(PER_THREAD)]
            if t % 2:
                for i in range(0, PER_THREAD, BATCH):
                    sid = sessions[(t + i) % SESSIONS]
                    result = client.publish_batch(sid, [
                        {"topic": f"{topic}/{t}", "payload": p, "qos": qos}
                        for p in payloads[i:i + BATCH]])
                    assert result["failed_count"] == 0, result["errors"]
            else:
                for n, payload in enumerate(payloads):
                    client.publish(sessions[(t + n) % SESSIONS], f"{topic}/{t}", payload, qos=qos)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(t,), daemon=True)
               for t in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(BOUND - (time.monotonic() - started), 0.1))
    publish_s = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "publishers deadlocked or hung"
    assert errors == []

    total = THREADS * PER_THREAD
    sent = {f"{t}-{n}".encode() for t in range(THREADS) for n in range(PER_THREAD)}
    assert eventually(lambda: sent <= {m.payload for m in recorder.messages}, 30)
    assert eventually(lambda: sent <= set(got), 30)
    deliver_s = time.monotonic() - started
    raw = collections.Counter(m.payload for m in recorder.messages)
    lib = collections.Counter(got)
    recorder.close()
    print(f"\nqos={qos} sessions={SESSIONS} threads={THREADS} messages={total} "
          f"connect={connect_s:.2f}s publish={publish_s:.2f}s "
          f"delivered={deliver_s:.2f}s ({total / deliver_s:.0f} msg/s) "
          f"duplicates raw={sum(raw.values()) - len(raw)} library={sum(lib.values()) - len(lib)}")
    assert set(raw) == set(lib) == sent
    if qos == 2:
        assert max(raw.values()) == max(lib.values()) == 1, "a QoS 2 message arrived twice"
    assert sum(client.get_connection_status(s)["messages_sent"] for s in sessions) == total
