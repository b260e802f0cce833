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
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

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

_LOOPBACK = "127.0.0.1"
_MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 40
_CONTAINER_IMAGE = "eclipse-mosquitto:2"
_CONTAINER_PORT = 1883
_RUNNING = re.compile(r"mosquitto version \S+ running")

_NO_BROKER_HELP = (
    "No MQTT broker is available for the tests. Either install Mosquitto "
    "(e.g. `apt-get install mosquitto`; the fixtures start their own private instance, "
    f"the system service is not needed), or set {BROKER_ENV_VAR}=host:port to use a running "
    "broker, or start a Docker daemon so testcontainers can run eclipse-mosquitto."
)


@dataclass(frozen=True)
class BrokerAddress:
    """Where a test broker listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


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


def _read_from(path: Path, offset: int) -> str:
    """The text of ``path`` after byte ``offset`` ("" while the file does not exist)."""
    try:
        return path.read_bytes()[offset:].decode(errors="replace")
    except FileNotFoundError:
        return ""


def _free_port() -> int:
    """Ask the kernel for a currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts_tcp(host: str, port: int) -> bool:
    """Tell whether ``host:port`` accepts a TCP connection right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """A private ``mosquitto`` on 127.0.0.1 with its own config, data and log in a temp dir.

    With ``config_file`` that file's settings are used unchanged except the listener (moved to
    the private port), ``persistence_location`` and ``log_dest file`` (into the temp dir),
    ``pid_file`` and ``user`` (dropped; ``user root`` when run as root).
    """

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
        self._executable = found
        self._source = Path(config_file).read_text() if config_file is not None else None
        if self._source is not None:
            _adapted_config(self._source, Path(), persistence)  # fail early on what we can't adapt
        self._extra_config = extra_config
        self._persistence = persistence
        self._port = port
        self._start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="isa-mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    # -- where things are ---------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the broker listens on (always loopback)."""
        return _LOOPBACK

    @property
    def port(self) -> int:
        """The private port; fixed at the first successful start and kept by restarts."""
        if self._port is None:
            raise RuntimeError("the broker has not been started yet")
        return self._port

    @property
    def address(self) -> BrokerAddress:
        """Host and port as a :class:`BrokerAddress`."""
        return BrokerAddress(self.host, self.port)

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        """The config file mosquitto is started with."""
        return self._dir / "mosquitto.conf"

    @property
    def data_dir(self) -> Path:
        """The persistence directory (``persistence_location``)."""
        return self._dir / "data"

    def log_text(self) -> str:
        """What the broker logged so far: its log file, then what it printed on stdout/stderr."""
        parts = [p.read_text(errors="replace") for p in self._log_files() if p.exists()]
        return "".join(parts)

    def _log_files(self) -> tuple[Path, Path]:
        return self._dir / "mosquitto.log", self._dir / "output.log"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker; wait (bounded) until it logs "running" and accepts TCP connections."""
        if self._closed:
            raise RuntimeError("this MosquittoProcess is closed")
        if self.running:
            return
        if self._port is not None:
            self._launch(self._port)
            return
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            try:
                self._launch(port)
            except RuntimeError as exc:
                if attempt == _PORT_ATTEMPTS or "Address already in use" not in str(exc):
                    raise
                logger.info("port %d was taken before mosquitto bound it; trying another", port)
                continue
            self._port = port
            return

    def stop(self) -> None:
        """Stop with SIGTERM and wait, so mosquitto saves its persistence file."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("mosquitto did not stop within %.0f s; killing it", _STOP_TIMEOUT)
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill with SIGKILL: nothing is saved beyond the last autosave."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop cleanly, then start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its temp dir."""
        self.stop()
        self._closed = True
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MosquittoProcess(port={self._port}, running={self.running}, dir={self._dir})"

    # -- internals ----------------------------------------------------------------------

    def _launch(self, port: int) -> None:
        """Write the config for ``port``, run mosquitto and wait until it says it is running."""
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config_text(port))
        log_file = self._log_files()[0]
        log_start = log_file.stat().st_size if log_file.exists() else 0
        with open(self._log_files()[1], "ab") as output:
            proc = subprocess.Popen(
                [self._executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
            )
        deadline = time.monotonic() + self._start_timeout
        while proc.poll() is None:
            # The log line proves *our* process bound the port; a TCP connect alone could
            # reach whoever else holds it.
            if _RUNNING.search(_read_from(log_file, log_start)) and _accepts_tcp(_LOOPBACK, port):
                self._proc = proc
                logger.debug("mosquitto (pid %d) listening on %s:%d", proc.pid, _LOOPBACK, port)
                return
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(self._failure(f"did not start on port {port} in time"))
            time.sleep(0.02)
        raise RuntimeError(self._failure(f"exited with code {proc.returncode} on port {port}"))

    def _failure(self, what: str) -> str:
        tail = "\n".join(self.log_text().splitlines()[-_LOG_TAIL_LINES:])
        return f"mosquitto {what}; config {self.config_path}; log tail:\n{tail}"

    def _config_text(self, port: int) -> str:
        if self._source is None:
            lines = _generated_config(self._dir, self._persistence)
        else:
            lines = _adapted_config(self._source, self._dir, self._persistence)
        lines.insert(0, f"listener {port} {_LOOPBACK}")
        lines.append(f"log_dest file {self._log_files()[0]}")
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


def _adapted_config(source: str, workdir: Path, persistence: bool) -> list[str]:
    """An existing config made private: listener, data dir and log file are swapped out."""
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
        else:
            lines.append(line)
    if log_types and not log_types & {"information", "all"}:
        lines.append("log_type information")  # start() waits for the "running" line
    return lines


# -- RabbitMQ and NATS: MQTT engines without MQTT 5, $SYS or full QoS 2 ---------------------

_ENGINE_START_TIMEOUT = 60.0  # a RabbitMQ node boots in ~10-20 s on a loaded 2-core machine
_ENGINE_STOP_TIMEOUT = 30.0
_RABBITMQ_PATHS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/local/sbin/rabbitmq-server")
_EPMD_PATHS = ("/usr/lib/erlang/bin/epmd", "/usr/local/lib/erlang/bin/epmd")
_RABBITMQ_READY = r"started MQTT TCP listener on 127\.0\.0\.1:{port}\b"
_NATS_MQTT_READY = re.compile(r"Listening for MQTT clients on mqtt://127\.0\.0\.1:(\d+)")
_NATS_CLIENT_READY = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")
_PORT_IN_USE = ("eaddrinuse", "address already in use", "already_used", "could not bind")


def _find_executable(name: str, paths: tuple[str, ...]) -> str | None:
    """``paths`` first (they beat a distro wrapper on PATH), then ``name`` on PATH."""
    found = next((p for p in paths if os.access(p, os.X_OK)), None)
    return found or shutil.which(name)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open until every one is chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((_LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _mqtt_handshake(host: str, port: int, timeout: float = 5.0) -> bool:
    """Tell whether an MQTT 3.1.1 CONNECT to ``host:port`` gets a successful CONNACK in time."""
    replies: list[bool] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"isa-ready-{uuid.uuid4().hex}",
                         protocol=paho.MQTTv311)
    client.on_connect = lambda c, u, flags, reason, props: replies.append(not reason.is_failure)
    client.connect_timeout = timeout
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=10)
        while not replies and time.monotonic() < deadline:
            if client.loop(0.05) != paho.MQTT_ERR_SUCCESS:
                break
        if replies:
            client.disconnect()
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            client.loop(0.01)  # lets DISCONNECT leave before the socket closes
        client._sock_close()
    return replies == [True]


class _EngineProcess:
    """What RabbitMQProcess and NatsProcess share: a private temp dir, one MQTT port on
    loopback kept across restarts, a process group stopped cleanly or killed."""

    _name = "broker"
    _install_hint = ""

    def __init__(self, *, executable: str | None, port: int | None, start_timeout: float,
                 extra_config: str) -> None:
        if executable is None:
            raise RuntimeError(f"{self._name} is not installed: {self._install_hint}")
        self._executable = executable
        self._port = port
        self._start_timeout = start_timeout
        self._extra_config = extra_config
        self._dir = Path(tempfile.mkdtemp(prefix=f"isa-{self._name}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._fixed_port = port is not None
        self._closed = False
        self.boot_seconds: float | None = None
        """How long the last successful start took, until MQTT answered CONNECT."""

    @property
    def host(self) -> str:
        """The address the broker listens on (always loopback)."""
        return _LOOPBACK

    @property
    def port(self) -> int:
        """The private MQTT port; fixed at the first successful start and kept by restarts."""
        if self._port is None:
            raise RuntimeError(f"the {self._name} broker has not been started yet")
        return self._port

    @property
    def address(self) -> BrokerAddress:
        """Host and MQTT port as a :class:`BrokerAddress`."""
        return BrokerAddress(self.host, self.port)

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path:
        """The private temp dir: config, data, log; every process of the broker runs in it."""
        return self._dir

    @property
    def output_path(self) -> Path:
        """Where the broker's stdout and stderr (its log) go."""
        return self._dir / "output.log"

    def log_text(self) -> str:
        """What the broker logged so far."""
        return _read_from(self.output_path, 0)

    def start(self) -> None:
        """Start the broker and wait (bounded) until an MQTT 3.1.1 CONNECT gets a CONNACK."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        if self.running:
            return
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            started = time.monotonic()
            try:
                self._launch()
            except RuntimeError as exc:
                # Ports are chosen once, at the first successful start, and kept afterwards.
                retry = not self._fixed_port and self.boot_seconds is None
                if attempt == _PORT_ATTEMPTS or not retry \
                        or not any(marker in str(exc).lower() for marker in _PORT_IN_USE):
                    raise
                logger.info("a port of %s was taken before it bound it; trying others",
                            self._name)
                continue
            self.boot_seconds = time.monotonic() - started
            logger.info("%s listening on %s:%d after %.1f s", self._name, _LOOPBACK, self.port,
                        self.boot_seconds)
            return

    def stop(self) -> None:
        """Stop with SIGTERM (a clean shutdown) and wait; kill what is left after a bound."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_ENGINE_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self._name,
                               _ENGINE_STOP_TIMEOUT)
        if proc is not None:
            self._kill_group(proc)
        self._after_stop()

    def kill(self) -> None:
        """Kill with SIGKILL: nothing gets a chance to be saved."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._kill_group(proc)
        self._after_stop()

    def restart(self) -> None:
        """Stop cleanly, then start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its temp dir."""
        self.stop()
        self._closed = True
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self: _Engine) -> _Engine:
        try:
            self.start()
        except BaseException:
            self.close()  # no temp dir or helper process is left behind by a failed start
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self._port}, running={self.running}, dir={self._dir})"

    # -- for subclasses -------------------------------------------------------------------

    def _launch(self) -> None:
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Clean up helpers of the broker process (RabbitMQ's epmd)."""

    def _spawn(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        with open(self.output_path, "ab") as output:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=self._dir, env=dict(env) if env is not None else None,
                start_new_session=True)  # its own process group: stop() kills every child

    def _await_ready(self, ready: Callable[[str], bool], started_at: int) -> None:
        """Wait until ``ready(new log text)`` holds and MQTT answers; raise with the log tail."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self._start_timeout
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(self._failure("did not become ready in time"))
            if ready(_read_from(self.output_path, started_at)) and self._port is not None \
                    and _mqtt_handshake(_LOOPBACK, self._port, min(left, 5.0)):
                return
            time.sleep(0.05)
        self._proc = None
        self._kill_group(proc)
        self._after_stop()
        raise RuntimeError(self._failure(f"exited with code {proc.returncode}",
                                         started_at))

    def _failure(self, what: str, started_at: int = 0) -> str:
        lines = _read_from(self.output_path, started_at).splitlines()
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"{self._name} {what} (MQTT port {self._port}); dir {self._dir}; log tail:\n{tail}"

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_Engine = TypeVar("_Engine", bound=_EngineProcess)


class RabbitMQProcess(_EngineProcess):
    """A private RabbitMQ node with the MQTT plugin, on 127.0.0.1, in a temp dir.

    The node has its own name, cookie (``HOME`` is the temp dir), epmd (on a free port, so
    the system's epmd and node are never touched), AMQP, distribution and MQTT ports, and
    accepts anonymous MQTT clients as ``guest``. ``extra_config`` is appended to the
    generated ``rabbitmq.conf``. A node boots in 10-20 s.
    """

    _name = "rabbitmq"
    _install_hint = "apt-get install rabbitmq-server (Debian/Ubuntu package)"

    def __init__(self, *, extra_config: str = "", port: int | None = None,
                 executable: str | None = None,
                 start_timeout: float = _ENGINE_START_TIMEOUT) -> None:
        super().__init__(executable=executable
                         or _find_executable("rabbitmq-server", _RABBITMQ_PATHS),
                         port=port, start_timeout=start_timeout, extra_config=extra_config)
        self._epmd_path = _find_executable("epmd", _EPMD_PATHS)
        if self._epmd_path is None:
            raise RuntimeError(f"epmd (Erlang) is not installed: {self._install_hint}")
        self.node_name = f"isa-test-{uuid.uuid4().hex[:10]}@localhost"
        self._side_ports: list[int] | None = None  # epmd, AMQP, distribution
        self._epmd: subprocess.Popen[bytes] | None = None
        cookie = self._dir / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o600)

    def _launch(self) -> None:
        if self._side_ports is None:
            *self._side_ports, mqtt_port = _free_ports(4)
            self._port = mqtt_port if self._port is None else self._port
        epmd_port, amqp_port, dist_port = self._side_ports
        self._write_config(amqp_port)
        self._start_epmd(epmd_port)
        started_at = self.output_path.stat().st_size if self.output_path.exists() else 0
        self._spawn([self._executable], self._environment(epmd_port, amqp_port, dist_port))
        ready = re.compile(_RABBITMQ_READY.format(port=self._port))
        try:
            self._await_ready(lambda text: bool(ready.search(text)), started_at)
        except RuntimeError:
            if self.boot_seconds is None:  # never started: the next attempt picks fresh ports
                self._side_ports = None
                self._port = self._port if self._fixed_port else None
            raise

    def _write_config(self, amqp_port: int) -> None:
        (self._dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self._dir / "rabbitmq-env.conf").write_text("")  # never read /etc/rabbitmq's
        lines = [f"listeners.tcp.default = {_LOOPBACK}:{amqp_port}",
                 f"mqtt.listeners.tcp.default = {_LOOPBACK}:{self._port}",
                 "mqtt.allow_anonymous = true", "mqtt.default_user = guest",
                 "mqtt.default_pass = guest", "loopback_users = none",
                 "disk_free_limit.absolute = 10MB", self._extra_config]
        (self._dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _environment(self, epmd_port: int, amqp_port: int, dist_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self._dir
        env.update(HOME=str(d), ERL_EPMD_PORT=str(epmd_port), ERL_EPMD_ADDRESS=_LOOPBACK,
                   RABBITMQ_NODENAME=self.node_name, RABBITMQ_NODE_IP_ADDRESS=_LOOPBACK,
                   RABBITMQ_NODE_PORT=str(amqp_port), RABBITMQ_DIST_PORT=str(dist_port),
                   RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
                   RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
                   RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
                   RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"), RABBITMQ_LOGS="-")
        return env

    def _start_epmd(self, port: int) -> None:
        """A private epmd in the foreground, so stop() can end it (erl would daemonize one)."""
        assert self._epmd_path is not None
        with open(self._dir / "epmd.log", "ab") as output:
            self._epmd = subprocess.Popen(
                [self._epmd_path, "-port", str(port), "-address", _LOOPBACK],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=self._dir, start_new_session=True)
        deadline = time.monotonic() + 5.0
        while not _accepts_tcp(_LOOPBACK, port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                self._after_stop()
                raise RuntimeError(f"rabbitmq: epmd did not start on port {port} "
                                   "(eaddrinuse?); see epmd.log in " + str(self._dir))
            time.sleep(0.02)

    def _after_stop(self) -> None:
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            self._kill_group(epmd)


class NatsProcess(_EngineProcess):
    """A private ``nats-server`` with JetStream and its MQTT listener, on 127.0.0.1.

    Ports are chosen by the server itself (``-1``, read back from its log, so no other
    process can take them first) and kept across restarts. ``extra_config`` is appended to
    the generated config file.
    """

    _name = "nats"
    _install_hint = "apt-get install nats-server (Debian/Ubuntu package)"

    def __init__(self, *, extra_config: str = "", port: int | None = None,
                 executable: str | None = None, start_timeout: float = 20.0) -> None:
        super().__init__(executable=executable or _find_executable("nats-server", ()),
                         port=port, start_timeout=start_timeout, extra_config=extra_config)
        self._client_port: int | None = None
        self.server_name = f"isa-test-{uuid.uuid4().hex[:10]}"

    @property
    def config_path(self) -> Path:
        """The config file nats-server is started with."""
        return self._dir / "nats.conf"

    def _launch(self) -> None:
        mqtt_port = self._port if self._port is not None else -1
        client_port = self._client_port if self._client_port is not None else -1
        store = self._dir / "jetstream"
        self.config_path.write_text(
            f"server_name: {self.server_name}\n"
            f"listen: {_LOOPBACK}:{client_port}\n"
            f'jetstream {{ store_dir: "{store}", max_memory_store: 268435456, '
            "max_file_store: 1073741824 }\n"
            f"mqtt {{ listen: {_LOOPBACK}:{mqtt_port} }}\n{self._extra_config}\n")
        started_at = self.output_path.stat().st_size if self.output_path.exists() else 0
        self._spawn([self._executable, "-c", str(self.config_path)])
        self._await_ready(self._learn_ports, started_at)

    def _learn_ports(self, text: str) -> bool:
        mqtt, client = _NATS_MQTT_READY.search(text), _NATS_CLIENT_READY.search(text)
        if mqtt is None or client is None or "Server is ready" not in text:
            return False
        self._port, self._client_port = int(mqtt.group(1)), int(client.group(1))
        return True


# -- pytest fixtures ----------------------------------------------------------------------


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
