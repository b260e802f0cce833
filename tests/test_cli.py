"""The `isa-mqtt` command line, run for real in a subprocess against the test broker.

Every call goes through `python -m isa_common_mqtt.cli` with explicit --host/--port and a
unique --org; what it did is checked with the library or an independent raw subscriber.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

import pytest
import trustme

from isa_common_mqtt import DeviceStatus, MQTTClient
from isa_common_mqtt.cli import main
from isa_common_mqtt.testing import BrokerAddress, MosquittoFactory

from .conftest import WAIT, Recorder, Seen

CALL_TIMEOUT = 60.0
"""Bound of one CLI subprocess; a healthy call takes well under a second."""

ENV_NAMES = ("MQTT_HOST", "MQTT_PORT", "MQTT_USER", "MQTT_PASSWORD", "CONSUL_HOST",
             "CONSUL_PORT")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment without broker settings, so only the command line decides."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(extra)
    return env


def command(broker: BrokerAddress | None, *args: str, org: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "isa_common_mqtt.cli"]
    if broker is not None:
        cmd += ["--host", broker.host, "--port", str(broker.port)]
    if org is not None:
        cmd += ["--org", org]
    return cmd + list(args)


def run(broker: BrokerAddress | None, *args: str, org: str | None = None,
        stdin: bytes | None = None, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (bounded); text output."""
    return subprocess.run(command(broker, *args, org=org), input=stdin.decode() if stdin
                          else None, capture_output=True, text=True, timeout=CALL_TIMEOUT,
                          env=env or cli_env())


def ok(broker: BrokerAddress, *args: str, org: str | None = None,
       stdin: bytes | None = None) -> str:
    """Run the CLI, require exit 0 and a quiet stderr; return stdout."""
    done = run(broker, *args, org=org, stdin=stdin)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    assert done.stderr == ""
    return done.stdout


def failed(done: subprocess.CompletedProcess[str], code: int) -> str:
    """Require exit ``code`` with exactly one error line and no traceback; return the line."""
    assert done.returncode == code, f"exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("isa-mqtt: error: ")
    return lines[0]


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """Require argparse's exit 2 (usage line plus one error line) and no traceback."""
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("isa-mqtt")
    assert ": error: " in done.stderr.splitlines()[-1]
    return done.stderr


def as_json(value: Any) -> Any:
    """A library result as it looks after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lines:
    """Lines of a running process's stdout, read by a thread so every wait is bounded."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float = CALL_TIMEOUT) -> bytes:
        line = self._queue.get(timeout=timeout)
        assert line is not None, "the process closed its output"
        return line

    def rest(self, timeout: float = CALL_TIMEOUT) -> list[bytes]:
        """Every further line until the process closes its output."""
        lines = []
        while (line := self._queue.get(timeout=timeout)) is not None:
            lines.append(line)
        return lines


@contextlib.contextmanager
def running(broker: BrokerAddress, *args: str, org: str | None = None,
            ) -> Iterator[tuple[subprocess.Popen[bytes], Lines]]:
    """A CLI process that keeps running (sub, top); killed at the end if still alive."""
    proc = subprocess.Popen(command(broker, *args, org=org), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env())
    assert proc.stdout is not None
    try:
        yield proc, Lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=CALL_TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_pty(fd: int, until: bytes | None, timeout: float = WAIT) -> bytes:
    """Read a pseudo-terminal until ``until`` appears or the other side closes (bounded)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (until is None or until not in data):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65_536)
        except OSError as exc:  # EIO: the process closed the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        data += chunk
    return data


def register(client: MQTTClient, count: int, prefix: str = "dev") -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(count)]
    for i, device_id in enumerate(ids):
        client.register_device(device_id, f"Device {i}", "sensor" if i % 2 else "camera",
                               {"index": i})
    return ids


# == invocation ==========================================================================
def test_help_lists_every_command() -> None:
    done = run(None, "--help")
    assert done.returncode == 0
    for name in ("pub", "sub", "devices", "topics", "retained", "stats", "health", "top"):
        assert f"    {name} " in done.stdout
    assert "exit codes" in done.stdout


def test_version() -> None:
    done = run(None, "--version")
    assert done.returncode == 0
    assert done.stdout.startswith("isa-mqtt 0.")


def test_the_console_script_runs_main() -> None:
    (script,) = entry_points(group="console_scripts", name="isa-mqtt")
    assert script.load() is main


def test_main_returns_the_usage_exit_code_in_process() -> None:
    assert main(["devices", "status", "x", "not-a-status"]) == 2


# == pub ===================================================================================
def test_pub_reaches_an_independent_subscriber_with_exact_bytes_qos_and_retain(
        mqtt_broker: BrokerAddress, recorder: Recorder, unique_topic: str, org: str) -> None:
    topic = f"{unique_topic}/greeting"
    out = ok(mqtt_broker, "pub", "-t", topic, "-m", "héllo wörld", "-q", "2", "-r", "--json",
             org=org)
    result = json.loads(out)
    assert result["success"] is True
    assert isinstance(result["message_id"], int)
    # A live subscriber gets retain=0 (MQTT 3.1.1); a new one gets the retained copy.
    assert recorder.wait_for(1) == [Seen(topic, "héllo wörld".encode(), 2, False)]
    late = Recorder(mqtt_broker.host, mqtt_broker.port, topic)
    try:
        assert late.wait_for(1) == [Seen(topic, "héllo wörld".encode(), 2, True)]
    finally:
        late.close()


def test_pub_qos_0_without_retain_prints_nothing(
        mqtt_broker: BrokerAddress, recorder: Recorder, unique_topic: str) -> None:
    assert ok(mqtt_broker, "pub", "-t", f"{unique_topic}/t", "-m", "22.5", "-q", "0") == ""
    assert recorder.wait_for(1) == [Seen(f"{unique_topic}/t", b"22.5", 0, False)]


def test_pub_file_sends_its_exact_bytes(mqtt_broker: BrokerAddress, recorder: Recorder,
                                        unique_topic: str, tmp_path: Path) -> None:
    payload = bytes(range(256)) + b"\r\n\x00end"
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    ok(mqtt_broker, "pub", "-t", f"{unique_topic}/bin", "-f", str(path), "-q", "1")
    assert recorder.wait_for(1) == [Seen(f"{unique_topic}/bin", payload, 1, False)]


def test_pub_lines_sends_one_message_per_line_in_order(
        mqtt_broker: BrokerAddress, recorder: Recorder, unique_topic: str) -> None:
    out = ok(mqtt_broker, "pub", "-t", f"{unique_topic}/l", "-l", "--json",
             stdin=b"first\nsecond\r\n\nlast")
    assert [json.loads(line)["success"] for line in out.splitlines()] == [True] * 4
    seen = recorder.wait_for(4)
    assert [m.payload for m in seen] == [b"first", b"second", b"", b"last"]


def test_pub_of_a_missing_file_fails_with_one_line(mqtt_broker: BrokerAddress,
                                                   tmp_path: Path) -> None:
    done = run(mqtt_broker, "pub", "-t", "x", "-f", str(tmp_path / "nope.bin"))
    assert "nope.bin" in failed(done, 1)


# == sub ===================================================================================
def test_sub_count_receives_messages_published_by_the_library(
        mqtt_broker: BrokerAddress, client: MQTTClient, unique_topic: str) -> None:
    client.set_retained_message(f"{unique_topic}/ready", b"ready")
    with running(mqtt_broker, "sub", "-t", f"{unique_topic}/#", "--count", "4",
                 "--timeout", str(CALL_TIMEOUT)) as (proc, lines):
        # The retained message arrives after SUBACK: from here on the CLI is subscribed.
        assert lines.next() == b"ready\n"
        session_id = client.connect(f"pub-{uuid.uuid4().hex[:8]}")["session_id"]
        for text in (b"one", b"two", b"three"):
            client.publish(session_id, f"{unique_topic}/data", text, qos=1)
        assert lines.rest() == [b"one\n", b"two\n", b"three\n"]
        assert proc.wait(timeout=CALL_TIMEOUT) == 0


def test_sub_json_prints_one_object_per_message(
        mqtt_broker: BrokerAddress, client: MQTTClient, unique_topic: str) -> None:
    client.set_retained_message(f"{unique_topic}/ready", b"ready", qos=1)
    with running(mqtt_broker, "sub", "-t", f"{unique_topic}/ready", "-t",
                 f"{unique_topic}/json/+", "-q", "2", "-C", "3", "--json") as (proc, lines):
        first = json.loads(lines.next())
        assert first["topic"] == f"{unique_topic}/ready"
        assert first["retained"] is True
        session_id = client.connect(f"pub-{uuid.uuid4().hex[:8]}")["session_id"]
        reading = {"sensor_id": "temp-01", "value": 22.5}
        client.publish_json(session_id, f"{unique_topic}/json/a", reading, qos=2)
        client.publish(session_id, f"{unique_topic}/json/b", b"\xff\x00", qos=0)
        by_topic = {m["topic"]: m for m in (json.loads(line) for line in lines.rest())}
        assert proc.wait(timeout=CALL_TIMEOUT) == 0
    second, third = by_topic[f"{unique_topic}/json/a"], by_topic[f"{unique_topic}/json/b"]
    assert second["payload_json"] == reading
    assert json.loads(second["payload"]) == reading
    assert (second["qos"], second["retained"], second["payload_encoding"]) == (2, False, "utf-8")
    assert isinstance(second["timestamp"], float)
    assert third["payload"] == "/wA="
    assert third["payload_encoding"] == "base64"
    assert "payload_json" not in third


def test_sub_without_messages_times_out_with_exit_5(mqtt_broker: BrokerAddress,
                                                    unique_topic: str) -> None:
    done = run(mqtt_broker, "sub", "-t", f"{unique_topic}/#", "--count", "1", "--timeout", "0.5")
    assert "0 of 1" in failed(done, 5)


def test_sub_timeout_without_count_is_a_normal_end(mqtt_broker: BrokerAddress,
                                                   unique_topic: str) -> None:
    assert ok(mqtt_broker, "sub", "-t", f"{unique_topic}/#", "--timeout", "0.3") == ""


def test_ctrl_c_exits_130_quietly(mqtt_broker: BrokerAddress, client: MQTTClient,
                                  unique_topic: str) -> None:
    client.set_retained_message(f"{unique_topic}/ready", b"ready")
    with running(mqtt_broker, "sub", "-t", f"{unique_topic}/#") as (proc, lines):
        assert lines.next() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=CALL_TIMEOUT) == 130
        assert proc.stderr is not None
        assert proc.stderr.read() == b""


# == devices ===============================================================================
def test_devices_list_table_has_aligned_columns(mqtt_broker: BrokerAddress, client: MQTTClient,
                                                org: str) -> None:
    client.register_device("sensor-a", "Temperature Sensor", "sensor")
    client.register_device("cam-long-identifier", "Cam", "camera")
    client.update_device_status("cam-long-identifier", DeviceStatus.ONLINE)
    lines = ok(mqtt_broker, "devices", "list", org=org).splitlines()
    header = lines[0]
    assert header.split() == ["DEVICE", "ID", "NAME", "TYPE", "STATUS", "LAST", "SEEN", "SENT",
                              "RECEIVED"]
    rows = lines[1:3]

    def cell(row: str, column: str) -> str:
        """The text of a left-aligned column: it starts exactly under its header."""
        return row[header.index(column):].split("  ")[0]

    assert [cell(rows[0], c) for c in ("DEVICE ID", "NAME", "TYPE", "STATUS")] == [
        "cam-long-identifier", "Cam", "camera", "ONLINE"]
    assert [cell(rows[1], c) for c in ("DEVICE ID", "NAME", "TYPE", "STATUS", "LAST SEEN")] == [
        "sensor-a", "Temperature Sensor", "sensor", "UNKNOWN", "-"]
    assert rows[1].split()[-2:] == ["0", "0"]
    assert lines[3] == "2 devices"


def test_devices_list_status_filter_and_paging(mqtt_broker: BrokerAddress, client: MQTTClient,
                                               org: str) -> None:
    ids = register(client, 5)
    client.update_device_status(ids[3], DeviceStatus.SLEEPING)
    lines = ok(mqtt_broker, "devices", "list", "--status", "sleeping", org=org).splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [ids[3]]
    assert lines[-1] == "1 device with status SLEEPING"
    lines = ok(mqtt_broker, "devices", "list", "--page", "2", "--page-size", "2",
               org=org).splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ids[2:4]
    assert lines[-1] == "devices 3-4 of 5 (page 2 of 3)"
    out = ok(mqtt_broker, "devices", "list", "--status", "3", "--json", org=org)
    assert json.loads(out) == as_json(client.list_devices(status=DeviceStatus.SLEEPING))


def test_register_from_csv_then_list_json_matches_the_library(
        mqtt_broker: BrokerAddress, client: MQTTClient, org: str, tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    rows = ["device_id,device_name,device_type,metadata"]
    rows += [f'd-{i:03d},Device {i},{"sensor" if i % 4 else "gateway"},'
             f'"{{""floor"": {i % 7}, ""tag"": ""t{i}""}}"' for i in range(200)]
    path.write_text("\n".join(rows) + "\n")
    done = run(mqtt_broker, "devices", "register", "--from-csv", str(path), org=org)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar: stderr is not a terminal
    assert done.stdout.strip() == (f"registered 200 of 200 device(s) in organisation {org}; "
                                   "0 failed")
    listing = json.loads(ok(mqtt_broker, "devices", "list", "--json", "--page-size", "1000",
                            org=org))
    assert listing["total_count"] == 200
    assert listing == as_json(client.list_devices(page_size=1000))
    info = client.get_device_info("d-013")
    assert info is not None
    assert (info["device_name"], info["device_type"]) == ("Device 13", "sensor")
    assert info["metadata"] == {"floor": 6, "tag": "t13"}


def test_register_from_csv_without_header_reports_bad_rows(
        mqtt_broker: BrokerAddress, client: MQTTClient, org: str, tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("ok-1,First,sensor\n"
                    "bad/id,Slash,sensor\n"
                    "\n"
                    "ok-2,Second,camera,{\"a\": 1, \"b\": 2}\n"
                    "no-name,,sensor\n"
                    "ok-3,Third,sensor,\"{\"\"zone\"\": 2}\"\n")
    done = run(mqtt_broker, "devices", "register", "--from-csv", str(path), "--json", org=org)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["total"], summary["registered"], summary["failed"]) == (5, 2, 3)
    assert [(e["line"], e["device_id"]) for e in summary["errors"]] == [
        (2, "bad/id"), (4, "ok-2"), (5, "no-name")]
    assert "quote" in summary["errors"][1]["error"]
    assert [d["device_id"] for d in client.list_devices()["devices"]] == ["ok-1", "ok-3"]
    info = client.get_device_info("ok-3")
    assert info is not None and info["metadata"] == {"zone": 2}


def test_register_from_csv_draws_progress_only_on_a_terminal(
        mqtt_broker: BrokerAddress, client: MQTTClient, org: str, tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("".join(f"p-{i},P {i},sensor\n" for i in range(30)))
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(command(mqtt_broker, "devices", "register", "--from-csv",
                                        str(path), org=org),
                                stdout=subprocess.PIPE, stderr=secondary, env=cli_env())
        os.close(secondary)
        secondary = -1
        out, _ = proc.communicate(timeout=CALL_TIMEOUT)
        terminal = read_pty(primary, None)
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0
    assert b"] 30/30 devices" in terminal
    assert terminal.endswith(b"\r\x1b[K")  # the bar is erased before the summary
    assert out.decode().startswith("registered 30 of 30")
    assert client.list_devices()["total_count"] == 30


def test_register_show_status_unregister(mqtt_broker: BrokerAddress, client: MQTTClient,
                                         org: str) -> None:
    out = ok(mqtt_broker, "devices", "register", "th-01", "--name", "Thermostat", "--type",
             "hvac", "--meta", "room=Hall", "--meta", "fw=1.20", org=org)
    assert out == f"registered device th-01 (hvac) in organisation {org}\n"
    info = client.get_device_info("th-01")
    assert info is not None
    assert info["metadata"] == {"room": "Hall", "fw": "1.20"}

    shown = json.loads(ok(mqtt_broker, "devices", "show", "th-01", "--json", org=org))
    assert shown == as_json(client.get_device_info("th-01"))
    text = ok(mqtt_broker, "devices", "show", "th-01", org=org)
    assert "Name:               Thermostat" in text
    assert "Status:             UNKNOWN (0)" in text
    assert "  room:  Hall" in text

    result = json.loads(ok(mqtt_broker, "devices", "status", "th-01", "offline", "--json",
                           org=org))
    assert result["success"] is True
    assert result["device"]["status"] == DeviceStatus.OFFLINE
    assert ok(mqtt_broker, "devices", "status", "th-01", "4", org=org) == \
        "device th-01 is now ERROR\n"
    info = client.get_device_info("th-01")
    assert info is not None and info["status"] == DeviceStatus.ERROR

    assert ok(mqtt_broker, "devices", "unregister", "th-01", org=org) == \
        "unregistered device th-01\n"
    assert client.get_device_info("th-01") is None


def test_unknown_device_exits_1_with_one_line(mqtt_broker: BrokerAddress, org: str) -> None:
    for args in (("devices", "show", "ghost"), ("devices", "unregister", "ghost"),
                 ("devices", "status", "ghost", "ONLINE")):
        line = failed(run(mqtt_broker, *args, org=org), 1)
        assert line == f"isa-mqtt: error: device 'ghost' is not registered in organisation " \
                       f"'{org}'"
    done = run(mqtt_broker, "devices", "show", "ghost", "--json", org=org)
    failed(done, 1)
    assert json.loads(done.stdout) is None


def test_broker_options_work_after_the_command(mqtt_broker: BrokerAddress, client: MQTTClient,
                                               org: str) -> None:
    client.register_device("late-opts", "Late", "sensor")
    done = subprocess.run(
        [sys.executable, "-m", "isa_common_mqtt.cli", "devices", "list", "--json",
         "--host", mqtt_broker.host, "--port", str(mqtt_broker.port), "--org", org],
        capture_output=True, text=True, timeout=CALL_TIMEOUT, env=cli_env())
    assert done.returncode == 0, done.stderr
    assert [d["device_id"] for d in json.loads(done.stdout)["devices"]] == ["late-opts"]


def test_broker_address_from_the_environment(mqtt_broker: BrokerAddress, client: MQTTClient,
                                             org: str) -> None:
    client.register_device("env-dev", "From env", "sensor")
    env = cli_env(MQTT_HOST=mqtt_broker.host, MQTT_PORT=str(mqtt_broker.port))
    done = run(None, "devices", "list", "--json", org=org, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_count"] == 1


# == retained, topics, stats, health =======================================================
def test_retained_set_get_delete(mqtt_broker: BrokerAddress, client: MQTTClient,
                                 unique_topic: str) -> None:
    topic = f"{unique_topic}/state"
    assert ok(mqtt_broker, "retained", "set", topic, "-m", '{"mode": "heat"}') == \
        f"retained message set on {topic}\n"
    assert client.get_retained_message(topic)["payload"] == b'{"mode": "heat"}'
    assert ok(mqtt_broker, "retained", "get", topic) == '{"mode": "heat"}\n'
    got = json.loads(ok(mqtt_broker, "retained", "get", topic, "--json"))
    library = client.get_retained_message(topic)
    assert {k: got[k] for k in ("found", "topic", "qos")} == \
        {k: library[k] for k in ("found", "topic", "qos")}
    assert got["payload"].encode() == library["payload"]
    assert got["payload_json"] == {"mode": "heat"}
    ok(mqtt_broker, "retained", "delete", topic)
    assert client.get_retained_message(topic) == {"found": False}
    missing = run(mqtt_broker, "retained", "get", topic)
    assert topic in failed(missing, 1)
    assert missing.stdout == ""


def test_topics_lists_retained_topics(mqtt_broker: BrokerAddress, client: MQTTClient,
                                      org: str, unique_topic: str) -> None:
    for name in ("b", "a"):
        client.set_retained_message(f"{unique_topic}/{name}", b"x")
    lines = ok(mqtt_broker, "topics", "--prefix", unique_topic, org=org).splitlines()
    assert lines[0].split() == ["TOPIC", "SUBSCRIBERS", "MESSAGES", "LAST", "MESSAGE",
                                "RETAINED"]
    assert [line.split()[0] for line in lines[1:3]] == [f"{unique_topic}/a", f"{unique_topic}/b"]
    assert lines[1].split()[-1] == "yes"
    assert lines[-1] == f"2 topics under {unique_topic!r}"
    listing = json.loads(ok(mqtt_broker, "topics", "--prefix", unique_topic, "--json", org=org))
    assert listing == as_json(client.list_topics(prefix=unique_topic))


def test_stats_json_and_table(mqtt_broker: BrokerAddress, client: MQTTClient, org: str) -> None:
    ids = register(client, 3)
    client.update_device_status(ids[0], DeviceStatus.ONLINE)
    stats = json.loads(ok(mqtt_broker, "stats", "--json", org=org))
    library = as_json(client.get_statistics())
    organisation = ("total_devices", "online_devices", "total_topics",
                    "device_type_distribution", "organization_id")
    assert {k: stats[k] for k in organisation} == {k: library[k] for k in organisation}
    assert stats["total_devices"] == 3 and stats["online_devices"] == 1
    assert set(stats) == set(library)
    assert stats["broker"]["available"] is True  # Mosquitto publishes $SYS
    text = ok(mqtt_broker, "stats", org=org)
    assert f"Organisation {org}" in text
    assert "  Devices:          3 (1 online)" in text
    assert "  Device types:     camera 2, sensor 1" in text
    assert "Version:            mosquitto version" in text


def test_health(mqtt_broker: BrokerAddress, org: str) -> None:
    text = ok(mqtt_broker, "health", org=org)
    assert "Healthy:             yes" in text
    assert f"Broker:              {mqtt_broker}" in text
    deep = json.loads(ok(mqtt_broker, "health", "--deep", "--json", org=org))
    assert deep["healthy"] is True
    assert deep["registry"]["synced"] is True
    assert deep["round_trip_ms"] >= 0
    assert deep["sys_available"] is True


# == top ===================================================================================
def test_top_once_shows_online_devices_and_broker_figures(
        mqtt_broker: BrokerAddress, client: MQTTClient, org: str) -> None:
    ids = register(client, 3, prefix="top")
    for device_id in ids[:2]:
        client.update_device_status(device_id, DeviceStatus.ONLINE)
    out = ok(mqtt_broker, "top", "--once", "--interval", "0.2", org=org)
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith(f"isa-mqtt top   org {org}   broker {mqtt_broker}")
    assert "Devices   3 registered   2 online   types: camera 2, sensor 1" in lines
    assert any(line.startswith("Broker    mosquitto version") for line in lines)
    header = lines.index(next(line for line in lines if line.startswith("DEVICE ID")))
    assert lines[header].split() == ["DEVICE", "ID", "NAME", "TYPE", "SENT", "RECEIVED",
                                     "MSG/S", "LAST", "SEEN"]
    assert sorted(line.split()[0] for line in lines[header + 1:]) == ids[:2]


def test_top_redraws_in_place_on_a_terminal_until_ctrl_c(
        mqtt_broker: BrokerAddress, client: MQTTClient, org: str) -> None:
    register(client, 1, prefix="live")
    client.update_device_status("live-000", DeviceStatus.ONLINE)
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(command(mqtt_broker, "top", "--interval", "0.2", org=org),
                                stdin=subprocess.DEVNULL, stdout=secondary,
                                stderr=subprocess.PIPE, env=cli_env(COLUMNS="120", LINES="30"))
        os.close(secondary)
        secondary = -1
        screen = read_pty(primary, b"\x1b[H", timeout=CALL_TIMEOUT)
        screen += read_pty(primary, b"\x1b[H", timeout=WAIT)  # a second frame
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=CALL_TIMEOUT) == 130
        screen += read_pty(primary, None, timeout=2.0)
        assert proc.stderr is not None
        assert proc.stderr.read() == b""
        proc.stderr.close()
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert screen.startswith(b"\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
    assert screen.count(b"\x1b[H") >= 2  # frames redrawn from the top-left corner
    assert b"live-000" in screen
    assert screen.endswith(b"\x1b[?25h\x1b[?1049l")  # terminal restored


# == errors ================================================================================
@pytest.mark.parametrize("args", [
    ("devices", "list"), ("pub", "-t", "a", "-m", "b"), ("sub", "-t", "a", "-C", "1"),
    ("stats",), ("retained", "get", "a"), ("health",), ("top", "--once"),
])
def test_unreachable_broker_exits_3_naming_host_and_port(args: Sequence[str]) -> None:
    port = free_port()
    done = run(BrokerAddress("127.0.0.1", port), "--timeout", "5", *args)
    assert f"127.0.0.1:{port}" in failed(done, 3)


def test_bad_topics_are_usage_errors_even_before_connecting() -> None:
    closed = BrokerAddress("127.0.0.1", free_port())
    assert "a/+" in failed(run(closed, "pub", "-t", "a/+", "-m", "x"), 2)
    assert "a/#/b" in failed(run(closed, "sub", "-t", "ok/#", "-t", "a/#/b"), 2)


@pytest.mark.parametrize("args", [
    (), ("frobnicate",), ("pub", "-m", "no topic"), ("pub", "-t", "t"),
    ("pub", "-t", "t", "-m", "x", "-q", "3"), ("sub", "-t", "t", "--count", "0"),
    ("devices", "status", "x", "BOGUS"), ("devices", "list", "--page", "0"),
    ("--port", "99999", "health"), ("sub", "--json"),
])
def test_bad_usage_exits_2(args: Sequence[str]) -> None:
    usage_error(run(None, *args))


@pytest.mark.parametrize("args", [
    ("pub", "-t", "a/+/b", "-m", "x"), ("sub", "-t", "a/#/b", "-C", "1"),
    ("devices", "register", "with/slash", "--name", "n"), ("devices", "list", "--page-size",
                                                           "5000"),
    ("devices", "register", "only-id"),
])
def test_arguments_the_library_rejects_exit_2_with_one_line(
        mqtt_broker: BrokerAddress, org: str, args: Sequence[str]) -> None:
    failed(run(mqtt_broker, *args, org=org), 2)


def test_refused_credentials_exit_4(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "s3cret"],
                   check=True, capture_output=True, timeout=CALL_TIMEOUT)
    broker = mosquitto_factory(extra_config=f"allow_anonymous false\n"
                                            f"password_file {passwords}")
    address = broker.address
    assert "Not authorized" in failed(run(address, "devices", "list"), 4)
    assert "Not authorized" in failed(run(address, "--username", "alice", "--password", "bad",
                                          "pub", "-t", "a", "-m", "b"), 4)
    assert run(address, "--username", "alice", "--password", "s3cret", "devices",
               "list").returncode == 0
    from_env = run(address, "pub", "-t", "a", "-m", "b",
                   env=cli_env(MQTT_USER="alice", MQTT_PASSWORD="s3cret"))
    assert from_env.returncode == 0, from_env.stderr


def test_health_with_refused_credentials_exits_4(mosquitto_factory: MosquittoFactory,
                                                 tmp_path: Path) -> None:
    """health_check() reports instead of raising; its 'error' key names the refusal."""
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "s3cret"],
                   check=True, capture_output=True, timeout=CALL_TIMEOUT)
    broker = mosquitto_factory(extra_config=f"allow_anonymous false\n"
                                            f"password_file {passwords}")
    assert "Not authorized" in failed(run(broker.address, "health"), 4)
    assert run(broker.address, "--username", "alice", "--password", "s3cret",
               "health").returncode == 0


def test_tls_with_a_ca_file(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    broker = mosquitto_factory(extra_config=f"certfile {cert_file}\nkeyfile {key_file}")
    text = ok(broker.address, "--ca-file", str(ca_file), "health")
    assert "Healthy:             yes" in text
    # --tls alone verifies against the system's trust store, which does not know this CA
    assert "CERTIFICATE_VERIFY_FAILED" in failed(run(broker.address, "--tls", "health"), 3)
