"""Our paho subclass must put exactly paho's bytes on the wire and read them back the same,
only with fewer objects and system calls. A socketpair stands in for the connection in the
encoding and buffering checks; the TCP connect is checked against Mosquitto."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isa_common_mqtt._paho import PahoClient, remaining_length
from isa_common_mqtt.testing import BrokerAddress


@pytest.fixture(params=[paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5"])
def wired(request: pytest.FixtureRequest) -> Iterator[tuple[PahoClient, socket.socket]]:
    """A client whose socket is one end of a socketpair; the test holds the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    client = PahoClient(CallbackAPIVersion.VERSION2, client_id="wired",
                        protocol=request.param)
    client._sock = ours
    client.max_inflight_messages_set(0)
    yield client, theirs
    ours.close()
    theirs.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "peer closed"
        data += chunk
    return data


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def testremaining_length_matches_the_spec_encoding(length: int) -> None:
    expected = bytearray()
    paho.Client(CallbackAPIVersion.VERSION2)._pack_remaining_length(expected, length)
    assert remaining_length(length) == bytes(expected)


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("topic,payload", [("a/b", b"x"), ("t" * 300, b"p" * 20_000),
                                           ("é/ü", b""), ("$registry/o/00/device/d", b"\x00")],
                         ids=["short", "long", "utf8-empty", "registry"])
def test_enqueued_publish_is_byte_identical_to_paho(
        wired: tuple[PahoClient, socket.socket], qos: int, retain: bool, topic: str,
        payload: bytes) -> None:
    client, peer = wired
    mid = client.enqueue_publish(topic.encode(), payload, qos, retain)
    client.loop_write()
    ours = read_exactly(peer, len(client_packet := _paho_packet(client, mid, topic, payload,
                                                                 qos, retain)))
    assert ours == client_packet


def _paho_packet(client: PahoClient, mid: int, topic: str, payload: bytes, qos: int,
                 retain: bool) -> bytes:
    """What paho's own encoder makes of the same message."""
    reference = paho.Client(CallbackAPIVersion.VERSION2, protocol=client._protocol)
    captured: list[bytes] = []
    reference._sock = object()  # type: ignore[assignment]
    reference._packet_queue = lambda cmd, packet, *a, **k: captured.append(bytes(packet))  # type: ignore[method-assign]
    reference._send_publish(mid, topic.encode(), payload, qos, retain)
    reference._sock = None
    return captured[0]


def test_a_batch_is_written_in_order_with_few_sends(
        wired: tuple[PahoClient, socket.socket]) -> None:
    client, peer = wired
    sends = 0
    real_send = client._sock_send

    def counting_send(buf: bytes | bytearray) -> int:
        nonlocal sends
        sends += 1
        return real_send(buf)

    client._sock_send = counting_send  # type: ignore[method-assign]
    written: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: written.append(mid)
    mids = [client.enqueue_publish(b"t", struct.pack("!I", i), 0, False) for i in range(500)]
    client.loop_write()
    size = 500 * (2 + 2 + 1 + 4 + (1 if client._protocol == paho.MQTTv5 else 0))
    stream = read_exactly(peer, size)
    assert written == mids  # QoS 0 counts as done once written, in order
    assert sends < 5
    step = size // 500
    assert [struct.unpack("!I", stream[i + step - 4:i + step])[0]
            for i in range(0, size, step)] == list(range(500))


def test_a_full_socket_keeps_the_rest_queued_without_loss(
        wired: tuple[PahoClient, socket.socket]) -> None:
    client, peer = wired
    payload = b"z" * 1000
    for i in range(2000):
        client.enqueue_publish(f"t/{i:04d}".encode(), payload, 1, False)
    received = b""
    while client.want_write():
        client.loop_write()
        peer.setblocking(False)
        try:
            while True:
                chunk = peer.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        except BlockingIOError:
            pass
    peer.setblocking(True)
    expected = b"".join(_paho_packet(client, mid, f"t/{i:04d}", payload, 1, False)
                        for i, mid in enumerate(range(1, 2001)))
    received += read_exactly(peer, len(expected) - len(received)) if len(received) < len(
        expected) else b""
    assert received == expected


def test_acknowledgements_are_read_in_bulk_and_each_reported(
        wired: tuple[PahoClient, socket.socket]) -> None:
    client, peer = wired
    acked: list[tuple[int, int]] = []
    client.on_publish = lambda c, u, mid, rc, props: acked.append((mid, rc.value))
    mids = [client.enqueue_publish(b"t", b"p", 1, False) for _ in range(300)]
    client.loop_write()
    read_exactly(peer, 300 * (2 + 1 + 2 + 2 + (1 if client._protocol == paho.MQTTv5 else 0)))
    peer.sendall(b"".join(struct.pack("!BBH", 0x40, 2, mid) for mid in mids))
    reads = 0
    while len(acked) < 300 and reads < 1000:
        client.loop_read()
        reads += 1
        while client.buffered():
            client.loop_read()
    assert acked == [(mid, 0) for mid in mids]
    assert not client._out_messages  # nothing left to resend after a reconnect


def test_a_v5_refused_publish_reports_its_reason_code() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = PahoClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client._sock = ours
    client.max_inflight_messages_set(0)
    codes: list[int] = []
    client.on_publish = lambda c, u, mid, rc, props: codes.append(rc.value)
    mid = client.enqueue_publish(b"denied", b"p", 1, False)
    client.loop_write()
    theirs.sendall(struct.pack("!BBHB", 0x40, 3, mid, 0x87))  # PUBACK: not authorized
    while not codes:
        client.loop_read()
    assert codes == [0x87]
    ours.close()
    theirs.close()


def test_messages_queued_while_disconnected_are_kept_for_the_resend() -> None:
    client = PahoClient(CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(0)
    mid = client.enqueue_publish(b"later", b"p", 1, False)
    assert not client.want_write()  # nothing goes to a socket that is not there
    message = client._out_messages[mid]
    assert message.state == paho.mqtt_ms_publish  # what paho resends after CONNACK
    assert (message.topic, message.payload, message.qos) == ("later", b"p", 1)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_incoming_publishes_are_parsed_as_paho_would(
        wired: tuple[PahoClient, socket.socket], qos: int) -> None:
    """Including MQTT 5 properties, which are skipped, and the QoS 1 and 2 answers."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client, peer = wired
    got: list[tuple[str, bytes, int, bool]] = []
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos, m.retain))
    reference = paho.Client(CallbackAPIVersion.VERSION2, protocol=client._protocol)
    captured: list[bytes] = []
    reference._sock = object()  # type: ignore[assignment]
    reference._packet_queue = lambda cmd, packet, *a, **k: captured.append(bytes(packet))  # type: ignore[method-assign]
    properties = None
    if client._protocol == paho.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = ("k", "v" * 200)  # long enough for a 2-byte length
        properties.ContentType = "text/plain"
    reference._send_publish(7, "in/é".encode(), b"payload", qos, True, False, None, properties)
    reference._sock = None
    peer.sendall(captured[0])
    while not got and not client._in_messages:
        client.loop_read()
    if qos == 2:
        assert read_exactly(peer, 4) == struct.pack("!BBH", 0x50, 2, 7)  # PUBREC
        peer.sendall(struct.pack("!BBH", 0x62, 2, 7))  # PUBREL
        while not got:
            client.loop_read()
        client.loop_write()
        assert read_exactly(peer, 4) == struct.pack("!BBH", 0x70, 2, 7)  # PUBCOMP
    elif qos == 1:
        client.loop_write()
        assert read_exactly(peer, 4) == struct.pack("!BBH", 0x40, 2, 7)  # PUBACK
    assert got == [("in/é", b"payload", qos, True)]


def test_message_ids_still_outstanding_are_skipped_after_the_wrap() -> None:
    client = PahoClient(CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(0)
    held = [client.enqueue_publish(b"t", b"p", 1, False) for _ in range(3)]
    assert held == [1, 2, 3]
    client.mid_in_use = lambda mid: mid == 4  # e.g. a QoS 0 packet not yet written
    client._last_mid = 65_534
    assert [client.enqueue_publish(b"t", b"p", 1, False) for _ in range(2)] == [65_535, 5]


@pytest.mark.parametrize("flags,session_present", [(0, False), (1, True)])
def test_an_accepted_311_connack_is_reported_as_paho_reports_it(
        flags: int, session_present: bool) -> None:
    """Our lean path for the common CONNACK gives on_connect what paho's own handler gives."""
    reports = []
    for cls in (paho.Client, PahoClient):
        ours, theirs = socket.socketpair()
        client = cls(CallbackAPIVersion.VERSION2, client_id="c", protocol=paho.MQTTv311)
        client.on_connect = lambda c, u, f, reason, props: reports.append(
            (f.session_present, reason.value, str(reason), c.is_connected()))
        client._sock = ours
        theirs.sendall(bytes((0x20, 2, flags, 0)))
        client.loop_read()
        ours.close()
        theirs.close()
    assert reports[0] == reports[1] == (session_present, 0, "Success", True)


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5"])
def test_a_refused_connack_still_goes_through_paho(protocol: int) -> None:
    ours, theirs = socket.socketpair()
    client = PahoClient(CallbackAPIVersion.VERSION2, client_id="c", protocol=protocol)
    reasons = []
    client.on_connect = lambda c, u, f, reason, props: reasons.append(reason.value)
    client._sock = ours
    theirs.sendall(bytes((0x20, 2, 0, 5)) if protocol == paho.MQTTv311
                   else bytes((0x20, 3, 0, 0x87, 0)))
    client.loop_read()
    assert reasons == [135]  # 3.1.1 "not authorized" is reported as v5's 0x87, as paho does
    assert not client.is_connected()
    ours.close()
    theirs.close()


def test_a_client_with_a_source_address_still_binds_to_it(mqtt_broker: BrokerAddress) -> None:
    """Only paho's needless bind(("", 0)) is skipped: an asked-for source address is used."""
    client = PahoClient(CallbackAPIVersion.VERSION2, client_id="bound-source",
                        protocol=paho.MQTTv311)
    client.connect(mqtt_broker.host, mqtt_broker.port, bind_address="127.0.0.1", bind_port=0)
    sock = client.socket()
    assert sock is not None and sock.getsockname()[0] == "127.0.0.1"
    client._sock_close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_address_literals_and_host_names_both_connect(mqtt_broker: BrokerAddress,
                                                      host: str) -> None:
    client = PahoClient(CallbackAPIVersion.VERSION2, client_id=f"by-{host}",
                        protocol=paho.MQTTv311)
    client.connect(host, mqtt_broker.port)
    sock = client.socket()
    assert sock is not None and sock.getpeername()[1] == mqtt_broker.port
    client._sock_close()
