"""Tests of the pytest plugin isa_common_mqtt.testing: backends, MosquittoProcess, fixtures."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from isa_common_mqtt import testing
from isa_common_mqtt.testing import (
    BROKER_ENV_VAR,
    BrokerAddress,
    MosquittoFactory,
    MosquittoProcess,
    choose_backend,
    docker_available,
    find_mosquitto,
    parse_broker_address,
)

from .conftest import WAIT, paho_client, publish_retained, read_retained, wait_for_save_after


def accepts_tcp(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# -- choose_backend and friends ------------------------------------------------------------


def test_env_variable_wins_over_everything() -> None:
    env = {BROKER_ENV_VAR: "broker.example:1883"}
    assert choose_backend(env, mosquitto_path="/usr/sbin/mosquitto", docker_available=True) == "env"


def test_blank_env_variable_is_ignored() -> None:
    env = {BROKER_ENV_VAR: "  "}
    backend = choose_backend(env, mosquitto_path="/usr/sbin/mosquitto", docker_available=True)
    assert backend == "mosquitto"


def test_mosquitto_binary_beats_docker() -> None:
    assert choose_backend({}, mosquitto_path="/bin/mosquitto", docker_available=True) == "mosquitto"


def test_docker_is_the_last_resort() -> None:
    assert choose_backend({}, mosquitto_path=None, docker_available=True) == "testcontainers"


def test_no_backend_explains_how_to_get_a_broker() -> None:
    with pytest.raises(RuntimeError) as caught:
        choose_backend({"OTHER": "x"}, mosquitto_path=None, docker_available=False)
    message = str(caught.value)
    assert "apt-get install mosquitto" in message
    assert f"{BROKER_ENV_VAR}=host:port" in message
    assert "Docker" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:1883", BrokerAddress("localhost", 1883)),
        (" 10.0.0.5:18830 ", BrokerAddress("10.0.0.5", 18830)),
        ("[::1]:1884", BrokerAddress("::1", 1884)),
    ],
)
def test_parse_broker_address(text: str, expected: BrokerAddress) -> None:
    assert parse_broker_address(text) == expected


@pytest.mark.parametrize("text", ["localhost", ":1883", "host:", "host:port", "host:0", "h:70000"])
def test_parse_broker_address_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match=BROKER_ENV_VAR):
        parse_broker_address(text)


def test_find_mosquitto_finds_an_executable() -> None:
    path = find_mosquitto()
    assert path is not None, "mosquitto must be installed to run this test suite"
    assert os.access(path, os.X_OK)


@contextlib.contextmanager
def fake_docker_daemon(reply: bytes | None) -> Iterator[str]:
    """A unix socket that answers every request with ``reply`` (or never, if None)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "docker.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen()
        done = threading.Event()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                if reply is not None:
                    conn.sendall(reply)
                done.wait(WAIT)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"unix://{path}"
        finally:
            done.set()
            thread.join(WAIT)
            server.close()


def test_docker_available_when_the_daemon_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_docker_daemon(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK") as host:
        monkeypatch.setenv("DOCKER_HOST", host)
        assert docker_available() is True


def test_docker_unavailable_without_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert docker_available() is False


def test_docker_check_does_not_hang_on_a_silent_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_docker_daemon(None) as host:
        monkeypatch.setenv("DOCKER_HOST", host)
        started = time.monotonic()
        assert docker_available(timeout=0.5) is False
        assert time.monotonic() - started < 3


def test_docker_error_status_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_docker_daemon(b"HTTP/1.1 500 Internal Server Error\r\n\r\n") as host:
        monkeypatch.setenv("DOCKER_HOST", host)
        assert docker_available() is False


def test_container_backend_gives_the_mapped_port_and_stops_the_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []

    class FakeContainer:
        def __init__(self, image: str) -> None:
            events.append(f"create {image}")

        def start(self) -> None:
            events.append("start")

        def get_container_host_ip(self) -> str:
            return "docker-host"

        def get_exposed_port(self, port: int) -> str:
            events.append(f"port {port}")
            return "49153"

        def stop(self) -> None:
            events.append("stop")

    fake = types.ModuleType("testcontainers.community.mqtt")
    setattr(fake, "MosquittoContainer", FakeContainer)  # noqa: B010
    monkeypatch.setitem(sys.modules, "testcontainers.community.mqtt", fake)

    backend = testing._container_broker()
    assert next(backend) == BrokerAddress("docker-host", 49153)
    assert "stop" not in events
    backend.close()
    assert events == ["create eclipse-mosquitto:2", "start", "port 1883", "stop"]


# -- MosquittoProcess ----------------------------------------------------------------------


def test_private_broker_accepts_paho_and_keeps_retained_across_restart(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory()
    assert broker.host == "127.0.0.1"
    assert broker.port != 1883
    assert broker.address == BrokerAddress("127.0.0.1", broker.port)
    port = broker.port

    publish_retained(broker.address, {unique_topic: b"kept"})
    broker.restart()

    assert broker.port == port
    [message] = read_retained(broker.address, unique_topic, 1)
    assert (message.topic, message.payload, message.retain) == (unique_topic, b"kept", True)
    assert (broker.data_dir / "mosquitto.db").is_file()


def test_generated_config_has_the_promised_settings(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory()
    lines = broker.config_path.read_text().splitlines()
    assert f"listener {broker.port} 127.0.0.1" in lines
    for expected in ["allow_anonymous true", "persistence true", "autosave_interval 1"]:
        assert expected in lines
    assert "max_queued_messages 1000000" in lines
    assert f"persistence_location {broker.data_dir}/" in lines
    assert not any(line.startswith("max_inflight_messages") for line in lines)
    assert "running" in broker.log_text()  # log_dest file in the temp dir


def test_without_persistence_nothing_survives_a_restart(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory(persistence=False)
    publish_retained(broker.address, {unique_topic: b"gone"})
    broker.restart()
    with paho_client(broker.address) as (client, inbox):
        client.subscribe(unique_topic, qos=1)
        publish_retained(broker.address, {f"{unique_topic}/marker": b"marker"})
        client.subscribe(f"{unique_topic}/marker", qos=1)  # SUBACKs come back in order
        messages = inbox.wait_for(1)
    assert [m.topic for m in messages] == [f"{unique_topic}/marker"]


def test_config_error_is_reported_with_the_log_tail() -> None:
    broker = MosquittoProcess(extra_config="no_such_option 1")
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with code.*no_such_option"):
            broker.start()
        assert not broker.running
    finally:
        broker.close()


def test_taken_fixed_port_fails_clearly() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        broker = MosquittoProcess(port=holder.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                broker.start()
        finally:
            broker.close()


def test_context_manager_stops_the_broker_and_removes_its_files() -> None:
    with MosquittoProcess() as broker:
        workdir = broker.config_path.parent
        assert broker.running
        assert accepts_tcp(broker.port)
    assert not broker.running
    assert not accepts_tcp(broker.port)
    assert not workdir.exists()


def test_kill_keeps_what_was_autosaved(
    mosquitto_factory: MosquittoFactory, unique_topic: str
) -> None:
    broker = mosquitto_factory()
    publish_retained(broker.address, {unique_topic: b"autosaved"})
    acked = time.time_ns()
    wait_for_save_after(broker.data_dir / "mosquitto.db", acked)

    broker.kill()
    assert not broker.running
    broker.start()

    [message] = read_retained(broker.address, unique_topic, 1)
    assert message.payload == b"autosaved"


def test_config_file_is_moved_to_a_private_listener_and_data_dir(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, unique_topic: str
) -> None:
    config = tmp_path / "prod.conf"
    config.write_text(
        "listener 1883\n"
        "allow_anonymous true\n"
        "persistence true\n"
        "persistence_location /nonexistent/data/\n"
        "log_dest file /nonexistent/mosquitto.log\n"
        "max_queued_messages 4242\n"
    )
    broker = mosquitto_factory(config_file=config)
    text = broker.config_path.read_text()
    assert re.search(r"^listener 1883", text, re.MULTILINE) is None
    active = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any("/nonexistent" in line for line in active)
    assert "max_queued_messages 4242" in text

    publish_retained(broker.address, {unique_topic: b"private"})
    broker.restart()
    [message] = read_retained(broker.address, unique_topic, 1)
    assert message.payload == b"private"


def test_config_file_with_two_listeners_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "two.conf"
    config.write_text("listener 1883\nlistener 8883\nallow_anonymous true\n")
    with pytest.raises(ValueError, match="single listener"):
        MosquittoProcess(config_file=config)


# -- fixtures --------------------------------------------------------------------------------


def test_mqtt_broker_fixture_carries_messages(
    mqtt_broker: BrokerAddress, unique_topic: str
) -> None:
    with paho_client(mqtt_broker) as (client, inbox):
        result, _ = client.subscribe(unique_topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        publish_retained(mqtt_broker, {unique_topic: b"hello"})
        [message] = inbox.wait_for(1)
    assert (message.topic, message.payload) == (unique_topic, b"hello")


def test_unique_topic_is_a_fresh_test_topic(unique_topic: str) -> None:
    assert re.fullmatch(r"test/[0-9a-f]{32}", unique_topic)


def run_inner_pytest(
    tmp_path: Path, test_source: str, *, conftest: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a separate pytest session that loads the plugin the way a user's suite would."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_source))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(conftest))
    # Block the entry point under its current name and load the module by name instead,
    # so this works whether or not the package is pip-installed.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "no:isa_common_mqtt", "-p", "isa_common_mqtt.testing", "-W", "error"]
    repo_root = str(Path(__file__).resolve().parents[1])
    run_env = {**os.environ, **(env or {})}
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, run_env.get("PYTHONPATH")]))
    return subprocess.run(
        command, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=60, check=False
    )


def test_factory_brokers_are_stopped_and_removed_at_teardown(tmp_path: Path) -> None:
    inner = run_inner_pytest(
        tmp_path,
        """
        import json, pathlib

        def test_two_brokers(mosquitto_factory):
            brokers = [mosquitto_factory(), mosquitto_factory(persistence=False)]
            assert all(b.running for b in brokers)
            state = {"ports": [b.port for b in brokers],
                     "dirs": [str(b.config_path.parent) for b in brokers]}
            pathlib.Path("state.json").write_text(json.dumps(state))
        """,
    )
    assert inner.returncode == 0, inner.stdout + inner.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(set(state["ports"])) == 2
    assert not any(accepts_tcp(port) for port in state["ports"])
    assert not any(Path(d).exists() for d in state["dirs"])


def test_mqtt_broker_fixture_uses_the_env_variable(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory()
    inner = run_inner_pytest(
        tmp_path,
        f"""
        from isa_common_mqtt.testing import BrokerAddress

        def test_address(mqtt_broker):
            assert mqtt_broker == BrokerAddress("127.0.0.1", {broker.port})
        """,
        env={BROKER_ENV_VAR: f"127.0.0.1:{broker.port}"},
    )
    assert inner.returncode == 0, inner.stdout + inner.stderr
    assert "1 passed" in inner.stdout


def test_mqtt_broker_fixture_fails_instead_of_skipping_without_a_broker(tmp_path: Path) -> None:
    inner = run_inner_pytest(
        tmp_path,
        """
        def test_needs_a_broker(mqtt_broker):
            pass
        """,
        conftest="""
        import isa_common_mqtt.testing as plugin

        plugin.find_mosquitto = lambda: None
        """,
        env={BROKER_ENV_VAR: "", "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "1 error" in inner.stdout
    assert "skipped" not in inner.stdout
    assert "apt-get install mosquitto" in inner.stdout
