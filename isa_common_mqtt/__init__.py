"""isa_common_mqtt: simple, dependable IoT messaging over MQTT.

``MQTTClient`` talks straight to an MQTT broker through paho-mqtt; the device registry,
device metrics and topic counters live on the broker as retained records.
"""

from ._async_client import AsyncMQTTClient
from ._errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerConnectionError,
    BrokerUnavailableError,
    BufferFullError,
    DeviceNotFoundError,
    InvalidArgumentError,
    InvalidDeviceIdError,
    InvalidPayloadError,
    InvalidQoSError,
    InvalidTopicError,
    MQTTClientError,
    MQTTTimeoutError,
    NotConnectedError,
    ProtocolNotSupportedError,
    PublishTimeoutError,
    RegistryError,
    RegistrySyncError,
    SessionTakenOverError,
    UnknownSessionError,
)
from ._options import TLSSettings
from ._types import DeviceStatus, Message
from .mqtt_client import MQTTClient

__version__ = "0.1.0"

__all__ = [
    "AsyncMQTTClient",
    "AuthenticationError",
    "AuthorizationError",
    "BrokerConnectionError",
    "BrokerUnavailableError",
    "BufferFullError",
    "DeviceNotFoundError",
    "DeviceStatus",
    "InvalidArgumentError",
    "InvalidDeviceIdError",
    "InvalidPayloadError",
    "InvalidQoSError",
    "InvalidTopicError",
    "MQTTClient",
    "MQTTClientError",
    "MQTTTimeoutError",
    "Message",
    "NotConnectedError",
    "ProtocolNotSupportedError",
    "PublishTimeoutError",
    "RegistryError",
    "RegistrySyncError",
    "SessionTakenOverError",
    "TLSSettings",
    "UnknownSessionError",
    "__version__",
]
