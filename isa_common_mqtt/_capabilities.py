"""What a broker endpoint can do, learned once per process and shared by its sessions.

RabbitMQ's and NATS' MQTT front ends lack parts of MQTT (docs/compatibility.md); telling
them apart lets a session refuse locally, with a typed error, what such a broker would
silently change or answer by closing the connection.
"""

from __future__ import annotations

import socket
import ssl
import struct
import uuid
from dataclasses import dataclass

from ._paho import remaining_length


@dataclass(slots=True)
class Capabilities:
    """What one broker endpoint can do, learned by the first session of the process.

    Measured behaviour (docs/compatibility.md): RabbitMQ refuses MQTT 5 by closing the
    socket, grants QoS 1 for QoS 2 and turns '.' into '/' and '*' into '+'; NATS refuses
    MQTT 5 with CONNACK code 1, grants QoS 1 for QoS 2 and closes the connection on a
    QoS 2 publish or a topic with '.' or a space.
    """

    v5_refusal: str | None = None
    """None: MQTT 5 accepted (or not tried); "closed" (no CONNACK) or "connack" (a code)."""
    qos2: bool | None = None
    """Whether QoS 2 is granted end to end (None: not known)."""

    @property
    def flavour(self) -> str:
        """'rabbitmq', 'nats' or 'mqtt' (everything else: full MQTT semantics assumed)."""
        if self.qos2 is False and self.v5_refusal == "closed":
            return "rabbitmq"
        if self.qos2 is False and self.v5_refusal == "connack":
            return "nats"
        return "mqtt"

    def topic_problem(self, topic: str) -> str | None:
        """Why this broker cannot carry ``topic`` as written (None: it can)."""
        flavour = self.flavour
        if flavour == "nats" and ("." in topic or " " in topic):
            return "NATS closes the connection on topics with '.' or a space"
        if flavour == "rabbitmq" and ("." in topic or "*" in topic):
            return "RabbitMQ turns '.' into '/' and '*' into '+' in topics"
        return None


known: dict[tuple[str, int], Capabilities] = {}
"""Per endpoint, so later sessions start with the right protocol at once."""
PROBE_TOPIC = "isa-probe"


def mqtt5_refusal(host: str, port: int, timeout: float,
                  context: ssl.SSLContext | None = None) -> str | None:
    """How the broker answers a bare MQTT 5 CONNECT: None (accepted), "closed" (no CONNACK,
    as RabbitMQ does) or "connack" (a refusal code, as NATS does). Used once per endpoint,
    when a session connected with 3.1.1 and the broker does not grant QoS 2."""
    client_id = f"isa-probe-{uuid.uuid4().hex[:12]}".encode()
    body = (b"\x00\x04MQTT\x05\x02\x00\x0a\x00" + struct.pack("!H", len(client_id))
            + client_id)
    packet = b"\x10" + remaining_length(len(body)) + body
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = context.wrap_socket(raw, server_hostname=host) if context else raw
        sock.settimeout(timeout)
        sock.sendall(packet)
        try:
            answer = sock.recv(16)
        except (ConnectionError, TimeoutError):
            answer = b""
        if len(answer) >= 4 and answer[0] == 0x20:
            if answer[3] == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, nothing left behind
                return None
            return "connack"
        return "closed"
