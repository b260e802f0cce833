"""Shared fixtures: a client per test on the session broker, and an independent raw paho
subscriber that shows what really reached the broker."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isa_common_mqtt import MQTTClient
from isa_common_mqtt.testing import BrokerAddress

WAIT = 10.0
"""Upper bound for waiting on an event in a test; a healthy run never gets near it."""


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``condition`` until it holds (bounded); for state that has no event to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Recorder:
    """A raw paho-mqtt subscriber, independent of the library under test."""

    def __init__(self, host: str, port: int, topic_filter: str, qos: int = 2, *,
                 client_id: str | None = None, clean_session: bool = True) -> None:
        self.messages: list[Seen] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"rec-{uuid.uuid4().hex}",
                                   clean_session=clean_session)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.reconnect_delay_set(0.1, 0.5)  # follows a broker restart quickly
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe(topic_filter, qos)
        assert subscribed.wait(WAIT), "recorder: no SUBACK"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Seen(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Seen]:
        """Wait until ``count`` messages arrived (bounded); return what arrived."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()  # before loop_stop, which would otherwise wait a second
        self._client.loop_stop()


@pytest.fixture
def org() -> str:
    """An organisation id no other test uses, so registries never mix."""
    return f"org-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(mqtt_broker: BrokerAddress, org: str) -> Iterator[MQTTClient]:
    c = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, user_id="tests",
                   organization_id=org, publish_timeout=WAIT)
    yield c
    c.close()


@pytest.fixture
def session_id(client: MQTTClient) -> str:
    return str(client.connect(f"test-{uuid.uuid4().hex[:12]}")["session_id"])


@pytest.fixture
def recorder(mqtt_broker: BrokerAddress, unique_topic: str) -> Iterator[Recorder]:
    """Records everything published under ``unique_topic``."""
    rec = Recorder(mqtt_broker.host, mqtt_broker.port, f"{unique_topic}/#")
    yield rec
    rec.close()


# -- raw paho helpers for tests of brokers and configs (no library involved) ----------------

class Inbox:
    """Collects the messages a raw paho client receives and wakes whoever waits for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.messages: list[paho.MQTTMessage] = []
        self.topics: set[str] = set()

    def on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self.topics.add(message.topic)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[paho.MQTTMessage]:
        """Wait until ``count`` messages arrived (or the timeout ran out); return them all."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def wait_for_topic(self, topic: str, timeout: float) -> bool:
        """Wait until a message on ``topic`` arrived; tell whether one did."""
        with self._cond:
            return self._cond.wait_for(lambda: topic in self.topics, timeout)


@contextlib.contextmanager
def paho_client(address: BrokerAddress) -> Iterator[tuple[paho.Client, Inbox]]:
    """A connected paho-mqtt 2.x client with a network thread, and its inbox."""
    inbox = Inbox()
    connected = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:16]}"
    )

    def on_connect(c: paho.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
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


def read_retained(address: BrokerAddress, topic_filter: str, count: int,
                  timeout: float = WAIT) -> list[paho.MQTTMessage]:
    """Subscribe with a fresh client at QoS 1 and return what arrives, up to ``count``."""
    with paho_client(address) as (client, inbox):
        client.subscribe(topic_filter, qos=1)
        return inbox.wait_for(count, timeout)


def wait_for_save_after(db_file: Path, since_ns: int) -> None:
    """Wait (bounded) until mosquitto finished writing its database after ``since_ns``."""
    deadline = time.monotonic() + WAIT
    while not (db_file.exists() and db_file.stat().st_mtime_ns > since_ns):
        assert time.monotonic() < deadline, f"{db_file} was not saved within {WAIT} s"
        time.sleep(0.05)
