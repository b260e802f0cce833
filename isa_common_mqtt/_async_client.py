"""AsyncMQTTClient: the guide's methods as coroutines, for asyncio services.

It shares everything with :class:`MQTTClient` (options, topic rules, sessions, registry,
statistics) and differs only in how it waits. Sessions run on the process's network thread
as always; publishing never blocks the event loop: a message is queued (a full outgoing
buffer raises BufferFullError at once instead of waiting) and the coroutine awaits a future
that the network thread completes on the acknowledgement. Operations that need several
broker round trips (connect, subscribe, registry reads and writes, retained reads) run
their blocking waits in a worker thread (``asyncio.to_thread``) so the loop stays free.

``async with AsyncMQTTClient(...) as client:`` closes the client when the block ends.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ._codec import as_bytes, encode_json, encode_msgpack
from ._errors import PublishTimeoutError
from ._pending import Waiter
from ._session import Session
from ._types import DeviceStatus, Message
from .mqtt_client import MQTTClient

T = TypeVar("T")
AsyncMessageCallback = Callable[[str, bytes, int, bool, float], Awaitable[object]]


class AsyncMQTTClient:
    """The asyncio twin of :class:`MQTTClient`: same methods and results, awaited."""

    def __init__(self, host: str | None = None, port: int | None = None,
                 user_id: str | None = None, organization_id: str | None = None,
                 **options: Any) -> None:
        self.sync = MQTTClient(host, port, user_id, organization_id, **options)
        """The synchronous client underneath (same sessions and registry)."""

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    async def __aenter__(self) -> AsyncMQTTClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End every session cleanly after a bounded wait for acknowledgements."""
        await asyncio.to_thread(self.sync.close)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    # == connections =====================================================================
    async def health_check(self, deep_check: bool = False) -> dict[str, Any]:
        return await self._run(self.sync.health_check, deep_check)

    async def connect(self, client_id: str, username: str = "", password: str = "",
                      **kwargs: Any) -> dict[str, Any]:
        return await self._run(self.sync.connect, client_id, username, password, **kwargs)

    async def connect_many(self, sessions: Iterable[str | Mapping[str, Any]]) -> dict[str, Any]:
        return await self._run(self.sync.connect_many, list(sessions))

    async def disconnect(self, session_id: str) -> dict[str, Any]:
        return await self._run(self.sync.disconnect, session_id)

    async def get_connection_status(self, session_id: str) -> dict[str, Any]:
        return self.sync.get_connection_status(session_id)  # in memory: no I/O

    # == publishing ======================================================================
    async def publish(self, session_id: str, topic: str, payload: bytes, qos: int = 1,
                      retained: bool = False) -> dict[str, Any]:
        """Publish and return once the message is safe, without blocking the event loop."""
        session = self.sync._session(session_id)
        item = self.sync._item(topic, as_bytes(payload), qos, retained)
        waiter, outs = session.publish([item], timeout=0)
        await self._completed(session, waiter)
        if waiter.error is not None:
            raise waiter.error
        return {"success": True, "message_id": outs[0].mid}

    async def publish_json(self, session_id: str, topic: str, data: Any, qos: int = 1,
                           retained: bool = False) -> dict[str, Any]:
        return await self.publish(session_id, topic, encode_json(data), qos, retained)

    async def publish_msgpack(self, session_id: str, topic: str, data: Any, qos: int = 1,
                              retained: bool = False) -> dict[str, Any]:
        return await self.publish(session_id, topic, encode_msgpack(data), qos, retained)

    async def publish_batch(self, session_id: str,
                            messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return await self._run(self.sync.publish_batch, session_id, list(messages))

    async def _completed(self, session: Session, waiter: Waiter) -> None:
        """Await ``waiter`` while acknowledgements keep coming (publish_timeout without)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        waiter.add_done_callback(lambda: loop.call_soon_threadsafe(resolve))
        timeout = session.options.publish_timeout
        left = waiter.remaining
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout)
                return
            except TimeoutError:
                if waiter.remaining < left:
                    left = waiter.remaining
                    continue
                raise PublishTimeoutError(
                    f"{waiter.remaining} message(s) not acknowledged within {timeout:g} s; "
                    "they stay queued and will still be sent when the session is back "
                    "(unless it is disconnected)") from None

    # == subscriptions ===================================================================
    async def subscribe(self, session_id: str, topic_filter: str, qos: int = 1,
                        callback: Callable[..., Any] | None = None) -> dict[str, Any]:
        """Subscribe; an ``async def`` callback runs on this event loop, a plain one on the
        dispatcher thread; without callback, read messages with :meth:`messages`."""
        return await self._run(self.sync.subscribe, session_id, topic_filter, qos,
                               self._callback(callback))

    async def subscribe_multiple(self, session_id: str,
                                 subscriptions: Sequence[Mapping[str, Any]],
                                 callback: Callable[..., Any] | None = None) -> dict[str, Any]:
        return await self._run(self.sync.subscribe_multiple, session_id, subscriptions,
                               self._callback(callback))

    def _callback(self, callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if callback is None or not inspect.iscoroutinefunction(callback):
            return callback
        loop = asyncio.get_running_loop()

        def schedule(*args: Any) -> None:
            asyncio.run_coroutine_threadsafe(callback(*args), loop)

        return schedule

    async def unsubscribe(self, session_id: str, topic_filters: str | Sequence[str]) -> int:
        return await self._run(self.sync.unsubscribe, session_id, topic_filters)

    async def list_subscriptions(self, session_id: str) -> list[dict[str, Any]]:
        return self.sync.list_subscriptions(session_id)

    async def messages(self, session_id: str) -> AsyncGenerator[Message, None]:
        """Messages of the session's subscriptions made without callback, as they come."""
        session = self.sync._session(session_id)
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(arrived.set)

        session.inbox_listener = wake
        try:
            while True:
                message = session.receive_nowait()
                if message is None:
                    arrived.clear()
                    message = session.receive_nowait()  # it may have landed meanwhile
                    if message is None:
                        await arrived.wait()
                        continue
                yield message
        finally:
            session.inbox_listener = None

    async def receive(self, session_id: str, timeout: float | None = None) -> Message | None:
        """The next message of :meth:`messages`, or None after ``timeout`` seconds."""
        iterator = self.messages(session_id)
        try:
            return await asyncio.wait_for(anext(iterator), timeout)
        except TimeoutError:
            return None
        finally:
            await iterator.aclose()

    # == topics and retained messages ====================================================
    async def validate_topic(self, topic: str, allow_wildcards: bool = False) -> dict[str, Any]:
        return self.sync.validate_topic(topic, allow_wildcards)

    async def set_retained_message(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        return await self._run(self.sync.set_retained_message, topic, payload, qos)

    async def get_retained_message(self, topic: str) -> dict[str, Any]:
        return await self._run(self.sync.get_retained_message, topic)

    async def delete_retained_message(self, topic: str) -> bool:
        return await self._run(self.sync.delete_retained_message, topic)

    async def get_topic_info(self, topic: str) -> dict[str, Any]:
        return await self._run(self.sync.get_topic_info, topic)

    async def list_topics(self, prefix: str = "", page: int = 1,
                          page_size: int = 50) -> dict[str, Any]:
        return await self._run(self.sync.list_topics, prefix, page, page_size)

    # == registry and statistics =========================================================
    async def register_device(self, device_id: str, device_name: str,
                              device_type: str = "sensor",
                              metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self._run(self.sync.register_device, device_id, device_name, device_type,
                               metadata)

    async def register_devices(self, devices: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return await self._run(self.sync.register_devices, list(devices))

    async def unregister_device(self, device_id: str) -> bool:
        return await self._run(self.sync.unregister_device, device_id)

    async def list_devices(self, status: int | DeviceStatus | None = None, page: int = 1,
                           page_size: int = 50) -> dict[str, Any]:
        return await self._run(self.sync.list_devices, status, page, page_size)

    async def get_device_info(self, device_id: str) -> dict[str, Any] | None:
        return await self._run(self.sync.get_device_info, device_id)

    async def update_device_status(self, device_id: str, status: int | DeviceStatus,
                                   metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self._run(self.sync.update_device_status, device_id, status, metadata)

    async def get_device_metrics(self, device_id: str,
                                 start_time: datetime | float | None = None,
                                 end_time: datetime | float | None = None) -> dict[str, Any]:
        return await self._run(self.sync.get_device_metrics, device_id, start_time, end_time)

    async def get_statistics(self) -> dict[str, Any]:
        return await self._run(self.sync.get_statistics)

