"""What we change in paho-mqtt, in one place: a ``paho.Client`` subclass for throughput.

paho 2.x spends most of a pipelined publish on per-message work the session layer does not
need: a ``Condition`` per message (``MQTTMessageInfo``), topic re-validation, one
``send()`` per packet and three ``recv()`` per acknowledgement. This subclass

- ``enqueue_publish``: builds a PUBLISH packet for an already validated topic and queues
  it without the wake-up and write hook, so a batch is written in one go;
- coalesces queued packets into few ``send()`` calls (``_packet_write``);
- connects without paho's needless ``bind()`` (``_create_socket_connection``);
- handles an accepted 3.1.1 CONNACK without paho's per-packet objects (``_handle_connack``);
- reads the socket in 64 KiB chunks and serves paho's small reads from that buffer
  (``_sock_recv``), acknowledging each read at once (TCP_QUICKACK); ``buffered()`` tells
  the loop to keep reading.

Everything else (CONNECT, acknowledgements, resends after a reconnect, QoS 2 flows) stays
paho's own code. The overridden methods are private paho API, so the dependency is pinned
to paho-mqtt 2.x and ``tests/test_paho.py`` checks the behaviour they rely on.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Literal, cast

import paho.mqtt.client as paho
from paho.mqtt.client import CallbackOnConnect_v2, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_PUBLISH = int(paho.PUBLISH)
_DISCONNECT = int(paho.DISCONNECT)
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
WRITE_CHUNK = 256 * 1024
READ_CHUNK = 64 * 1024


class _SharedInfo(MQTTMessageInfo):
    """One message-info for every fast publish: completion is tracked by the session."""

    __slots__ = ()

    def _set_as_published(self) -> None:
        pass


_INFO = _SharedInfo(0)
_WRITTEN = ReasonCode(PacketTypes.PUBACK)
"""Reason given to on_publish for a QoS 0 message: written to the socket."""


_ACCEPTED = ReasonCode(PacketTypes.CONNACK, identifier=0)
_NO_PROPERTIES = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
_REASONS: dict[int, ReasonCode] = {}


def _reason(code: int) -> ReasonCode:
    """A shared ReasonCode per PUBACK/PUBCOMP code (they are immutable in practice)."""
    reason = _REASONS.get(code)
    if reason is None:
        reason = _REASONS[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
    return reason


def remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _ip_family(host: str) -> socket.AddressFamily | None:
    """The address family of an IP address literal; None for a host name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family
        except OSError:
            continue
    return None


class PahoClient(paho.Client):
    """paho's client with a lean publish path and batched socket I/O (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self.last_recv = time.monotonic()
        """When bytes last arrived (paho resets its own clock when it sends a ping)."""
        self.mid_in_use: Callable[[int], bool] = lambda mid: False
        """Whether the session still waits on ``mid`` (QoS 0 not yet written)."""

    def _create_socket_connection(self) -> socket.socket:
        """paho's TCP connect, without its ``bind(("", 0))`` when no source address is set.

        That bind must find a port no socket holds, TIME_WAIT ones included: with thousands
        of recent connections it costs milliseconds per connect and can fail with
        EADDRINUSE, where a plain ``connect()`` picks a free 4-tuple cheaply.
        """
        if self._bind_address or self._bind_port or self._get_proxy():
            return super()._create_socket_connection()
        family = _ip_family(self._host)
        if family is None:
            return socket.create_connection((self._host, self._port),
                                            timeout=self._connect_timeout)
        sock = socket.socket(family, socket.SOCK_STREAM)  # an address: no resolver round
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect((self._host, self._port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _handle_connack(self) -> MQTTErrorCode:
        """paho's, without the objects it builds per CONNACK, in the common case: MQTT 3.1.1,
        accepted, nothing to resend (anything else goes through paho's own code)."""
        packet = self._in_packet["packet"]
        if self._protocol != paho.MQTTv311 or len(packet) != 2 or packet[1] != 0 \
                or self._out_messages:
            return super()._handle_connack()
        self._state = paho._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]
        self._reconnect_delay = None
        self._mqttv5_first_connect = False
        on_connect = cast(CallbackOnConnect_v2 | None, self._on_connect)
        if on_connect is not None:
            with self._in_callback_mutex:
                on_connect(self, self._userdata, paho.ConnectFlags(bool(packet[0] & 1)),
                           _ACCEPTED, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _ssl_wrap_socket(self, tcp_sock: Any) -> Any:
        """paho's TLS handshake, but the socket is closed when the handshake fails."""
        context = self._ssl_context
        assert context is not None
        ssl_sock = context.wrap_socket(tcp_sock, server_hostname=self._host,
                                       do_handshake_on_connect=False)
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock

    # -- publishing ---------------------------------------------------------------------
    def enqueue_publish(self, topic: bytes, payload: bytes, qos: int, retain: bool) -> int:
        """Queue a PUBLISH (topic already validated) without writing; return its mid.

        Like ``publish()`` with an unlimited in-flight window: a QoS>0 message is kept in
        ``_out_messages`` so paho resends it after a reconnect. The caller flushes with
        ``loop_write()``; while disconnected nothing is queued on the socket.
        """
        mid = self._mid_generate()
        while mid in self._out_messages or self.mid_in_use(mid):
            mid = self._mid_generate()  # never reuse an id still outstanding (wrap at 65535)
        v5 = self._protocol == paho.MQTTv5
        head = 2 + len(topic) + (2 if qos else 0) + (1 if v5 else 0)
        packet = b"".join((
            bytes((_PUBLISH | (qos << 1) | retain,)), remaining_length(head + len(payload)),
            struct.pack("!H", len(topic)), topic,
            struct.pack("!H", mid) if qos else b"", b"\x00" if v5 else b"", payload))
        connected = self._sock is not None
        if qos:
            message = MQTTMessage.__new__(MQTTMessage)
            message.mid, message._topic, message.payload = mid, topic, payload
            message.qos, message.retain, message.dup = qos, retain, False
            message.timestamp, message.info, message.properties = time.monotonic(), _INFO, None
            with self._out_message_mutex:
                self._out_messages[mid] = message
                if connected:
                    self._inflight_messages += 1
                    message.state = (paho.mqtt_ms_wait_for_puback if qos == 1
                                     else paho.mqtt_ms_wait_for_pubrec)
                else:
                    message.state = paho.mqtt_ms_publish  # sent after the reconnect
        if connected:
            self._out_packet.append({"command": _PUBLISH, "mid": mid, "qos": qos, "pos": 0,
                                     "to_process": len(packet), "packet": packet,
                                     "info": _INFO})
        return mid

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        """PUBACK/PUBCOMP without paho's per-ack Properties objects (most of its cost)."""
        packet = self._in_packet["packet"]
        if len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[0] << 8) | packet[1]
        code = packet[2] if len(packet) > 2 and self._protocol == paho.MQTTv5 else 0
        with self._out_message_mutex:
            message = self._out_messages.pop(mid, None)
            if message is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # a duplicate acknowledgement
            self._inflight_messages -= 1
        return self._report(mid, code)

    def _report(self, mid: int, code: int) -> MQTTErrorCode:
        """Tell on_publish that the flow of ``mid`` ended with ``code``."""
        on_publish = self.on_publish
        if on_publish is not None:
            on_publish(self, self._userdata, mid, _reason(code), None)  # type: ignore[call-arg,arg-type]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubrec(self) -> MQTTErrorCode:
        """PUBREC without Properties objects; a v5 refusal (code >= 0x80) ends the flow."""
        packet = self._in_packet["packet"]
        if len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[0] << 8) | packet[1]
        code = packet[2] if len(packet) > 2 and self._protocol == paho.MQTTv5 else 0
        with self._out_message_mutex:
            message = self._out_messages.get(mid)
            if message is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if code < 0x80:
                message.state = paho.mqtt_ms_wait_for_pubcomp
                message.timestamp = time.monotonic()
                return self._send_pubrel(mid)
            del self._out_messages[mid]
            self._inflight_messages -= 1
        return self._report(mid, code)

    def _handle_publish(self) -> MQTTErrorCode:
        """An incoming PUBLISH without paho's Properties and Condition objects per message.

        MQTT 5 properties of incoming messages are skipped (the API does not expose them).
        """
        command = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        if qos == 3 or len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        end = 2 + ((packet[0] << 8) | packet[1])
        message = MQTTMessage.__new__(MQTTMessage)
        message._topic = bytes(packet[2:end])
        message.mid = 0
        if qos:
            message.mid = (packet[end] << 8) | packet[end + 1]
            end += 2
        if self._protocol == paho.MQTTv5:
            length, shift = 0, 0
            while True:  # variable byte integer: length of the properties
                byte = packet[end]
                end += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            end += length
        message.payload = bytes(packet[end:])
        message.qos, message.retain, message.dup = qos, bool(command & 1), bool(command & 8)
        message.timestamp, message.info, message.properties = time.monotonic(), _INFO, None
        message.state = paho.mqtt_ms_invalid
        if qos == 2:
            rc = self._send_pubrec(message.mid)
            message.state = paho.mqtt_ms_wait_for_pubrel
            with self._in_message_mutex:
                self._in_messages[message.mid] = message
            return rc
        on_message = self.on_message
        if on_message is not None:
            on_message(self, self._userdata, message)
        return self._send_puback(message.mid) if qos == 1 else MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- socket I/O -----------------------------------------------------------------------
    def _packet_write(self) -> MQTTErrorCode:
        """Write queued packets, many per ``send()``; same outcome as paho's version."""
        queue = self._out_packet
        while queue:
            chunk = []
            size = 0
            # By index: a publishing thread may append meanwhile (only we pop from the left).
            for i in range(len(queue)):
                packet = queue[i]
                chunk.append(packet)
                size += packet["to_process"]
                if size >= WRITE_CHUNK:
                    break
            if len(chunk) == 1:
                data = chunk[0]["packet"][chunk[0]["pos"]:]
            else:
                data = b"".join(bytes(p["packet"][p["pos"]:]) for p in chunk)
            try:
                written = self._sock_send(data)
            except (AttributeError, ValueError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            for packet in chunk:
                if written < packet["to_process"]:
                    packet["pos"] += written
                    packet["to_process"] -= written
                    break
                written -= packet["to_process"]
                packet["pos"] += packet["to_process"]
                packet["to_process"] = 0
                queue.popleft()
                command = packet["command"] & 0xF0
                if command == _PUBLISH and packet["qos"] == 0:
                    self._qos0_written(packet["mid"])
                elif command == _DISCONNECT:
                    with self._msgtime_mutex:
                        self._last_msg_out = time.monotonic()
                    self._do_on_disconnect(packet_from_broker=False,
                                           v1_rc=MQTTErrorCode.MQTT_ERR_SUCCESS)
                    self._sock_close()
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
            else:
                continue
            break  # the socket took less than offered: wait until it is writable
        with self._msgtime_mutex:
            self._last_msg_out = time.monotonic()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _qos0_written(self, mid: int) -> None:
        on_publish = self.on_publish
        if on_publish is not None:
            on_publish(self, self._userdata, mid, _WRITTEN, None)  # type: ignore[call-arg,arg-type]

    def _sock_recv(self, bufsize: int) -> bytes:
        """Serve paho's 1-byte and rest-of-packet reads from a 64 KiB read buffer."""
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(READ_CHUNK)
            if not data:
                return data  # closed by the peer
            self._rbuf, self._rpos = data, 0
            self.last_recv = time.monotonic()
            if _QUICKACK is not None:
                # Acknowledge at once: a broker with Nagle on (Mosquitto's default) holds its
                # next small packet (a SUBACK, a marker) until we ACK, and Linux's delayed
                # ACK makes that wait up to 40 ms. Linux resets the option, so set it per read.
                with contextlib.suppress(OSError, AttributeError):
                    cast(socket.socket, self._sock).setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:self._rpos]

    def buffered(self) -> bool:
        """Whether read bytes wait in the buffer (the selector cannot see them)."""
        return self._rpos < len(self._rbuf)

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def reconnect(self) -> MQTTErrorCode:
        self.last_recv = time.monotonic()  # a new connection starts its silence clock
        return super().reconnect()

