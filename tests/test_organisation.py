"""The device registry, metrics and statistics live on the broker: every client instance, in
any process, sees the same registry, and organisations stay apart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isa_common_mqtt import (
    DeviceNotFoundError,
    DeviceStatus,
    InvalidArgumentError,
    InvalidDeviceIdError,
    MQTTClient,
    RegistrySyncError,
)
from isa_common_mqtt._codec import encode_record
from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory

from .conftest import WAIT, Recorder, eventually


def run_python(code: str, *, wait: bool = True) -> subprocess.Popen[str]:
    """Run ``code`` in another interpreter (another process, another client instance)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    return proc


@pytest.fixture
def other(mqtt_broker: BrokerAddress, org: str) -> Iterator[MQTTClient]:
    """A second client instance of the same organisation."""
    c = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, user_id="other",
                   organization_id=org)
    yield c
    c.close()


def test_a_device_registered_in_one_process_is_listed_by_another(
        client: MQTTClient, mqtt_broker: BrokerAddress, org: str) -> None:
    run_python(f"""
        from isa_common_mqtt import MQTTClient
        c = MQTTClient(host={mqtt_broker.host!r}, port={mqtt_broker.port}, organization_id={org!r})
        c.register_device("far-away", "Far Away", "gateway", {{"site": "B"}})
        c.close()
    """)
    devices = client.list_devices()
    assert devices["total_count"] == 1
    (device,) = devices["devices"]
    assert (device["device_id"], device["device_type"], device["metadata"]) == \
        ("far-away", "gateway", {"site": "B"})


def test_another_clients_writes_arrive_within_moments(client: MQTTClient,
                                                      other: MQTTClient) -> None:
    assert client.list_devices()["total_count"] == 0  # synced and listening
    other.register_device("d1", "D1", "sensor")
    assert eventually(lambda: client.get_device_info("d1") is not None)
    other.update_device_status("d1", DeviceStatus.SLEEPING)
    assert eventually(lambda: client.get_device_info("d1")["status"] == 3)
    other.unregister_device("d1")
    assert eventually(lambda: client.get_device_info("d1") is None)


def test_a_client_sees_its_own_writes_at_once(client: MQTTClient) -> None:
    client.register_device("me", "Me", "sensor")
    for status in (1, 2, 4, 1):
        client.update_device_status("me", status)
        assert client.get_device_info("me")["status"] == status


def test_register_is_idempotent_and_keeps_registered_at(client: MQTTClient) -> None:
    first = client.register_device("dup", "First", "sensor")["device"]
    second = client.register_device("dup", "Second", "actuator", {"v": 2})["device"]
    assert second["registered_at"] == first["registered_at"]
    assert (second["device_name"], second["device_type"], second["metadata"]) == \
        ("Second", "actuator", {"v": 2})
    assert client.list_devices()["total_count"] == 1


def test_pages_are_ordered_by_device_id_with_an_exact_total(client: MQTTClient) -> None:
    ids = [f"dev-{i:03d}" for i in range(120)]
    for device_id in reversed(ids):
        client.register_device(device_id, device_id.upper(), "sensor")
    pages = [client.list_devices(page=p, page_size=50) for p in (1, 2, 3, 4)]
    assert [p["total_count"] for p in pages] == [120] * 4
    assert [len(p["devices"]) for p in pages] == [50, 50, 20, 0]
    assert [d["device_id"] for p in pages for d in p["devices"]] == ids
    client.update_device_status("dev-007", DeviceStatus.ONLINE)
    online = client.list_devices(status=DeviceStatus.ONLINE)
    assert online["total_count"] == 1 and online["devices"][0]["device_id"] == "dev-007"


def test_unregister_removes_every_retained_record(client: MQTTClient,
                                                  mqtt_broker: BrokerAddress, org: str) -> None:
    client.register_device("gone", "Gone", "sensor")
    sid = client.connect(f"gone-{uuid.uuid4().hex[:6]}", device_id="gone")["session_id"]
    client.publish(sid, "gone/x", b"1", qos=1)
    client.disconnect(sid)  # flushes metrics: a third record for the device
    assert client.unregister_device("gone") is True
    assert client.unregister_device("gone") is False
    rec = Recorder(mqtt_broker.host, mqtt_broker.port, f"$registry/{org}/#", qos=1)
    try:
        marker = f"$registry/{org}/zz-end"
        rec._client.publish(marker, b"end", qos=1)
        seen = [m.topic for m in rec.wait_for(1)]
    finally:
        rec.close()
    assert not [t for t in seen if t.endswith("/gone") or "/gone/" in t], seen


def test_a_killed_device_process_shows_its_device_offline(client: MQTTClient,
                                                          mqtt_broker: BrokerAddress,
                                                          org: str) -> None:
    client.register_device("crashy", "Crashy", "sensor")
    proc = run_python(f"""
        import sys, time
        from isa_common_mqtt import MQTTClient
        c = MQTTClient(host={mqtt_broker.host!r}, port={mqtt_broker.port}, organization_id={org!r})
        c.connect("crashy-conn", device_id="crashy")
        print("ready", flush=True)
        time.sleep(60)
    """, wait=False)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert eventually(lambda: client.get_device_info("crashy")["status"] == 1)
        proc.kill()  # no DISCONNECT: only the broker's Last Will can tell
        proc.wait(WAIT)
        assert eventually(lambda: client.get_device_info("crashy")["status"] == 2)
        assert client.get_statistics()["online_devices"] == 0
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)


def test_a_device_session_is_online_while_connected_and_offline_after(
        client: MQTTClient) -> None:
    client.register_device("bound", "Bound", "sensor")
    sid = client.connect(f"bound-{uuid.uuid4().hex[:6]}", device_id="bound")["session_id"]
    client.subscribe(sid, "bound/cmd/#", qos=1)
    info = client.get_device_info("bound")
    assert info["status"] == DeviceStatus.ONLINE
    assert info["subscribed_topics"] == ["bound/cmd/#"]
    client.disconnect(sid)
    assert client.get_device_info("bound")["status"] == DeviceStatus.OFFLINE


def test_connect_many_binds_each_session_to_its_device(client: MQTTClient) -> None:
    tag = uuid.uuid4().hex[:6]
    devices = [f"many-{tag}-{i}" for i in range(3)]
    client.register_devices([{"device_id": d, "device_name": d} for d in devices])
    result = client.connect_many([{"client_id": f"s-{d}", "device_id": d} for d in devices]
                                 + [{"client_id": f"s-ghost-{tag}", "device_id": "ghost"}])
    assert result["connected_count"] == 3
    assert [e["index"] for e in result["errors"]] == [3]
    assert "register_device" in result["errors"][0]["error"]
    assert [client.get_device_info(d)["status"] for d in devices] == [DeviceStatus.ONLINE] * 3
    for session in result["sessions"]:
        client.disconnect(session["session_id"])
    assert [client.get_device_info(d)["status"] for d in devices] == [DeviceStatus.OFFLINE] * 3


def test_binding_a_session_needs_a_registered_device(client: MQTTClient) -> None:
    with pytest.raises(DeviceNotFoundError, match="register_device"):
        client.connect("nobody", device_id="not-registered")
    with pytest.raises(DeviceNotFoundError):
        client.update_device_status("not-registered", 1)
    assert client.get_device_info("not-registered") is None
    assert client.unregister_device("not-registered") is False


@pytest.mark.parametrize("bad", ["a/b", "a+b", "a#", "", "x" * 200, "$sys"])
def test_bad_device_ids_are_refused_before_anything_is_sent(client: MQTTClient,
                                                            bad: str) -> None:
    with pytest.raises(InvalidDeviceIdError):
        client.register_device(bad, "name", "sensor")


@pytest.mark.parametrize("status", [5, -1, "ONLINE", None, True])
def test_bad_status_values_are_refused(client: MQTTClient, status: object) -> None:
    client.register_device("s", "S", "sensor")
    with pytest.raises(InvalidArgumentError):
        client.update_device_status("s", status)  # type: ignore[arg-type]


def test_device_counters_survive_the_session_and_the_client(
        mqtt_broker: BrokerAddress, org: str) -> None:
    first = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, organization_id=org)
    first.register_device("meter", "Meter", "sensor")
    sid = first.connect("meter-conn", device_id="meter")["session_id"]
    first.subscribe(sid, "meter/in", qos=1)
    for _ in range(5):
        first.publish(sid, "meter/out", b"12345", qos=1)
    first.publish(sid, "meter/in", b"echo", qos=1)
    assert eventually(lambda: first.get_device_metrics("meter")["messages_received"] == 1)
    first.close()

    second = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, organization_id=org)
    metrics = second.get_device_metrics("meter")
    assert (metrics["messages_sent"], metrics["messages_received"]) == (6, 1)
    assert (metrics["bytes_sent"], metrics["bytes_received"]) == (5 * 5 + 4, 4)
    assert sum(v for _, v in metrics["message_rate"]) == 7
    sid = second.connect("meter-conn", device_id="meter")["session_id"]
    second.publish(sid, "meter/out", b"more", qos=1)
    assert second.get_device_metrics("meter")["messages_sent"] == 7
    assert second.get_device_info("meter")["messages_sent"] == 7
    future = time.time() + 3600
    assert second.get_device_metrics("meter", start_time=future)["message_rate"] == []
    second.close()


def test_topic_figures_are_measured_by_library_sessions(client: MQTTClient,
                                                        other: MQTTClient) -> None:
    a = client.connect(f"a-{uuid.uuid4().hex[:6]}")["session_id"]
    b = other.connect(f"b-{uuid.uuid4().hex[:6]}")["session_id"]
    client.subscribe(a, "plant/+/temp", qos=1)
    other.subscribe(b, "plant/#", qos=1)
    for _ in range(3):
        other.publish(b, "plant/p1/temp", b"20", qos=1)
    client.publish(a, "plant/p1/temp", b"21", qos=1, retained=True)
    other.disconnect(b)  # flushes its counters into the registry
    info = client.get_topic_info("plant/p1/temp")
    assert info["message_count"] == 4
    assert info["has_retained_message"] is True
    assert info["subscriber_count"] == 1  # b is gone; a's wildcard matches
    assert info["last_message_time"] is not None
    assert client.get_topic_info("plant/p2/temp")["message_count"] == 0
    listed = client.list_topics(prefix="plant/")
    assert [(t["topic"], t["message_count"]) for t in listed["topics"]] == [("plant/p1/temp", 4)]
    stats = client.get_statistics()
    assert stats["messages_sent_today"] >= 4
    assert stats["active_sessions"] == 1 and stats["total_subscriptions"] == 1
    client.delete_retained_message("plant/p1/temp")


def test_two_organisations_stay_apart(mqtt_broker: BrokerAddress) -> None:
    acme = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port,
                      organization_id=f"acme-{uuid.uuid4().hex[:6]}")
    globex = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port,
                        organization_id=f"globex-{uuid.uuid4().hex[:6]}")
    try:
        acme.register_device("shared-name", "Acme's", "sensor")
        sid = acme.connect(f"acme-{uuid.uuid4().hex[:6]}")["session_id"]
        acme.subscribe(sid, "x/#")
        acme.publish(sid, "x/y", b"1", qos=1)
        assert globex.get_device_info("shared-name") is None
        assert globex.list_devices()["total_count"] == 0
        stats = globex.get_statistics()
        assert (stats["total_devices"], stats["active_sessions"], stats["total_topics"]) == \
            (0, 0, 0)
        assert globex.get_topic_info("x/y")["subscriber_count"] == 0
        globex.register_device("shared-name", "Globex's", "sensor")
        assert acme.get_device_info("shared-name")["device_name"] == "Acme's"
    finally:
        acme.close()
        globex.close()


def test_topic_prefix_maps_user_topics_into_the_tenant_namespace(
        mqtt_broker: BrokerAddress, org: str) -> None:
    tenant = MQTTClient(host=mqtt_broker.host, port=mqtt_broker.port, organization_id=org,
                        topic_prefix="{organization_id}/")
    rec = Recorder(mqtt_broker.host, mqtt_broker.port, f"{org}/#")
    try:
        sid = tenant.connect(f"t-{uuid.uuid4().hex[:6]}")["session_id"]
        tenant.subscribe(sid, "sensors/#", qos=1)
        tenant.publish(sid, "sensors/t", b"1", qos=1)
        assert [m.topic for m in rec.wait_for(1)] == [f"{org}/sensors/t"]
        message = tenant.receive(sid, timeout=WAIT)
        assert message is not None and message.topic == "sensors/t"
        assert tenant.list_subscriptions(sid) == [{"topic_filter": "sensors/#", "qos": 1}]
        assert tenant.get_topic_info("sensors/t")["message_count"] == 1
    finally:
        rec.close()
        tenant.close()


def test_a_truncated_snapshot_fails_loudly(mosquitto_factory: MosquittoFactory) -> None:
    """With Mosquitto's queue limit too small the marker is dropped with the records."""
    broker = mosquitto_factory(extra_config="max_queued_messages 10\n")
    raw = paho.Client(CallbackAPIVersion.VERSION2)
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    for i in range(200):  # 200 records in one slice, far past 20 in flight + 10 queued
        record = encode_record("device", {"device_id": f"d{i}", "device_name": "n",
                                          "device_type": "t", "metadata": {},
                                          "registered_at": time.time()})
        raw.publish(f"$registry/big/00/device/d{i}", record, qos=1, retain=True).wait_for_publish(5)
    raw.loop_stop()
    raw.disconnect()
    client = MQTTClient(host=broker.host, port=broker.port, organization_id="big",
                        request_timeout=2)
    with pytest.raises(RegistrySyncError, match="max_queued_messages"):
        client.list_devices()
    client.close()


def test_broker_figures_say_unavailable_without_sys(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(extra_config="sys_interval 0\n")
    client = MQTTClient(host=broker.host, port=broker.port)
    try:
        figures = client.get_statistics()["broker"]
        assert figures["available"] is False
        assert {k: v for k, v in figures.items() if k not in ("available", "source")} == \
            dict.fromkeys(figures.keys() - {"available", "source"})
    finally:
        client.close()


def test_broker_figures_come_from_sys(client: MQTTClient) -> None:
    figures = client.get_statistics()["broker"]
    assert figures["available"] is True
    assert figures["version"].startswith("mosquitto version")
    assert figures["uptime_seconds"] >= 0
    assert json.dumps(figures)  # plain values


def test_register_devices_pipelines_and_reports_bad_items(client: MQTTClient,
                                                          other: MQTTClient) -> None:
    result = client.register_devices([
        {"device_id": "b-1", "device_name": "B1", "device_type": "sensor"},
        {"device_id": "bad/id", "device_name": "X"},
        {"device_id": "b-2", "device_name": "B2", "metadata": {"z": 1}},
        {"device_name": "no id"}])
    assert (result["registered_count"], result["failed_count"]) == (2, 2)
    assert [e["index"] for e in result["errors"]] == [1, 3]
    assert eventually(lambda: other.list_devices()["total_count"] == 2)
    assert other.get_device_info("b-2")["metadata"] == {"z": 1}
