"""A walk through the user guide's patterns against a real broker, showing what reached it.

    python -m isa_common_mqtt.demo                 # starts its own Mosquitto on a free port
    python -m isa_common_mqtt.demo --host H --port P

An independent raw paho-mqtt subscriber watches the broker, so every line printed under
"broker saw" is what the broker really delivered, not what the library believes it sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .mqtt_client import MQTTClient
from .testing import MosquittoProcess


class Watcher:
    """A raw paho subscriber on ``#`` that prints what the broker delivers."""

    def __init__(self, host: str, port: int) -> None:
        self.count = 0
        self._cond = threading.Condition()
        ready = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-watcher")
        self._client.on_subscribe = lambda *args: ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe([("#", 2), ("$registry/#", 1)])
        ready.wait(5)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if "/marker/" in msg.topic:
            return  # sync markers: plumbing of retained reads, not data
        payload = bytes(msg.payload)
        shown = payload.decode("utf-8", "replace") if msg.topic[0] != "$" \
            else f"<{len(payload)} bytes msgpack record>" if payload else "<deleted>"
        if len(shown) > 70:
            shown = shown[:67] + "..."
        with self._cond:
            self.count += 1
            print(f"      broker saw: {msg.topic}  qos={msg.qos} retain={int(msg.retain)}  "
                  f"{shown}", flush=True)
            self._cond.notify_all()

    def say(self, text: str) -> None:
        """Print a line of the walk-through without interleaving with the watcher's."""
        with self._cond:
            print(text, flush=True)

    def settle(self) -> None:
        """Give deliveries in flight a moment to print before the next step's heading."""
        with self._cond:
            seen = -1
            while seen != self.count:
                seen = self.count
                self._cond.wait(0.2)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@contextlib.contextmanager
def broker_address(host: str | None, port: int | None) -> Iterator[tuple[str, int]]:
    if host:
        yield host, port or 1883
        return
    with MosquittoProcess() as broker:
        broker.start()
        print(f"started a private Mosquitto on {broker.host}:{broker.port}")
        yield broker.host, broker.port


def step(watcher: Watcher, title: str) -> None:
    watcher.settle()
    print(f"\n== {title}")


def run(host: str, port: int) -> None:
    watcher = Watcher(host, port)
    say = watcher.say
    try:
        with MQTTClient(host=host, port=port, user_id="demo-service",
                        organization_id="demo-org") as client:
            step(watcher, "connect")
            conn = client.connect("my-device-001")
            session_id = conn["session_id"]
            say(f"   {conn['message']} (MQTT {conn['protocol']})")

            step(watcher, "publish with QoS 0, 1 and 2 (returns once the message is safe)")
            for qos in (0, 1, 2):
                result = client.publish(session_id, "sensors/temperature", b"22.5", qos=qos)
                say(f"   qos {qos}: message_id {result['message_id']}")

            step(watcher, "publish_json")
            client.publish_json(session_id, "sensors/readings",
                                {"sensor_id": "temp-01", "value": 22.5, "unit": "celsius"})

            step(watcher, "publish_batch (one invalid item is reported, the rest go)")
            result = client.publish_batch(session_id, [
                {"topic": "sensors/temp", "payload": b"22.5", "qos": 1},
                {"topic": "sensors/+/bad", "payload": b"x", "qos": 1},
                {"topic": "sensors/humidity", "payload": b"65", "qos": 1}])
            say(f"   published {result['published_count']}, failed {result['failed_count']}: "
                f"{result['errors'][0]['error']}")

            step(watcher, "subscribe with a callback")
            got = threading.Event()

            def on_command(topic: str, payload: bytes, qos: int, retained: bool,
                           timestamp: float) -> None:
                say(f"   callback: {topic} {payload!r}")
                got.set()

            client.subscribe(session_id, "commands/#", qos=1, callback=on_command)
            client.publish(session_id, "commands/restart", b"now", qos=1)
            got.wait(5)

            step(watcher, "retained messages")
            client.set_retained_message("devices/thermostat/status",
                                        json.dumps({"temperature": 21.5}).encode())
            topic = "devices/thermostat/status"
            say(f"   get: {client.get_retained_message(topic)['payload']!r}")
            client.delete_retained_message(topic)
            say(f"   after delete: {client.get_retained_message(topic)}")

            step(watcher, "device registry (retained msgpack records under $registry/demo-org)")
            client.register_device("temp-sensor-01", "Temperature Sensor", "sensor",
                                   {"location": "Living Room"})
            device_session = client.connect("temp-sensor-01-conn", device_id="temp-sensor-01")
            client.publish_json(device_session["session_id"], "devices/temp-sensor-01/readings",
                                {"t": 21.7, "at": datetime.now().isoformat()})
            info = client.get_device_info("temp-sensor-01") or {}
            say(f"   {info['device_id']}: status {info['status_name']}, "
                f"messages sent {info['messages_sent']}")
            client.disconnect(device_session["session_id"])
            info = client.get_device_info("temp-sensor-01") or {}
            say(f"   after disconnect: status {info['status_name']}")

            step(watcher, "statistics (organisation from the registry, broker from $SYS)")
            stats = client.get_statistics()
            broker = stats["broker"]
            say(f"   devices {stats['total_devices']}, sessions {stats['active_sessions']}, "
                f"messages today {stats['messages_sent_today']}; broker: "
                f"{broker['version']}, {broker['connected_clients']} clients "
                "(refreshed every sys_interval)")
            say(f"   health: {client.health_check(deep_check=True)['message']}")
            client.disconnect(session_id)
        client.close()
        watcher.settle()
    finally:
        watcher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Walk through isa_common_mqtt against a broker.")
    parser.add_argument("--host", help="use this broker instead of starting a private one")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    started = time.perf_counter()
    with broker_address(args.host, args.port) as (host, port):
        run(host, port)
    print(f"\ndone in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
