"""The production broker config docker/mosquitto/mosquitto.conf, run on a private port."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory

CONFIG = Path(__file__).resolve().parents[1] / "docker" / "mosquitto" / "mosquitto.conf"
WAIT = 10.0
SNAPSHOT_SIZE = 5_000  # well above Mosquitto's default max_queued_messages of 1000


class Inbox:
    """Collects the messages a client receives and wakes whoever waits for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.messages: list[mqtt.MQTTMessage] = []
        self.topics: set[str] = set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self.topics.add(message.topic)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """Wait until ``count`` messages arrived (or the timeout ran out); return them all."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def wait_for_topic(self, topic: str, timeout: float) -> bool:
        """Wait until a message on ``topic`` arrived; tell whether one did."""
        with self._cond:
            return self._cond.wait_for(lambda: topic in self.topics, timeout)


@contextlib.contextmanager
def paho_client(address: BrokerAddress) -> Iterator[tuple[mqtt.Client, Inbox]]:
    """A connected paho-mqtt 2.x client with a network thread, and its inbox."""
    inbox = Inbox()
    connected = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:16]}"
    )

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.on_message = inbox.on_message
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(WAIT), f"no CONNACK from {address}"
        yield client, inbox
    finally:
        client.disconnect()
        client.loop_stop()


def publish_retained(address: BrokerAddress, messages: dict[str, bytes]) -> None:
    """Publish retained QoS 1 messages and wait until every one is acknowledged."""
    with paho_client(address) as (client, _):
        infos = [client.publish(t, p, qos=1, retain=True) for t, p in messages.items()]
        for info in infos:
            info.wait_for_publish(timeout=WAIT)
            assert info.is_published()


def read_retained(address: BrokerAddress, topic_filter: str, count: int) -> list[mqtt.MQTTMessage]:
    """Subscribe with a fresh client at QoS 1 and return what arrives, up to ``count``."""
    with paho_client(address) as (client, inbox):
        client.subscribe(topic_filter, qos=1)
        return inbox.wait_for(count, timeout=30)


def wait_for_save_after(db_file: Path, since_ns: int) -> None:
    """Wait (bounded) until mosquitto finished writing its database after ``since_ns``."""
    deadline = time.monotonic() + WAIT
    while not (db_file.exists() and db_file.stat().st_mtime_ns > since_ns):
        assert time.monotonic() < deadline, f"{db_file} was not saved within {WAIT} s"
        time.sleep(0.05)


def test_config_runs_on_a_private_port_with_its_own_settings(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(config_file=CONFIG)
    assert broker.port != 1883
    active = [line for line in broker.config_path.read_text().splitlines() if line[:1] != "#"]
    for setting in ["autosave_interval 1", "max_queued_messages 1000000", "sys_interval 10"]:
        assert setting in active
    assert not any("/mosquitto/" in line for line in active)
    with paho_client(broker.address) as (client, inbox):
        client.subscribe("$SYS/broker/version", qos=1)
        [version] = inbox.wait_for(1)
    assert version.payload.startswith(b"mosquitto version 2.")


def test_retained_message_survives_a_restart(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory(config_file=CONFIG)
    publish_retained(broker.address, {unique_topic: b"registered"})
    broker.restart()
    [message] = read_retained(broker.address, unique_topic, 1)
    assert (message.payload, message.retain) == (b"registered", True)


def test_retained_message_survives_kill_9_after_an_autosave(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory(config_file=CONFIG)
    publish_retained(broker.address, {unique_topic: b"registered"})
    acked = time.time_ns()
    # autosave_interval 1: the next save comes within about a second, not 30 minutes.
    wait_for_save_after(broker.data_dir / "mosquitto.db", acked)
    broker.kill()
    broker.start()
    [message] = read_retained(broker.address, unique_topic, 1)
    assert message.payload == b"registered"


def snapshot(root: str) -> dict[str, bytes]:
    return {f"{root}/device-{i:05d}": f"record {i}".encode() for i in range(SNAPSHOT_SIZE)}


def test_large_retained_snapshot_is_delivered_whole(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory(config_file=CONFIG)
    records = snapshot(unique_topic)
    publish_retained(broker.address, records)

    received = read_retained(broker.address, f"{unique_topic}/#", SNAPSHOT_SIZE)

    assert len(received) == SNAPSHOT_SIZE
    assert {m.topic: m.payload for m in received} == records
    assert all(m.retain and m.qos == 1 for m in received)


def test_default_queue_limit_would_truncate_the_snapshot(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, unique_topic: str
) -> None:
    """Control: without our max_queued_messages the same snapshot is cut short."""
    lines = [ln for ln in CONFIG.read_text().splitlines() if not ln.startswith("max_queued_")]
    config = tmp_path / "default-queue.conf"
    config.write_text("\n".join(lines) + "\n")
    broker = mosquitto_factory(config_file=config)
    publish_retained(broker.address, snapshot(unique_topic))
    marker = f"{unique_topic}-marker"

    with paho_client(broker.address) as (client, inbox):
        client.subscribe(f"{unique_topic}/#", qos=1)
        client.subscribe(marker, qos=1)
        # A marker behind the snapshot arrives only after all that was queued before it. It is
        # itself dropped while the queue is full, so publish it until one gets through.
        for _ in range(30):
            publish_non_retained(client, marker)
            if inbox.wait_for_topic(marker, timeout=1.0):
                break
        else:
            pytest.fail("the marker never got through")
        received = [m for m in inbox.messages if m.topic.startswith(f"{unique_topic}/")]

    assert 1000 <= len(received) < SNAPSHOT_SIZE, f"{len(received)} delivered"
    assert "Outgoing messages are being dropped" in broker.log_text()


def publish_non_retained(client: mqtt.Client, topic: str) -> None:
    info = client.publish(topic, b"end", qos=1)
    info.wait_for_publish(timeout=WAIT)
    assert info.is_published()
