"""Broker processes for tests: RabbitMQ and NATS started privately on free loopback ports,
and the helpers every broker process shares. Public names are re-exported by
:mod:`isa_common_mqtt.testing`."""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

logger = logging.getLogger("isa_common_mqtt.testing")

PORT_IN_USE = ("eaddrinuse", "address already in use", "already_used", "could not bind")
LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 40
PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class BrokerAddress:
    """Where a test broker listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def read_from(path: Path, offset: int) -> str:
    """The text of ``path`` after byte ``offset`` ("" while the file does not exist)."""
    try:
        return path.read_bytes()[offset:].decode(errors="replace")
    except FileNotFoundError:
        return ""


def accepts_tcp(host: str, port: int) -> bool:
    """Tell whether ``host:port`` accepts a TCP connection right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_ENGINE_START_TIMEOUT = 60.0  # a RabbitMQ node boots in ~10-20 s on a loaded 2-core machine

_EPMD_PATHS = ("/usr/lib/erlang/bin/epmd", "/usr/local/lib/erlang/bin/epmd")

_RABBITMQ_PATHS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/local/sbin/rabbitmq-server")

_RABBITMQ_READY = r"started MQTT TCP listener on 127\.0\.0\.1:{port}\b"

_NATS_CLIENT_READY = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")

_NATS_MQTT_READY = re.compile(r"Listening for MQTT clients on mqtt://127\.0\.0\.1:(\d+)")


def _find_executable(name: str, paths: tuple[str, ...]) -> str | None:
    """``paths`` first (they beat a distro wrapper on PATH), then ``name`` on PATH."""
    found = next((p for p in paths if os.access(p, os.X_OK)), None)
    return found or shutil.which(name)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open until every one is chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
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


class EngineProcess:
    """What every private broker shares (Mosquitto, RabbitMQ, NATS): a temp dir, one MQTT
    port on loopback kept across restarts, a process group stopped cleanly or killed."""

    _name = "broker"
    _install_hint = ""
    _stop_timeout = 30.0

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
        return LOOPBACK

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
        return read_from(self.output_path, 0)

    def start(self) -> None:
        """Start the broker and wait (bounded) until an MQTT 3.1.1 CONNECT gets a CONNACK."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        if self.running:
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            started = time.monotonic()
            try:
                self._launch()
            except RuntimeError as exc:
                # Ports are chosen once, at the first successful start, and kept afterwards.
                retry = not self._fixed_port and self.boot_seconds is None
                if attempt == PORT_ATTEMPTS or not retry \
                        or not any(marker in str(exc).lower() for marker in PORT_IN_USE):
                    raise
                logger.info("a port of %s was taken before it bound it; trying others",
                            self._name)
                continue
            self.boot_seconds = time.monotonic() - started
            logger.info("%s listening on %s:%d after %.1f s", self._name, LOOPBACK, self.port,
                        self.boot_seconds)
            return

    def stop(self) -> None:
        """Stop with SIGTERM (a clean shutdown) and wait; kill what is left after a bound."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self._name,
                               self._stop_timeout)
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
            if ready(read_from(self.output_path, started_at)) and self._port is not None \
                    and _mqtt_handshake(LOOPBACK, self._port, min(left, 5.0)):
                return
            time.sleep(0.05)
        self._proc = None
        self._kill_group(proc)
        self._after_stop()
        raise RuntimeError(self._failure(f"exited with code {proc.returncode}",
                                         started_at))

    def _failure(self, what: str, started_at: int = 0) -> str:
        lines = read_from(self.output_path, started_at).splitlines()
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        return f"{self._name} {what} (MQTT port {self._port}); dir {self._dir}; log tail:\n{tail}"

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_Engine = TypeVar("_Engine", bound=EngineProcess)


class RabbitMQProcess(EngineProcess):
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
            *self._side_ports, mqtt_port = free_ports(4)
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
        lines = [f"listeners.tcp.default = {LOOPBACK}:{amqp_port}",
                 f"mqtt.listeners.tcp.default = {LOOPBACK}:{self._port}",
                 "mqtt.allow_anonymous = true", "mqtt.default_user = guest",
                 "mqtt.default_pass = guest", "loopback_users = none",
                 "disk_free_limit.absolute = 10MB", self._extra_config]
        (self._dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _environment(self, epmd_port: int, amqp_port: int, dist_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self._dir
        env.update(HOME=str(d), ERL_EPMD_PORT=str(epmd_port), ERL_EPMD_ADDRESS=LOOPBACK,
                   RABBITMQ_NODENAME=self.node_name, RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
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
                [self._epmd_path, "-port", str(port), "-address", LOOPBACK],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=self._dir, start_new_session=True)
        deadline = time.monotonic() + 5.0
        while not accepts_tcp(LOOPBACK, port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                self._after_stop()
                raise RuntimeError(f"rabbitmq: epmd did not start on port {port} "
                                   "(eaddrinuse?); see epmd.log in " + str(self._dir))
            time.sleep(0.02)

    def _after_stop(self) -> None:
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            self._kill_group(epmd)


class NatsProcess(EngineProcess):
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
            f"listen: {LOOPBACK}:{client_port}\n"
            f'jetstream {{ store_dir: "{store}", max_memory_store: 268435456, '
            "max_file_store: 1073741824 }\n"
            f"mqtt {{ listen: {LOOPBACK}:{mqtt_port} }}\n{self._extra_config}\n")
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
