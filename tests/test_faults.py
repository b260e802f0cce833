"""Network faults between the client and a real Mosquitto: cut, black hole, slow link, refusal.

A :class:`FaultProxy` sits between the library and a private broker; an independent raw paho
subscriber with a persistent session is connected straight to the broker and shows what
really arrived. Every blocking call must return or raise a typed error within a bound.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from isa_common_mqtt import (
    BrokerUnavailableError,
    MQTTClient,
    MQTTTimeoutError,
    PublishTimeoutError,
)
from isa_common_mqtt.testing import MosquittoFactory, MosquittoProcess

from .conftest import WAIT, Recorder, eventually
from .faultproxy import FaultProxy

SLACK = 5.0
"""Generous allowance on top of a configured timeout before a call counts as hung."""


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> MosquittoProcess:
    return mosquitto_factory()


@pytest.fixture
def proxy(broker: MosquittoProcess) -> Iterator[FaultProxy]:
    with FaultProxy(broker.host, broker.port) as p:
        yield p


@pytest.fixture
def topic() -> str:
    return f"faults/{uuid.uuid4().hex}"


@pytest.fixture
def recorder(broker: MosquittoProcess, topic: str) -> Iterator[Recorder]:
    """Raw paho subscriber straight on the broker (no proxy), persistent session, QoS 2."""
    rec = Recorder(broker.host, broker.port, f"{topic}/#", qos=2,
                   client_id=f"rec-{uuid.uuid4().hex[:10]}", clean_session=False)
    yield rec
    rec.close()


def through(proxy: FaultProxy, **options: object) -> MQTTClient:
    """A client that reaches the broker only through ``proxy``."""
    settings: dict[str, object] = {"connect_timeout": 2.0, "publish_timeout": 2.0,
                                   "request_timeout": 2.0, "reconnect_max_delay": 0.5}
    settings.update(options)
    return MQTTClient(host=proxy.host, port=proxy.port, user_id="faults", **settings)


def connected(client: MQTTClient, session_id: str) -> bool:
    return bool(client.get_connection_status(session_id)["connected"])


@dataclass
class PublishRun:
    """A thread publishing ``count`` numbered messages in sequence."""

    count: int
    accepted: list[bytes] = field(default_factory=list)
    """Payloads whose publish returned or raised PublishTimeoutError (still queued)."""
    timeouts: int = 0
    unexpected: list[BaseException] = field(default_factory=list)
    progress: threading.Condition = field(default_factory=threading.Condition)
    finished: threading.Event = field(default_factory=threading.Event)

    def start(self, client: MQTTClient, session_id: str, topic: str, qos: int) -> None:
        threading.Thread(target=self._run, args=(client, session_id, topic, qos),
                         daemon=True).start()

    def _run(self, client: MQTTClient, session_id: str, topic: str, qos: int) -> None:
        try:
            for i in range(self.count):
                payload = f"m{i:05d}".encode()
                try:
                    client.publish(session_id, topic, payload, qos=qos)
                except PublishTimeoutError:
                    self.timeouts += 1
                except Exception as exc:  # recorded, the test fails on it
                    self.unexpected.append(exc)
                    return
                with self.progress:
                    self.accepted.append(payload)
                    self.progress.notify_all()
        finally:
            self.finished.set()

    def wait_accepted(self, n: int) -> bool:
        with self.progress:
            return self.progress.wait_for(lambda: len(self.accepted) >= n or
                                          self.finished.is_set(), 60)


# == the proxy itself ======================================================================

@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A loopback TCP echo server (one thread per connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield "127.0.0.1", listener.getsockname()[1]
    stop.set()
    listener.close()


def _recv_some(sock: socket.socket, timeout: float) -> bytes | None:
    """What arrives within ``timeout`` (b"" on EOF), or None when nothing did."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


def test_proxy_forwards_stalls_slows_cuts_and_refuses(echo_server: tuple[str, int]) -> None:
    with FaultProxy(*echo_server) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=WAIT) as sock:
            sock.sendall(b"hello")
            assert _recv_some(sock, WAIT) == b"hello"
            proxy.stall()
            sock.sendall(b"held")
            assert _recv_some(sock, 0.5) is None  # black hole: nothing either way
            proxy.resume()
            assert _recv_some(sock, WAIT) == b"held"
            proxy.slow(3.0)
            sock.sendall(b"late")
            assert _recv_some(sock, 0.2) is None
            proxy.slow(0)
            assert _recv_some(sock, WAIT) == b"late"
            assert proxy.open_connections == 1
            proxy.cut()
            assert _recv_some(sock, WAIT) == b""
            assert proxy.open_connections == 0
        proxy.refuse()
        with socket.create_connection((proxy.host, proxy.port), timeout=WAIT) as sock:
            assert _recv_some(sock, WAIT) == b""
        assert proxy.refused == 1
        proxy.heal()
        with socket.create_connection((proxy.host, proxy.port), timeout=WAIT) as sock:
            sock.sendall(b"again")
            assert _recv_some(sock, WAIT) == b"again"
    assert proxy.open_connections == 0


# == the library behind the proxy ==========================================================

def run_with_cuts(proxy: FaultProxy, recorder: Recorder, topic: str, qos: int,
                  cut_after: tuple[int, ...], count: int = 150) -> None:
    """Publish ``count`` messages through the proxy, cutting every connection after each
    number of accepted messages in ``cut_after``; check that none was lost and that the
    subscriptions come back."""
    client = through(proxy)
    echoed = threading.Event()

    def on_echo(t: str, payload: bytes, q: int, retained: bool, ts: float) -> None:
        if payload == b"after the cuts":
            echoed.set()

    sub = client.connect(f"sub-{uuid.uuid4().hex[:8]}")["session_id"]
    client.subscribe(sub, f"{topic}/echo", qos=1, callback=on_echo)
    pub = client.connect(f"pub-{uuid.uuid4().hex[:8]}")["session_id"]
    run = PublishRun(count=count)
    run.start(client, pub, f"{topic}/data", qos)
    for threshold in cut_after:
        assert run.wait_accepted(threshold), "publishing stalled"
        proxy.cut()
    assert run.finished.wait(120), "the publishing thread hung"
    assert run.unexpected == []
    assert len(run.accepted) == run.count

    wanted = set(run.accepted)
    assert eventually(lambda: wanted <= {m.payload for m in recorder.messages}, 30), \
        f"lost: {sorted(wanted - {m.payload for m in recorder.messages})[:10]}"
    received = [m.payload for m in recorder.messages if m.payload in wanted]
    print(f"\ncuts={len(cut_after)} qos={qos} sent={len(wanted)} "
          f"received={len(received)} duplicates={len(received) - len(set(received))} "
          f"publish timeouts={run.timeouts}")
    assert eventually(lambda: connected(client, sub) and connected(client, pub))
    client.publish(pub, f"{topic}/echo", b"after the cuts", qos=1)
    assert echoed.wait(WAIT), "the subscription was not restored after the cuts"
    assert client.list_subscriptions(sub) == [{"topic_filter": f"{topic}/echo", "qos": 1}]
    assert client.get_connection_status(pub)["reconnects"] >= len(cut_after)
    client.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_cuts_lose_no_accepted_message_and_subscriptions_come_back(
        proxy: FaultProxy, recorder: Recorder, topic: str, qos: int) -> None:
    run_with_cuts(proxy, recorder, topic, qos, cut_after=(40, 100))


def test_flapping_link_never_stops_the_session(proxy: FaultProxy, recorder: Recorder,
                                               topic: str) -> None:
    """Four cuts within a few seconds (a flapping Wi-Fi or mobile link): the session must
    keep reconnecting and deliver everything it accepted, not give up for good."""
    run_with_cuts(proxy, recorder, topic, 1, cut_after=(25, 55, 85, 115))


def test_black_hole_times_out_publish_and_subscribe_then_heals(
        proxy: FaultProxy, recorder: Recorder, topic: str) -> None:
    client = through(proxy, publish_timeout=1.0, request_timeout=1.0)
    sid = client.connect(f"hole-{uuid.uuid4().hex[:8]}")["session_id"]
    client.publish(sid, f"{topic}/x", b"before", qos=1)
    proxy.stall()

    started = time.monotonic()
    with pytest.raises(PublishTimeoutError, match="stay queued"):
        client.publish(sid, f"{topic}/x", b"during", qos=1)
    assert time.monotonic() - started < 1.0 + SLACK
    started = time.monotonic()
    with pytest.raises(MQTTTimeoutError, match="SUBACK"):
        client.subscribe(sid, f"{topic}/late", qos=1)
    assert time.monotonic() - started < 1.0 + SLACK

    proxy.resume()
    client.publish(sid, f"{topic}/x", b"after", qos=1)
    payloads = [m.payload for m in recorder.wait_for(3)]
    assert payloads == [b"before", b"during", b"after"]  # queued one delivered, in order
    assert client.get_connection_status(sid)["pending_messages"] == 0
    client.close()


@pytest.mark.parametrize("fault", ["stall", "refuse", "slow"])
def test_connect_through_a_fault_fails_typed_within_connect_timeout(
        proxy: FaultProxy, fault: str) -> None:
    if fault == "stall":
        proxy.stall()
    elif fault == "refuse":
        proxy.refuse()
    else:
        proxy.slow(30.0)
    client = through(proxy, connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as caught:
        client.connect(f"doomed-{uuid.uuid4().hex[:8]}")
    assert time.monotonic() - started < 2.0 + SLACK
    assert isinstance(caught.value, ConnectionError)
    assert f"{proxy.host}:{proxy.port}" in str(caught.value)
    assert (caught.value.host, caught.value.port) == (proxy.host, proxy.port)
    proxy.heal()
    sid = client.connect(f"healed-{uuid.uuid4().hex[:8]}")["session_id"]
    assert client.publish(sid, "faults/healed", b"ok", qos=1)["success"] is True
    client.close()


def test_refused_connect_does_not_stop_mqtt5_later(proxy: FaultProxy,
                                                   broker: MosquittoProcess) -> None:
    """A broker that closes connections for a moment must not be taken for one that cannot
    speak MQTT 5: later sessions to the same address still get MQTT 5."""
    proxy.refuse()
    client = through(proxy, connect_timeout=1.0)
    with pytest.raises(BrokerUnavailableError):
        client.connect(f"refused-{uuid.uuid4().hex[:8]}")
    proxy.heal()
    assert client.connect(f"later-{uuid.uuid4().hex[:8]}")["protocol"] == "5"
    client.close()


def test_slow_link_times_out_then_delivers(proxy: FaultProxy, recorder: Recorder,
                                           topic: str) -> None:
    client = through(proxy, publish_timeout=0.5)
    sid = client.connect(f"slow-{uuid.uuid4().hex[:8]}")["session_id"]
    proxy.slow(0.1)  # slower than usual, well within the timeout: all fine
    client.publish(sid, f"{topic}/x", b"a bit slow", qos=2)
    proxy.slow(3.0)
    with pytest.raises(PublishTimeoutError):
        client.publish(sid, f"{topic}/x", b"too slow", qos=1)
    proxy.slow(0)
    assert [m.payload for m in recorder.wait_for(2)] == [b"a bit slow", b"too slow"]
    client.publish(sid, f"{topic}/x", b"normal", qos=1)
    assert [m.payload for m in recorder.wait_for(3)][-1] == b"normal"
    client.close()


def test_keepalive_notices_a_black_hole_and_recovers(proxy: FaultProxy, recorder: Recorder,
                                                     topic: str) -> None:
    client = through(proxy, keep_alive=2)
    got: list[bytes] = []
    back = threading.Event()

    def on_message(t: str, payload: bytes, q: int, retained: bool, ts: float) -> None:
        got.append(payload)
        if payload == b"after":
            back.set()

    sid = client.connect(f"ka-{uuid.uuid4().hex[:8]}")["session_id"]
    client.subscribe(sid, f"{topic}/in", qos=1, callback=on_message)
    assert connected(client, sid)
    proxy.stall()
    # The session gives up after 1.5x keep_alive without a byte from the broker (checked
    # every keep_alive/8, at least 0.25 s): about 3-4 s at keep_alive=2; 10 s is generous.
    assert eventually(lambda: not connected(client, sid), 10.0), "black hole not detected"
    proxy.cut()  # the dead connection is gone; the reconnect goes through a clean proxy
    proxy.resume()
    assert eventually(lambda: connected(client, sid), 15.0), "did not reconnect"
    client.publish(sid, f"{topic}/in", b"after", qos=1)
    assert back.wait(WAIT), "subscription not restored after the black hole"
    client.close()


def test_a_silent_reconnect_attempt_is_abandoned_after_connect_timeout(
        proxy: FaultProxy) -> None:
    """A reconnect that reaches a socket but gets no CONNACK (a hung broker, a load balancer
    with a dead backend) is given up after connect_timeout and tried again; it must not wait
    for keep_alive (60 s by default) before the next attempt."""
    client = through(proxy, connect_timeout=1.0)
    sid = client.connect(f"silent-{uuid.uuid4().hex[:8]}")["session_id"]
    proxy.stall()
    proxy.cut()  # the session sees the loss at once; its reconnects land in the black hole
    assert eventually(lambda: client.get_connection_status(sid)["reconnects"] >= 3, 15.0), \
        "a reconnect attempt without CONNACK was not abandoned after connect_timeout"
    proxy.heal()
    assert eventually(lambda: connected(client, sid), 15.0)
    client.close()
