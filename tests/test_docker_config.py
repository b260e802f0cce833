"""The production broker config docker/mosquitto/mosquitto.conf, run on a private port."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from isa_common_mqtt.testing import MosquittoFactory

from .conftest import WAIT, paho_client, publish_retained, read_retained, wait_for_save_after

CONFIG = Path(__file__).resolve().parents[1] / "docker" / "mosquitto" / "mosquitto.conf"
SNAPSHOT_SIZE = 5_000  # well above Mosquitto's default max_queued_messages of 1000


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
    [message] = read_retained(broker.address, unique_topic, 1, timeout=30)
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
    [message] = read_retained(broker.address, unique_topic, 1, timeout=30)
    assert message.payload == b"registered"


def snapshot(root: str) -> dict[str, bytes]:
    return {f"{root}/device-{i:05d}": f"record {i}".encode() for i in range(SNAPSHOT_SIZE)}


def test_large_retained_snapshot_is_delivered_whole(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory(config_file=CONFIG)
    records = snapshot(unique_topic)
    publish_retained(broker.address, records)

    received = read_retained(broker.address, f"{unique_topic}/#", SNAPSHOT_SIZE, timeout=30)

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
