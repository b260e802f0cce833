"""Shared fixtures: a client per test on the session broker, and an independent raw paho
subscriber that shows what really reached the broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
