"""Broker discovery: arguments, environment, the real py-consul client against a fake agent."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from isa_common_mqtt._discovery import ConsulSettings, Endpoint, resolve_endpoints
from isa_common_mqtt._errors import InvalidArgumentError
from isa_common_mqtt.testing import MosquittoFactory

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_PATH = "/v1/health/service/mqtt"


def instance(
    name: str, node_address: str, address: str, port: int, *statuses: str
) -> dict[str, Any]:
    """One entry of ``/v1/health/service/<name>`` as Consul documents it."""
    return {
        "Node": {"ID": f"id-{name}", "Node": f"node-{name}", "Address": node_address},
        "Service": {
            "ID": f"mqtt-{name}",
            "Service": "mqtt",
            "Address": address,
            "Port": port,
            "Tags": ["broker"],
        },
        "Checks": [
            {"Node": f"node-{name}", "CheckID": f"check-{index}", "Status": status}
            for index, status in enumerate(statuses or ("passing",))
        ],
    }


class FakeConsul:
    """A Consul agent answering the health endpoint, recording every request."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.status = 200
        self.requests: list[tuple[str, str | None]] = []  # (path with query, X-Consul-Token)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append((self.path, self.headers.get("X-Consul-Token")))
                url = urlsplit(self.path)
                if fake.status != 200:
                    self._answer(fake.status, b"internal error: no cluster leader")
                elif url.path != SERVICE_PATH:
                    self._answer(404, b"not found")
                else:
                    entries = fake.entries
                    if "passing" in parse_qs(url.query):  # Consul filters on the server
                        entries = [
                            e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])
                        ]
                    self._answer(200, json.dumps(entries).encode(), "application/json")

            def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("X-Consul-Index", "42")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logging.getLogger(__name__).debug(format, *args)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.settings = ConsulSettings(host="127.0.0.1", port=self.port)


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """py-consul and requests read os.environ themselves: keep the host's settings out."""
    for name in list(os.environ):
        if name.upper().endswith("_PROXY") or name.startswith(("CONSUL_", "MQTT_")):
            monkeypatch.delenv(name)


@pytest.fixture
def agent() -> Iterator[FakeConsul]:
    fake = FakeConsul()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_healthy_instances_in_consul_order(agent: FakeConsul) -> None:
    agent.entries = [
        instance("a", "10.0.0.1", "10.1.0.1", 1883),
        instance("b", "10.0.0.2", "10.1.0.2", 1883, "passing", "critical"),
        instance("c", "10.0.0.3", "10.1.0.3", 1884),
    ]
    endpoints = resolve_endpoints(None, None, env={}, consul=agent.settings)
    # Every healthy instance, ranked: the session fails over down this list.
    assert endpoints == [Endpoint("10.1.0.1", 1883, "consul"), Endpoint("10.1.0.3", 1884, "consul")]
    assert agent.requests == [(f"{SERVICE_PATH}?passing=1", None)]


def test_empty_service_address_uses_node_address(agent: FakeConsul) -> None:
    agent.entries = [instance("a", "10.0.0.1", "", 1883), instance("b", "10.0.0.2", "b.lan", 8883)]
    assert resolve_endpoints(None, None, env={}, consul=agent.settings) == [
        Endpoint("10.0.0.1", 1883, "consul"),
        Endpoint("b.lan", 8883, "consul"),
    ]


def test_unusable_entry_is_skipped_with_warning(
    agent: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    broken = instance("x", "", "", 1883)
    agent.entries = [broken, instance("a", "10.0.0.1", "10.1.0.1", 1883)]
    with caplog.at_level(logging.WARNING, logger="isa_common_mqtt._discovery"):
        endpoints = resolve_endpoints(None, None, env={}, consul=agent.settings)
    assert endpoints == [Endpoint("10.1.0.1", 1883, "consul")]
    [record] = caplog.records
    assert "mqtt-x" in record.getMessage()


def test_service_name_and_agent_from_environment(agent: FakeConsul) -> None:
    agent.entries = [instance("a", "10.0.0.1", "10.1.0.1", 1883)]
    env = {"CONSUL_HOST": "127.0.0.1", "CONSUL_PORT": str(agent.port)}
    endpoints = resolve_endpoints(None, None, env=env, consul=ConsulSettings(service="broker"))
    assert endpoints == [Endpoint("localhost", 1883, "default")]  # no service "broker"
    assert agent.requests == [("/v1/health/service/broker?passing=1", None)]


def test_explicit_host_wins_without_contacting_consul(agent: FakeConsul) -> None:
    agent.entries = [instance("a", "10.0.0.1", "10.1.0.1", 1883)]
    env = {
        "MQTT_HOST": "env.lan",
        "MQTT_PORT": "1999",
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(agent.port),
    }
    assert resolve_endpoints("broker.lan", None, env=env, consul=agent.settings) == [
        Endpoint("broker.lan", 1883, "explicit")
    ]
    assert resolve_endpoints("broker.lan", 8883, env=env) == [
        Endpoint("broker.lan", 8883, "explicit")
    ]
    assert agent.requests == []


def test_environment_wins_over_consul(agent: FakeConsul) -> None:
    agent.entries = [instance("a", "10.0.0.1", "10.1.0.1", 1883)]
    env = {
        "MQTT_HOST": "env.lan",
        "MQTT_PORT": "1999",
        "CONSUL_HOST": "127.0.0.1",
        "CONSUL_PORT": str(agent.port),
    }
    assert resolve_endpoints(None, None, env=env) == [Endpoint("env.lan", 1999, "env")]
    assert resolve_endpoints(None, None, env={"MQTT_HOST": "env.lan"}, consul=agent.settings) == [
        Endpoint("env.lan", 1883, "env")
    ]
    assert agent.requests == []


def test_explicit_port_alone_pins_the_discovered_hosts_port(agent: FakeConsul) -> None:
    agent.entries = [
        instance("a", "10.0.0.1", "10.1.0.1", 1883),
        instance("a2", "10.0.0.1", "10.1.0.1", 1884),
        instance("b", "10.0.0.2", "10.1.0.2", 1883),
    ]
    assert resolve_endpoints(None, 8883, env={"MQTT_HOST": "env.lan", "MQTT_PORT": "1999"}) == [
        Endpoint("env.lan", 8883, "env")
    ]
    assert resolve_endpoints(None, 8883, env={}, consul=agent.settings) == [
        Endpoint("10.1.0.1", 8883, "consul"),
        Endpoint("10.1.0.2", 8883, "consul"),
    ]


@pytest.mark.parametrize("value", ["abc", "18.83", "0", "70000"])
def test_invalid_mqtt_port_raises_naming_the_variable(agent: FakeConsul, value: str) -> None:
    with pytest.raises(ValueError, match="MQTT_PORT") as caught:
        resolve_endpoints(None, None, env={"MQTT_PORT": value}, consul=agent.settings)
    assert isinstance(caught.value, InvalidArgumentError)
    assert agent.requests == []


def test_invalid_consul_port_and_arguments_raise() -> None:
    with pytest.raises(InvalidArgumentError, match="CONSUL_PORT"):
        resolve_endpoints(None, None, env={"CONSUL_PORT": "consul"})
    with pytest.raises(InvalidArgumentError, match="port"):
        resolve_endpoints("broker.lan", 0)
    with pytest.raises(InvalidArgumentError, match="host"):
        resolve_endpoints("", 1883)


def test_unreachable_consul_falls_back_to_localhost(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ConsulSettings(host="127.0.0.1", port=closed_port)
    with caplog.at_level(logging.WARNING, logger="isa_common_mqtt._discovery"):
        endpoints = resolve_endpoints(None, None, env={}, consul=settings)
    assert endpoints == [Endpoint("localhost", 1883, "default")]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"http://127.0.0.1:{closed_port}" in record.getMessage()
    assert "localhost:1883" in record.getMessage()


def test_consul_error_falls_back_with_warning(
    agent: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    agent.status = 500
    with caplog.at_level(logging.WARNING, logger="isa_common_mqtt._discovery"):
        endpoints = resolve_endpoints(None, None, env={"MQTT_PORT": "1999"}, consul=agent.settings)
    assert endpoints == [Endpoint("localhost", 1999, "default")]
    [record] = caplog.records
    assert f"http://127.0.0.1:{agent.port}" in record.getMessage()
    assert "500" in record.getMessage()
    assert "localhost:1999" in record.getMessage()


def test_no_healthy_instance_falls_back_with_warning(
    agent: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    agent.entries = [instance("a", "10.0.0.1", "10.1.0.1", 1883, "critical")]
    with caplog.at_level(logging.WARNING, logger="isa_common_mqtt._discovery"):
        endpoints = resolve_endpoints(None, None, env={}, consul=agent.settings)
    assert endpoints == [Endpoint("localhost", 1883, "default")]
    [record] = caplog.records
    assert "no healthy instance" in record.getMessage()
    assert agent.requests == [(f"{SERVICE_PATH}?passing=1", None)]


def test_acl_token_is_sent_as_header(agent: FakeConsul, monkeypatch: pytest.MonkeyPatch) -> None:
    agent.entries = [instance("a", "10.0.0.1", "10.1.0.1", 1883)]
    base = agent.settings
    resolve_endpoints(None, None, env={}, consul=ConsulSettings(base.host, base.port, "s3cret"))
    resolve_endpoints(None, None, env={"CONSUL_HTTP_TOKEN": "from-env"}, consul=base)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "process-env")  # not in the env mapping given
    resolve_endpoints(None, None, env={}, consul=base)
    assert agent.requests == [
        (f"{SERVICE_PATH}?passing=1", "s3cret"),
        (f"{SERVICE_PATH}?passing=1", "from-env"),
        (f"{SERVICE_PATH}?passing=1", None),
    ]


def test_settings_repr_hides_the_token() -> None:
    settings = ConsulSettings(host="consul.lan", token="s3cret")
    assert "s3cret" not in repr(settings)
    assert "consul.lan" in repr(settings)


def test_import_does_not_load_consul() -> None:
    code = (
        "import sys, isa_common_mqtt._discovery; "
        "sys.exit('consul' in sys.modules or 'requests' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_client_fails_over_past_an_instance_that_refuses(
        agent: FakeConsul, closed_port: int, mosquitto_factory: MosquittoFactory) -> None:
    """Consul lists a refusing instance first, a critical one, then a live broker: the
    session connects to the live one, and finds it again after a restart."""
    from isa_common_mqtt import MQTTClient

    broker = mosquitto_factory()
    agent.entries = [instance("down", "127.0.0.1", "127.0.0.1", closed_port),
                     instance("sick", "127.0.0.1", "127.0.0.1", broker.port, "critical"),
                     instance("live", "127.0.0.1", "127.0.0.1", broker.port)]
    client = MQTTClient(consul_host="127.0.0.1", consul_port=agent.port, connect_timeout=3)
    try:
        conn = client.connect("via-consul")
        assert conn["message"] == f"connected to 127.0.0.1:{broker.port} as 'via-consul'"
        before = len(agent.requests)
        broker.restart()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                client.get_connection_status(conn["session_id"])["reconnects"]
                and client.get_connection_status(conn["session_id"])["connected"]):
            time.sleep(0.02)
        assert client.get_connection_status(conn["session_id"])["connected"] is True
        assert len(agent.requests) > before  # asked Consul again to reconnect
    finally:
        client.close()
