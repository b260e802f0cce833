"""Every client option in one frozen dataclass; environment and defaults are resolved here."""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import InvalidArgumentError
from ._topics import TopicPrefix, topic_violations


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """TLS for the broker connection: server verification and hostname check are on."""

    ca_file: str | None = None
    """CA bundle to verify the broker with (default: the system's trust store)."""
    cert_file: str | None = None
    """Client certificate for mutual TLS."""
    key_file: str | None = field(default=None, repr=False)
    """Private key of the client certificate."""
    context: ssl.SSLContext | None = field(default=None, repr=False)
    """A ready-made context; when given, the other fields are ignored."""

    def ssl_context(self) -> ssl.SSLContext:
        """The context to wrap the socket with."""
        if self.context is not None:
            return self.context
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Resolved options of an MQTTClient (keyword options of the constructor)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TLSSettings | None = None
    registry_root: str = "$registry"
    topic_prefix: str = ""
    keep_alive: int = 60
    """Seconds; the broker sees a frozen client as gone after about 1.5x this."""
    connect_timeout: float = 5.0
    """Seconds for TCP connect plus CONNACK."""
    publish_timeout: float = 30.0
    """Seconds ``publish`` waits for the acknowledgement of a QoS>0 message."""
    request_timeout: float = 10.0
    """Seconds for SUBACK/UNSUBACK and registry reads."""
    close_timeout: float = 5.0
    """Seconds ``close()`` waits for outstanding acknowledgements."""
    persistence_path: str | None = None
    """SQLite file of the durable outbox (QoS>0 messages survive a crash); None: off."""
    max_outbox_messages: int = 100_000
    """Unacknowledged messages the durable outbox holds before publish raises BufferFullError."""
    protocol: str = "auto"
    """"auto" (MQTT 5, falling back to 3.1.1), "5" or "3.1.1"."""
    max_buffered_messages: int = 10_000
    """Outgoing bound per session: QoS>0 messages not yet acknowledged."""
    max_pending_callbacks: int = 10_000
    """Bound of the queue between the network thread and callbacks."""
    max_inflight_qos2: int = 20
    """QoS 2 messages in flight under MQTT 3.1.1 (Mosquitto's default limit)."""
    reconnect_min_delay: float = 0.1
    reconnect_max_delay: float = 30.0
    downgrade_qos2: bool = False
    """On brokers without QoS 2, publish QoS 2 as QoS 1 instead of raising."""
    track_in_registry: bool = True
    """Count each session's traffic and advertise its subscriptions in the registry."""
    metrics_flush_interval: float = 10.0
    """Seconds between writes of device metrics and topic counters to the registry."""
    consul_host: str | None = None
    consul_port: int | None = None
    consul_token: str | None = field(default=None, repr=False)
    consul_service: str = "mqtt"

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any],
                    env: Mapping[str, str] | None = None) -> ClientOptions:
        """Validate keyword options; unknown names raise TypeError."""
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; "
                            f"known options: {', '.join(sorted(known))}")
        values = dict(kwargs)
        if values.get("username") is None and env.get("MQTT_USER"):
            values["username"] = env["MQTT_USER"]
        if values.get("password") is None and env.get("MQTT_PASSWORD"):
            values["password"] = env["MQTT_PASSWORD"]
        if isinstance(values.get("tls"), Mapping):
            values["tls"] = TLSSettings(**values["tls"])
        elif values.get("tls") is True:
            values["tls"] = TLSSettings()
        elif values.get("tls") is False:
            values["tls"] = None
        options = cls(**values)
        options._validate()
        return options

    def _validate(self) -> None:
        for name in ("keep_alive", "connect_timeout", "publish_timeout", "request_timeout",
                     "close_timeout", "max_buffered_messages", "max_pending_callbacks",
                     "max_outbox_messages",
                     "max_inflight_qos2", "reconnect_min_delay", "reconnect_max_delay",
                     "metrics_flush_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not 0 < value < math.inf:
                raise InvalidArgumentError(
                    f"option {name} must be a positive number, not {value!r}")
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise InvalidArgumentError(
                f"option protocol must be 'auto', '5' or '3.1.1', not {self.protocol!r}")
        if not isinstance(self.registry_root, str) or topic_violations(self.registry_root) \
                or self.registry_root.startswith("$SYS"):
            raise InvalidArgumentError(f"option registry_root {self.registry_root!r} is not a "
                                       "valid topic level, e.g. '$registry' or 'registry'")
        if self.tls is not None and not isinstance(self.tls, TLSSettings):
            raise InvalidArgumentError("option tls must be True, a TLSSettings or a dict of its "
                                       "fields (ca_file, cert_file, key_file, context)")
        TopicPrefix(self.topic_prefix)
