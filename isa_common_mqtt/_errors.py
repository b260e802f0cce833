"""The exception tree of isa_common_mqtt.

Everything the library raises on purpose derives from :class:`MQTTClientError`::

    MQTTClientError
    ├── InvalidArgumentError (ValueError)      bad argument, nothing was sent
    │   ├── InvalidTopicError                  topic or filter breaks the MQTT rules
    │   ├── InvalidQoSError                    QoS outside 0..2
    │   ├── InvalidPayloadError                payload not bytes / not serialisable
    │   └── InvalidDeviceIdError               registry path part not allowed
    ├── UnknownSessionError (KeyError)         no open session with that id
    ├── DeviceNotFoundError (LookupError)      mutation of a device that is not registered
    ├── BrokerConnectionError (ConnectionError)
    │   ├── BrokerUnavailableError             could not reach host:port
    │   ├── NotConnectedError                  session is down (QoS 0 is never queued)
    │   ├── ProtocolNotSupportedError          broker cannot do what was asked (e.g. QoS 2)
    │   └── SessionTakenOverError              another client took this client_id
    ├── AuthenticationError (PermissionError)  CONNECT refused: bad credentials
    ├── AuthorizationError (PermissionError)   publish/subscribe refused by the broker's ACL
    ├── MQTTTimeoutError (TimeoutError)        a bounded wait ran out
    │   └── PublishTimeoutError                not acknowledged in time (still queued)
    ├── BufferFullError                        outgoing buffer is at its bound
    └── RegistryError
        └── RegistrySyncError                  the broker did not deliver a complete snapshot
"""

from __future__ import annotations


class MQTTClientError(Exception):
    """Root of every error raised by isa_common_mqtt."""


class InvalidArgumentError(MQTTClientError, ValueError):
    """An argument is invalid; nothing was sent to the broker."""


class InvalidTopicError(InvalidArgumentError):
    """A topic name or topic filter breaks the MQTT rules."""

    def __init__(self, message: str, *, topic: object = None) -> None:
        super().__init__(message)
        self.topic = topic


class InvalidQoSError(InvalidArgumentError):
    """QoS is not 0, 1 or 2."""


class InvalidPayloadError(InvalidArgumentError):
    """The payload is of the wrong type or cannot be serialised."""


class InvalidDeviceIdError(InvalidArgumentError):
    """A device id (or other registry path part) cannot be used in a topic."""


class UnknownSessionError(MQTTClientError, KeyError):
    """No open session has this id."""

    def __init__(self, session_id: object) -> None:
        super().__init__(f"unknown session {session_id!r}: call connect() first, "
                         "or the session was disconnected")
        self.session_id = session_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DeviceNotFoundError(MQTTClientError, LookupError):
    """The device is not registered in this organisation."""

    def __init__(self, device_id: str, organization_id: str) -> None:
        super().__init__(f"device {device_id!r} is not registered in organisation "
                         f"{organization_id!r}: call register_device() first")
        self.device_id = device_id
        self.organization_id = organization_id


class BrokerConnectionError(MQTTClientError, ConnectionError):
    """Talking to the broker failed."""

    def __init__(self, message: str, *, host: str | None = None, port: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class BrokerUnavailableError(BrokerConnectionError):
    """The broker at host:port could not be reached or did not answer CONNECT in time."""


class NotConnectedError(BrokerConnectionError):
    """The session is currently down."""


class ProtocolNotSupportedError(BrokerConnectionError):
    """The broker cannot do what was asked (for example QoS 2 on NATS)."""


class SessionTakenOverError(BrokerConnectionError):
    """Another client connected with this client_id; the session stopped reconnecting."""


class AuthenticationError(MQTTClientError, PermissionError):
    """The broker refused CONNECT because of the credentials."""

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class AuthorizationError(MQTTClientError, PermissionError):
    """The broker refused a publish or subscribe (ACL)."""

    def __init__(self, message: str, *, topic: str | None = None,
                 reason_code: int | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason_code = reason_code


class MQTTTimeoutError(MQTTClientError, TimeoutError):
    """A bounded wait ran out."""


class PublishTimeoutError(MQTTTimeoutError):
    """A QoS>0 message was not acknowledged in time; it stays queued for delivery."""


class BufferFullError(MQTTClientError):
    """The session's outgoing buffer is at its bound; the message was not accepted."""


class RegistryError(MQTTClientError):
    """The registry on the broker could not be read or written."""


class RegistrySyncError(RegistryError):
    """The broker did not deliver a complete registry snapshot."""
