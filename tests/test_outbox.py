"""The durable outbox: accepted QoS>0 messages survive a crash of the publishing process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isa_common_mqtt import BufferFullError, MQTTClient, PublishTimeoutError
from isa_common_mqtt._outbox import Outbox
from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory

from .conftest import WAIT, Recorder, eventually


def stored(path: Path, client_id: str) -> list[bytes]:
    """Payloads the outbox file still holds for ``client_id``."""
    outbox = Outbox(path, 100)
    try:
        return [row[2] for row in outbox.pending(client_id)]
    finally:
        outbox.close()


def test_messages_accepted_before_a_kill_9_are_delivered_by_the_next_run(
        mosquitto_factory: MosquittoFactory, tmp_path: Path) -> None:
    broker = mosquitto_factory()
    outbox = tmp_path / "outbox.db"
    witness = Recorder(broker.host, broker.port, "durable/#", qos=1, client_id="dur-witness",
                       clean_session=False)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from isa_common_mqtt import MQTTClient, PublishTimeoutError
        c = MQTTClient(host={broker.host!r}, port={broker.port}, publish_timeout=0.2,
                       persistence_path={str(outbox)!r}, reconnect_min_delay=5)
        sid = c.connect("durable-publisher")["session_id"]
        c.publish(sid, "durable/t", b"acked", qos=1)
        print("connected", flush=True)
        sys.stdin.readline()  # the broker is stopped now
        for i in range(5):
            try:
                c.publish(sid, "durable/t", f"m{{i}}".encode(), qos=1)
            except PublishTimeoutError:
                pass
        print("accepted", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "connected"
        broker.stop()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "accepted"
        proc.kill()  # kill -9: no close(), nothing flushed by the library
        proc.wait(WAIT)
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)
    assert stored(outbox, "durable-publisher") == [f"m{i}".encode() for i in range(5)]
    broker.start()
    again = MQTTClient(host=broker.host, port=broker.port, persistence_path=str(outbox))
    again.connect("durable-publisher")
    assert eventually(lambda: len({m.payload for m in witness.messages}) == 6)
    assert [m.payload for m in witness.messages if m.payload != b"acked"][:5] == \
        [f"m{i}".encode() for i in range(5)]  # oldest first
    again.close()
    witness.close()
    assert stored(outbox, "durable-publisher") == []


def test_acknowledged_messages_leave_the_outbox(mqtt_broker: BrokerAddress,
                                                tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    client = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, persistence_path=str(path))
    sid = client.connect("acked-out")["session_id"]
    client.publish_batch(sid, [{"topic": "o/t", "payload": b"p", "qos": q} for q in (0, 1, 2)])
    client.close()
    assert stored(path, "acked-out") == []


def test_a_full_outbox_refuses_and_stores_nothing(mosquitto_factory: MosquittoFactory,
                                                  tmp_path: Path) -> None:
    broker = mosquitto_factory()
    path = tmp_path / "full.db"
    client = MQTTClient(host=broker.host, port=broker.port, persistence_path=str(path),
                        max_outbox_messages=3, publish_timeout=0.2, reconnect_min_delay=5)
    sid = client.connect("full-out")["session_id"]
    broker.stop()
    assert eventually(lambda: not client.get_connection_status(sid)["connected"])
    for i in range(3):
        with pytest.raises(PublishTimeoutError):
            client.publish(sid, "o/t", f"{i}".encode(), qos=1)
    with pytest.raises(BufferFullError, match="max_outbox_messages"):
        client.publish(sid, "o/t", b"no room", qos=1)
    assert stored(path, "full-out") == [b"0", b"1", b"2"]
    client.close()
