"""The user guide's snippets, run as written (import path and broker address aside) against a
fresh Mosquitto, checked against what an independent raw paho subscriber saw."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from datetime import datetime

import pytest

from isa_common_mqtt.mqtt_client import MQTTClient
from isa_common_mqtt.testing import MosquittoProcess

from .conftest import Recorder, Seen


@pytest.fixture
def broker() -> Iterator[MosquittoProcess]:
    with MosquittoProcess() as b:
        b.start()
        yield b


@pytest.fixture
def seen(broker: MosquittoProcess) -> Iterator[Recorder]:
    rec = Recorder(broker.host, broker.port, "#")
    yield rec
    rec.close()


@pytest.fixture
def client(broker: MosquittoProcess) -> Iterator[MQTTClient]:
    c = MQTTClient(host=broker.host, port=broker.port, user_id="your-service")
    yield c
    c.close()


@pytest.fixture
def session_id(client: MQTTClient) -> str:
    conn = client.connect("my-device-123", username="", password="")
    return str(conn["session_id"])


def user_traffic(rec: Recorder, count: int) -> list[Seen]:
    return [m for m in rec.wait_for(count) if not m.topic.startswith("$")]


def test_simple_usage_pattern(broker: MosquittoProcess, seen: Recorder) -> None:
    with MQTTClient(host=broker.host, port=broker.port, user_id="your-service") as client:
        conn = client.connect("my-device-001")
        session_id = conn["session_id"]
        client.publish(session_id, "sensors/temperature", b"22.5", qos=1)
        data = {"sensor_id": "temp-01", "value": 22.5, "unit": "celsius"}
        client.publish_json(session_id, "sensors/readings", data, qos=1)
        messages = [
            {"topic": "sensors/temp", "payload": b"22.5", "qos": 1},
            {"topic": "sensors/humidity", "payload": b"65", "qos": 1},
        ]
        client.publish_batch(session_id, messages)
        client.register_device("temp-sensor-01", "Temperature Sensor", "sensor")
        client.disconnect(session_id)
        assert client.get_device_info("temp-sensor-01")["device_name"] == "Temperature Sensor"
    client.close()
    assert user_traffic(seen, 4)[:4] == [
        Seen("sensors/temperature", b"22.5", 1, False),
        Seen("sensors/readings", json.dumps(data, separators=(",", ":")).encode(), 1, False),
        Seen("sensors/temp", b"22.5", 1, False),
        Seen("sensors/humidity", b"65", 1, False),
    ]


def test_connection_management(client: MQTTClient) -> None:
    conn = client.connect("my-device-123", username="", password="")
    session_id = conn["session_id"]
    client.publish(session_id, "a/b", b"x", qos=1)
    status = client.get_connection_status(session_id)
    assert status["connected"] is True
    assert status["messages_sent"] == 1
    assert client.disconnect(session_id)["success"] is True


def test_basic_publishing_with_each_qos(client: MQTTClient, session_id: str,
                                        seen: Recorder) -> None:
    client.publish(session_id, "sensors/temperature", b"22.5", qos=1)
    client.publish(session_id, "logs/debug", b"Debug msg", qos=0)
    client.publish(session_id, "sensors/data", b"Data", qos=1)
    client.publish(session_id, "commands/critical", b"CMD", qos=2)
    assert sorted(user_traffic(seen, 4), key=lambda m: m.topic) == [  # ordered per QoS only
        Seen("commands/critical", b"CMD", 2, False), Seen("logs/debug", b"Debug msg", 0, False),
        Seen("sensors/data", b"Data", 1, False), Seen("sensors/temperature", b"22.5", 1, False)]


def test_json_publishing(client: MQTTClient, session_id: str, seen: Recorder) -> None:
    sensor_data = {"sensor_id": "TH-001", "temperature": 23.5, "humidity": 62,
                   "timestamp": datetime.now().isoformat()}
    client.publish_json(session_id, "sensors/readings", sensor_data, qos=1)
    event = {"event_type": "motion_detected", "device_id": "CAM-005", "confidence": 0.95}
    client.publish_json(session_id, "events/security", event, qos=2)
    got = {m.topic: m for m in user_traffic(seen, 2)}  # MQTT orders per QoS level only
    assert json.loads(got["sensors/readings"].payload) == sensor_data
    assert json.loads(got["events/security"].payload) == event
    assert (got["sensors/readings"].qos, got["events/security"].qos) == (1, 2)


def test_batch_publishing(client: MQTTClient, session_id: str, seen: Recorder) -> None:
    messages = []
    for i in range(10):
        messages.append({"topic": f"sensors/zone{i}/reading",
                         "payload": json.dumps({"value": 20 + i}).encode(), "qos": 1,
                         "retained": False})
    result = client.publish_batch(session_id, messages)
    assert result["published_count"] == 10 and result["failed_count"] == 0
    assert len(set(result["message_ids"])) == 10
    assert [(m.topic, json.loads(m.payload)["value"]) for m in user_traffic(seen, 10)] == \
        [(f"sensors/zone{i}/reading", 20 + i) for i in range(10)]


def test_retained_messages(client: MQTTClient, broker: MosquittoProcess) -> None:
    status = {"temperature": 21.5, "mode": "heat"}
    assert client.set_retained_message("devices/thermostat/status",
                                       json.dumps(status).encode(), qos=1) is True
    msg = client.get_retained_message("devices/thermostat/status")
    assert msg and msg["found"]
    assert json.loads(msg["payload"]) == status
    late = Recorder(broker.host, broker.port, "devices/thermostat/status")
    try:
        assert late.wait_for(1)[0].retain is True  # a new subscriber gets it
    finally:
        late.close()
    assert client.delete_retained_message("devices/thermostat/status") is True
    assert client.get_retained_message("devices/thermostat/status") == {"found": False}


def test_device_registration(client: MQTTClient) -> None:
    device_id = "sensor-temp-01"
    metadata = {"location": "Living Room", "model": "DHT22", "firmware": "v1.2.3"}
    result = client.register_device(device_id, "Temperature Sensor 1", "sensor", metadata)
    assert result["success"] and result["device"]["metadata"] == metadata
    client.update_device_status(device_id, 1)
    assert client.get_device_info(device_id)["status"] == 1
    client.update_device_status(device_id, 2)
    info = client.get_device_info(device_id)
    assert (info["device_name"], info["device_type"], info["status"]) == \
        ("Temperature Sensor 1", "sensor", 2)
    devices = client.list_devices(page=1, page_size=20)
    assert devices["total_count"] == 1
    assert client.unregister_device(device_id) is True
    assert client.get_device_info(device_id) is None


def test_topic_hierarchies(client: MQTTClient, session_id: str, seen: Recorder) -> None:
    client.publish(session_id, "home/livingroom/temperature", b"22.5", qos=1)
    client.publish(session_id, "home/livingroom/humidity", b"65", qos=1)
    client.publish(session_id, "home/bedroom/temperature", b"21.0", qos=1)
    client.publish(session_id, "factory/line1/machine3/status", b"running", qos=1)
    client.publish(session_id, "factory/line1/machine3/output", b"150", qos=0)
    client.publish(session_id, "tenant/company-a/device/sensor-01", b"data", qos=1)
    got = user_traffic(seen, 6)
    assert [m.topic for m in got if m.qos == 1] == [  # in order within a QoS level
        "home/livingroom/temperature", "home/livingroom/humidity", "home/bedroom/temperature",
        "factory/line1/machine3/status", "tenant/company-a/device/sensor-01"]
    assert [m.topic for m in got if m.qos == 0] == ["factory/line1/machine3/output"]


def test_topic_management(client: MQTTClient, session_id: str) -> None:
    assert client.validate_topic("sensors/temperature", allow_wildcards=False)["valid"]
    assert client.validate_topic("sensors/+/temperature", allow_wildcards=True)["valid"]
    client.subscribe(session_id, "sensors/#", qos=1)
    client.publish(session_id, "sensors/temperature", b"22.5", qos=1)
    info = client.get_topic_info("sensors/temperature")
    assert info["subscriber_count"] == 1
    assert info["message_count"] == 1
    topics = client.list_topics(prefix="sensors/", page_size=20)
    assert [t["topic"] for t in topics["topics"]] == ["sensors/temperature"]


def test_binary_payloads_arrive_byte_for_byte(client: MQTTClient, session_id: str,
                                              seen: Recorder) -> None:
    binary_data = bytes([0x01, 0x02, 0x03, 0xFF, 0xFE])
    client.publish(session_id, "sensors/binary/raw", binary_data, qos=1)
    text = b"Large log data..." * 100
    compressed = zlib.compress(text)
    client.publish(session_id, "logs/compressed", compressed, qos=1)
    assert [m.payload for m in user_traffic(seen, 2)] == [binary_data, compressed]


def test_alert_system_pattern(client: MQTTClient, session_id: str, seen: Recorder) -> None:
    threshold_high = 30.0
    readings = [18.5, 22.0, 28.5, 32.0, 14.0]
    for i, temp in enumerate(readings):
        reading = {"reading": i, "temperature": temp}
        client.publish_json(session_id, "sensors/temp/current", reading, qos=1)
        if temp > threshold_high:
            alert = {"type": "HIGH_TEMPERATURE", "severity": "WARNING", "value": temp,
                     "threshold": threshold_high}
            client.publish_json(session_id, "alerts/temperature/high", alert, qos=2,
                                retained=True)
    alerts = [m for m in user_traffic(seen, 6) if m.topic == "alerts/temperature/high"]
    assert len(alerts) == 1 and alerts[0].qos == 2
    assert client.get_retained_message("alerts/temperature/high")["found"] is True


def test_monitoring_and_statistics(client: MQTTClient, session_id: str) -> None:
    client.register_device("sensor-001", "S1", "sensor")
    stats = client.get_statistics()
    assert stats["total_devices"] == 1
    assert stats["online_devices"] == 0
    assert stats["active_sessions"] == 1
    assert stats["broker"]["available"] is True  # Mosquitto has $SYS
    metrics = client.get_device_metrics("sensor-001")
    assert (metrics["messages_sent"], metrics["messages_received"], metrics["bytes_sent"]) == \
        (0, 0, 0)  # no session was bound to it


def test_real_world_patterns(client: MQTTClient, session_id: str, seen: Recorder) -> None:
    for device_id in ["device-001", "device-002"]:
        status = {"device_id": device_id, "status": "online",
                  "timestamp": datetime.now().isoformat()}
        client.publish_json(session_id, f"devices/{device_id}/status", status, qos=1,
                            retained=True)
    telemetry = [{"metric": "cpu", "value": 45.2}, {"metric": "memory", "value": 68.5},
                 {"metric": "disk", "value": 82.1}]
    for data in telemetry:
        client.publish_json(session_id, f'telemetry/{data["metric"]}', data, qos=0)
    commands = [{"action": "restart", "target": "device-001"},
                {"action": "update_config", "target": "device-002"}]
    for cmd in commands:
        client.publish_json(session_id, f'commands/{cmd["target"]}', cmd, qos=2)
    got = user_traffic(seen, 7)
    by_qos = {q: [m.topic for m in got if m.qos == q] for q in (0, 1, 2)}  # ordered per QoS
    assert by_qos == {1: ["devices/device-001/status", "devices/device-002/status"],
                      0: ["telemetry/cpu", "telemetry/memory", "telemetry/disk"],
                      2: ["commands/device-001", "commands/device-002"]}
    assert client.get_retained_message("devices/device-002/status")["found"] is True


def test_iot_device_manager_example(broker: MosquittoProcess, seen: Recorder) -> None:
    """The guide's IoTDeviceManager, with only the client construction pointed at the broker."""

    class IoTDeviceManager:
        def __init__(self) -> None:
            self.mqtt = MQTTClient(host=broker.host, port=broker.port, user_id="iot-manager")
            self.sessions: dict[str, str] = {}

        def register_device(self, device_id, device_name, device_type, metadata=None):  # type: ignore[no-untyped-def]
            with self.mqtt:
                result = self.mqtt.register_device(device_id, device_name, device_type,
                                                   metadata or {})
                if result and result.get("success"):
                    conn = self.mqtt.connect(f"{device_id}-connection")
                    self.sessions[device_id] = conn["session_id"]
                    self.mqtt.update_device_status(device_id, 1)
                    return True
                return False

        def send_sensor_reading(self, device_id, reading_data):  # type: ignore[no-untyped-def]
            with self.mqtt:
                session_id = self.sessions.get(device_id)
                if session_id:
                    return self.mqtt.publish_json(session_id, f"devices/{device_id}/readings",
                                                  reading_data, qos=1)

        def send_alert(self, device_id, alert_type, message, severity="WARNING"):  # type: ignore[no-untyped-def]
            with self.mqtt:
                session_id = self.sessions.get(device_id)
                if session_id:
                    alert = {"type": alert_type, "severity": severity, "message": message,
                             "timestamp": datetime.now().isoformat()}
                    return self.mqtt.publish_json(session_id, f"alerts/{alert_type}", alert,
                                                  qos=2, retained=True)

        def get_device_metrics(self, device_id):  # type: ignore[no-untyped-def]
            with self.mqtt:
                return self.mqtt.get_device_metrics(device_id)

        def disconnect_device(self, device_id):  # type: ignore[no-untyped-def]
            with self.mqtt:
                session_id = self.sessions.get(device_id)
                if session_id:
                    self.mqtt.update_device_status(device_id, 2)
                    self.mqtt.disconnect(session_id)
                    del self.sessions[device_id]
                    return True

    manager = IoTDeviceManager()
    try:
        assert manager.register_device("dev-1", "Device 1", "sensor", {"floor": 2}) is True
        assert manager.mqtt.get_device_info("dev-1")["status"] == 1
        assert manager.send_sensor_reading("dev-1", {"t": 20.5})["success"] is True
        assert manager.send_alert("dev-1", "overheat", "too hot")["success"] is True
        assert manager.get_device_metrics("dev-1")["device_id"] == "dev-1"
        assert manager.disconnect_device("dev-1") is True
        assert manager.mqtt.get_device_info("dev-1")["status"] == 2
        got = sorted(user_traffic(seen, 2)[:2], key=lambda m: m.topic)
        assert [(m.topic, m.qos, m.retain) for m in got] == [
            ("alerts/overheat", 2, False), ("devices/dev-1/readings", 1, False)]
        assert json.loads(got[1].payload) == {"t": 20.5}
    finally:
        manager.mqtt.close()
