"""isa_common_mqtt: simple, dependable IoT messaging over MQTT.

``MQTTClient`` talks straight to an MQTT broker through paho-mqtt; the device registry,
device metrics and topic counters live on the broker as retained records.

Names are imported on first use (PEP 562), so ``import isa_common_mqtt`` stays cheap on
small devices and in command-line tools: paho-mqtt and asyncio load only when needed.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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

_HOMES = {"AsyncMQTTClient": "._async_client", "MQTTClient": ".mqtt_client",
          "TLSSettings": "._options", "DeviceStatus": "._types", "Message": "._types"}


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'isa_common_mqtt' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_HOMES.get(name, "._errors"), __name__), name)
    globals()[name] = value  # next time without __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
