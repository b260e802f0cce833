"""Pytest plugin that gives a test suite a real MQTT broker.

Fixtures: ``mqtt_broker`` (session), ``mosquitto_factory`` and ``unique_topic``; for
compatibility tests ``rabbitmq_broker`` and ``nats_broker`` (session; RabbitMQ's MQTT plugin
and nats-server's MQTT listener, each a private instance on free loopback ports).
The installed package loads it through its ``pytest11`` entry point; list it in
``pytest_plugins`` only where the package is not pip-installed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from ._engines import (
    LOG_TAIL_LINES,
    LOOPBACK,
    BrokerAddress,
    EngineProcess,
    NatsProcess,
    RabbitMQProcess,
    accepts_tcp,
    free_ports,
    read_from,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BROKER_ENV_VAR",
    "BrokerAddress",
    "MosquittoFactory",
    "MosquittoProcess",
    "NatsProcess",
    "RabbitMQProcess",
    "choose_backend",
    "docker_available",
    "find_mosquitto",
    "mosquitto_factory",
    "mqtt_broker",
    "nats_broker",
    "parse_broker_address",
    "rabbitmq_broker",
    "unique_topic",
]

BROKER_ENV_VAR = "MQTT_TEST_BROKER"
"""Set to ``host:port`` to run the tests against an already running broker."""

_MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_START_TIMEOUT = 10.0
_CONTAINER_IMAGE = "eclipse-mosquitto:2"
_CONTAINER_PORT = 1883
_RUNNING = re.compile(r"mosquitto version \S+ running")

_NO_BROKER_HELP = (
    "No MQTT broker is available for the tests. Either install Mosquitto "
    "(e.g. `apt-get install mosquitto`; the fixtures start their own private instance, "
    f"the system service is not needed), or set {BROKER_ENV_VAR}=host:port to use a running "
    "broker, or start a Docker daemon so testcontainers can run eclipse-mosquitto."
)


def parse_broker_address(value: str) -> BrokerAddress:
    """Parse ``host:port`` (or ``[v6addr]:port``) as given in MQTT_TEST_BROKER."""
    host, sep, port_text = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{BROKER_ENV_VAR} must look like host:port, got {value!r}")
    return BrokerAddress(host, int(port_text))


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def choose_backend(
    env: Mapping[str, str], *, mosquitto_path: str | None, docker_available: bool
) -> str:
    """Pick where the test broker comes from: "env", "mosquitto" or "testcontainers"."""
    if env.get(BROKER_ENV_VAR, "").strip():
        return "env"
    if mosquitto_path:
        return "mosquitto"
    if docker_available:
        return "testcontainers"
    raise RuntimeError(_NO_BROKER_HELP)


def docker_available(timeout: float = 2.0) -> bool:
    """Tell, within about ``timeout`` seconds, whether a Docker daemon answers a ping."""
    host = os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        return _unix_docker_ping(host.removeprefix("unix://"), timeout)
    try:
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=max(1, round(timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "not usable"
        logger.debug("Docker at %s is not reachable", host, exc_info=True)
        return False


def _unix_docker_ping(path: str, timeout: float) -> bool:
    """Send ``GET /_ping`` to a Docker daemon on a unix socket."""
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


class MosquittoProcess(EngineProcess):
    """A private ``mosquitto`` on 127.0.0.1 with its own config, data and log in a temp dir.

    With ``config_file`` that file's settings are used unchanged except the listener (moved to
    the private port), ``persistence_location`` and ``log_dest file`` (into the temp dir),
    ``pid_file`` and ``user`` (dropped; ``user root`` when run as root).
    """

    _name = "mosquitto"
    _stop_timeout = 10.0

    def __init__(
        self,
        *,
        config_file: str | Path | None = None,
        extra_config: str = "",
        persistence: bool = True,
        port: int | None = None,
        executable: str | None = None,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        found = executable or find_mosquitto()
        if found is None:
            raise RuntimeError(_NO_BROKER_HELP)
        self._source = Path(config_file).read_text() if config_file is not None else None
        self._source_dir = Path(config_file).resolve().parent if config_file is not None else None
        if self._source is not None:
            # fail early on what we can't adapt
            _adapted_config(self._source, Path(), persistence, self._source_dir)
        self._persistence = persistence
        super().__init__(executable=found, port=port, start_timeout=start_timeout,
                         extra_config=extra_config)

    @property
    def config_path(self) -> Path:
        """The config file mosquitto is started with."""
        return self._dir / "mosquitto.conf"

    @property
    def data_dir(self) -> Path:
        """The persistence directory (``persistence_location``)."""
        return self._dir / "data"

    @property
    def log_path(self) -> Path:
        """Where mosquitto's own log goes (``log_dest file``)."""
        return self._dir / "mosquitto.log"

    def log_text(self) -> str:
        """What the broker logged so far: its log file, then what it printed on stdout/stderr."""
        return "".join(p.read_text(errors="replace") for p in (self.log_path, self.output_path)
                       if p.exists())

    def _launch(self) -> None:
        """Write the config for the port (a free one before the first start), run mosquitto
        and wait until it says it is running."""
        port = self._port if self._port is not None else free_ports(1)[0]
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config_text(port))
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn([self._executable, "-c", str(self.config_path)])
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self._start_timeout
        while proc.poll() is None:
            # The log line proves *our* process bound the port; a TCP connect alone could
            # reach whoever else holds it.
            if _RUNNING.search(read_from(self.log_path, log_start)) \
                    and accepts_tcp(LOOPBACK, port):
                self._port = port
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(self._failure(f"did not start on port {port} in time"))
            time.sleep(0.02)
        self._proc = None
        raise RuntimeError(self._failure(f"exited with code {proc.returncode} on port {port}"))

    def _failure(self, what: str, started_at: int = 0) -> str:
        tail = "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])
        return f"mosquitto {what}; config {self.config_path}; log tail:\n{tail}"

    def _config_text(self, port: int) -> str:
        if self._source is None:
            lines = _generated_config(self._dir, self._persistence)
        else:
            lines = _adapted_config(self._source, self._dir, self._persistence, self._source_dir)
        lines.insert(0, f"listener {port} {LOOPBACK}")
        lines.append(f"log_dest file {self.log_path}")
        if os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", who cannot write our temp dir.
            lines.append("user root")
        lines.append(self._extra_config)
        return "\n".join(lines) + "\n"


def _generated_config(workdir: Path, persistence: bool) -> list[str]:
    """The settings of a private test broker, without its listener and log file."""
    lines = ["allow_anonymous true"]
    if persistence:
        lines += ["persistence true", f"persistence_location {workdir / 'data'}/"]
        lines += ["autosave_interval 1"]
    else:
        lines.append("persistence false")
    lines += ["max_queued_messages 1000000", "sys_interval 1"]
    lines += [f"log_type {kind}" for kind in ("error", "warning", "notice", "information")]
    return lines


_REPLACED_KEYS = frozenset(
    {"listener", "port", "bind_address", "bind_interface", "pid_file", "user"}
)


_PATH_KEYS = frozenset({"password_file", "acl_file", "cafile", "capath", "certfile", "keyfile",
                        "crlfile", "dhparamfile", "psk_file"})
_CONTAINER_CONFIG_DIR = "/mosquitto/config/"
"""Where the eclipse-mosquitto image expects its config; files there are looked up next to
the config file when they do not exist on this machine."""


def _local_path(value: str, config_dir: Path | None) -> str:
    """The file a config line names, found on this machine (see ``_CONTAINER_CONFIG_DIR``);
    a relative path is taken from the config file's directory."""
    if config_dir is None:
        return value
    path = Path(value)
    if not path.is_absolute():
        return str(config_dir / path)
    if value.startswith(_CONTAINER_CONFIG_DIR) and not path.exists():
        return str(config_dir / value[len(_CONTAINER_CONFIG_DIR):])
    return value


def _adapted_config(source: str, workdir: Path, persistence: bool,
                    config_dir: Path | None = None) -> list[str]:
    """An existing config made private: listener, data dir and log file are swapped out;
    files it names (password_file, acl_file, certificates) are found next to it."""
    lines: list[str] = []
    listeners = 0
    log_types: set[str] = set()
    for line in source.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else ""
        if key in ("listener", "port"):
            listeners += 1
            if listeners > 1:
                raise ValueError("MosquittoProcess supports config files with a single listener")
        if key == "log_type":
            log_types.update(words[1:])
        if key in _REPLACED_KEYS or (key == "log_dest" and words[1:2] == ["file"]):
            lines.append(f"# (replaced by isa_common_mqtt.testing) {line}")
        elif key == "persistence_location":
            lines.append(f"persistence_location {workdir / 'data'}/")
        elif key == "persistence" and not persistence:
            lines.append("persistence false")
        elif key in _PATH_KEYS and len(words) == 2:
            lines.append(f"{key} {_local_path(words[1], config_dir)}")
        else:
            lines.append(line)
    if log_types and not log_types & {"information", "all"}:
        lines.append("log_type information")  # start() waits for the "running" line
    return lines


# -- RabbitMQ and NATS: MQTT engines without MQTT 5, $SYS or full QoS 2 ---------------------



class MosquittoFactory(Protocol):
    """The callable given by the ``mosquitto_factory`` fixture; returns a started broker."""

    def __call__(
        self,
        *,
        config_file: str | Path | None = None,
        extra_config: str = "",
        persistence: bool = True,
        port: int | None = None,
    ) -> MosquittoProcess: ...


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerAddress]:
    """A broker for the whole session: MQTT_TEST_BROKER, else a private Mosquitto, else Docker."""
    mosquitto = find_mosquitto()
    docker_needed = not os.environ.get(BROKER_ENV_VAR, "").strip() and mosquitto is None
    backend = choose_backend(
        os.environ, mosquitto_path=mosquitto, docker_available=docker_needed and docker_available()
    )
    logger.info("test broker backend: %s", backend)
    if backend == "env":
        yield parse_broker_address(os.environ[BROKER_ENV_VAR])
    elif backend == "mosquitto":
        with MosquittoProcess(executable=mosquitto) as broker:
            yield broker.address
    else:
        yield from _container_broker()


def _container_broker() -> Generator[BrokerAddress, None, None]:
    """Run eclipse-mosquitto with testcontainers for as long as the generator is open."""
    try:
        with warnings.catch_warnings():
            # testcontainers 4.x warns about its own deprecated decorators at import.
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.community.mqtt import MosquittoContainer
    except ImportError as exc:
        raise RuntimeError(
            "Docker is available but testcontainers is not installed: "
            f"pip install testcontainers. {_NO_BROKER_HELP}"
        ) from exc
    container = MosquittoContainer(image=_CONTAINER_IMAGE)
    try:
        container.start()
        host = str(container.get_container_host_ip())
        yield BrokerAddress(host, int(container.get_exposed_port(_CONTAINER_PORT)))
    finally:
        container.stop()


@pytest.fixture
def mosquitto_factory() -> Iterator[MosquittoFactory]:
    """Start private brokers for one test (restart, kill, persistence); all closed at teardown."""
    with contextlib.ExitStack() as stack:

        def factory(
            *,
            config_file: str | Path | None = None,
            extra_config: str = "",
            persistence: bool = True,
            port: int | None = None,
        ) -> MosquittoProcess:
            broker = MosquittoProcess(
                config_file=config_file,
                extra_config=extra_config,
                persistence=persistence,
                port=port,
            )
            stack.callback(broker.close)
            broker.start()
            return broker

        yield factory


@pytest.fixture(scope="session")
def rabbitmq_broker() -> Iterator[RabbitMQProcess]:
    """A private RabbitMQ node with the MQTT plugin for the whole session (boots in 10-20 s)."""
    with RabbitMQProcess() as broker:
        yield broker


@pytest.fixture(scope="session")
def nats_broker() -> Iterator[NatsProcess]:
    """A private nats-server with JetStream and MQTT for the whole session."""
    with NatsProcess() as broker:
        yield broker


@pytest.fixture
def unique_topic() -> str:
    """A topic no other test uses, like ``test/<uuid hex>``."""
    return f"test/{uuid.uuid4().hex}"
