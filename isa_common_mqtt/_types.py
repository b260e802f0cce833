"""Small value types shared by every module: messages, device status, callbacks."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class DeviceStatus(enum.IntEnum):
    """Device status values of the registry."""

    UNKNOWN = 0
    ONLINE = 1
    OFFLINE = 2
    SLEEPING = 3
    ERROR = 4


@dataclass(frozen=True, slots=True)
class Message:
    """A message delivered to a subscription."""

    topic: str
    """The topic as the user sees it (tenant prefix removed)."""
    payload: bytes
    qos: int
    """The QoS the broker delivered it with."""
    retained: bool
    """True when the broker sent it from its retained store."""
    timestamp: float
    """Unix time at which this process received it."""


MessageCallback = Callable[[str, bytes, int, bool, float], object]
"""``callback(topic, payload, qos, retained, timestamp)``, run on the dispatcher thread."""
