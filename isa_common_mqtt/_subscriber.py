# mypy: disable-error-code="misc"
# (the state lives in Session.__slots__; mypy cannot see a mixin assign to it)
"""The incoming half of a session: subscriptions, routing of messages, the inbox.

A mixin of :class:`~isa_common_mqtt._session.Session`, which owns the state.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from ._capabilities import Capabilities
from ._errors import AuthorizationError, MQTTTimeoutError, NotConnectedError
from ._pending import MessageHandler, Request, Subscription, passive_handler
from ._topics import FilterIndex, matches
from ._types import Message

if TYPE_CHECKING:
    from ._dispatch import Dispatcher
    from ._options import ClientOptions
    from ._paho import PahoClient

logger = logging.getLogger(__name__)


def _options(sub: Subscription) -> SubscribeOptions:
    """MQTT 5 subscription options of ``sub``."""
    return SubscribeOptions(qos=sub.qos, noLocal=sub.no_local)


class Subscriber:
    """Subscribing and message routing for a session (see module docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:  # state owned by Session
        client_id: str
        options: ClientOptions
        protocol: int
        connected: bool
        clean_session: bool
        endpoint: tuple[str, int] | None
        messages_received: int
        bytes_received: int
        messages_dropped: int
        on_received: Callable[[str, int], None] | None
        inbox_listener: Callable[[], None] | None
        subscriptions: dict[str, Subscription]
        taps: list[tuple[list[str], MessageHandler]]
        _lock: threading.RLock
        _client: PahoClient | None
        _requests: dict[int, Request]
        _index: FilterIndex | None
        _dispatcher: Dispatcher
        _inbox: collections.deque[Message] | None
        _inbox_ready: threading.Condition | None
        restoring: Request | None

        @property
        def capabilities(self) -> Capabilities: ...
        def check_topic(self, topic: str) -> None: ...
        _strip: Callable[[str], str]
        def _drain_locked(self) -> None: ...
        def _check_usable(self) -> None: ...

    def _handle_ack(self, mid: int, codes: list[int]) -> None:
        request = self._requests.pop(mid, None)
        if request is None:
            return
        request.codes = codes
        refused = set()
        for sub, code in zip(request.subscriptions or [], codes, strict=False):
            if code >= 0x80:
                refused.add(sub.topic_filter)
            elif (held := self.subscriptions.get(sub.topic_filter)) is not None:
                held.qos = code  # granted QoS (a passive re-subscribe keeps the holder)
        self._rollback(request, refused)
        request.event.set()

    def _rollback(self, request: Request, filters: set[str] | None) -> None:
        """Undo the routing a SUBSCRIBE added for ``filters`` (all when None)."""
        for sub, previous in request.added:
            if filters is not None and sub.topic_filter not in filters:
                continue
            if self.subscriptions.get(sub.topic_filter) is sub:
                if previous is None:
                    del self.subscriptions[sub.topic_filter]
                else:
                    self.subscriptions[sub.topic_filter] = previous
                self._index = None

    def _handle_message(self, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        now = time.time()
        self.messages_received += 1
        self.bytes_received += len(msg.payload)
        if self.on_received is not None:
            self.on_received(topic, len(msg.payload))
        message = Message(self._strip(topic), bytes(msg.payload), msg.qos, bool(msg.retain), now)
        delivered = False
        for filters, handler in self.taps:
            if any(matches(f, topic) for f in filters):
                delivered = True
                handler(message)
        index = self._index
        if index is None:
            index = self._index = FilterIndex(self.subscriptions)
        for topic_filter in index.match(topic):
            sub = self.subscriptions[topic_filter]
            delivered = True
            if sub.handler is not None:
                sub.handler(message)
            elif sub.callback is not None:
                job = functools.partial(sub.callback, message.topic, message.payload,
                                        message.qos, message.retained, message.timestamp)
                if not self._dispatcher.submit(job, self, self.options.max_pending_callbacks):
                    self.messages_dropped += 1
            else:
                self._deliver_to_inbox(message)
        if not delivered and not self.clean_session:
            # A persistent session's queued messages arrive right after CONNACK, before
            # the application subscribed again in this process: keep them for receive().
            # Otherwise a message no filter of ours matches (RabbitMQ and NATS let '#'
            # match '$' topics) is not for the application.
            self._deliver_to_inbox(message)

    def _inbox_parts(self) -> tuple[collections.deque[Message], threading.Condition]:
        """The inbox of messages without callback, made on first use (most sessions never
        need one, and each costs a deque and a condition)."""
        with self._lock:
            if self._inbox is None or self._inbox_ready is None:
                self._inbox = collections.deque(maxlen=self.options.max_pending_callbacks)
                self._inbox_ready = threading.Condition(threading.Lock())
            return self._inbox, self._inbox_ready

    def _deliver_to_inbox(self, message: Message) -> None:
        inbox, ready = self._inbox_parts()
        with ready:
            if len(inbox) == inbox.maxlen:
                self.messages_dropped += 1  # the deque drops the oldest
            inbox.append(message)
            ready.notify()
        listener = self.inbox_listener
        if listener is not None:
            listener()

    def subscribe(self, subscriptions: list[Subscription], *, wait: bool = True,
                  timeout: float | None = None) -> Request:
        """Send one SUBSCRIBE; with ``wait``, return after SUBACK (raise on refusal)."""
        if self.capabilities.flavour != "mqtt":
            for sub in subscriptions:
                self.check_topic(sub.topic_filter)
        with self._lock:
            self._check_usable()
            client = self._require_connected()
            if self.protocol == paho.MQTTv5:
                rc, mid = client.subscribe([(s.topic_filter, _options(s)) for s in subscriptions])
            else:
                rc, mid = client.subscribe([(s.topic_filter, s.qos) for s in subscriptions])
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                raise NotConnectedError(f"subscribe failed: {paho.error_string(rc)}")
            request = self._requests[mid] = Request(subscriptions)
            # Route at once: some brokers (NATS on '#') send retained messages before SUBACK.
            for sub in subscriptions:
                held = self.subscriptions.get(sub.topic_filter)
                if held is None or sub.handler is not passive_handler:
                    request.added.append((sub, held))
                    self.subscriptions[sub.topic_filter] = sub
            self._index = None
            self._drain_locked()
        if wait:
            self._await(request, "SUBACK", timeout)
            self.check_subscribed(request)
        return request

    def check_subscribed(self, request: Request) -> None:
        """Raise AuthorizationError when the broker refused a filter of ``request``."""
        if request.error is not None:
            raise request.error
        subs = request.subscriptions or []
        refused = [s.topic_filter for s, c in zip(subs, request.codes, strict=False) if c >= 0x80]
        if refused:
            code = max(request.codes)
            raise AuthorizationError(f"the broker refused the subscription to {refused} "
                                     f"(reason code {code:#x})", topic=refused[0],
                                     reason_code=code)

    def unsubscribe(self, topic_filters: list[str], timeout: float | None = None) -> int:
        """Remove the filters this session holds; return how many it held."""
        with self._lock:
            self._check_usable()
            held = [f for f in topic_filters if f in self.subscriptions]
            if not held:
                return 0
            for f in held:
                del self.subscriptions[f]
            self._index = None
            if not self.connected:
                return len(held)  # not restored on reconnect; a persistent session forgets later
            client = self._require_connected()
            rc, mid = client.unsubscribe(held)
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                return len(held)
            request = self._requests[mid] = Request()
            self._drain_locked()
        self._await(request, "UNSUBACK", timeout)
        return len(held)

    def _resubscribe(self) -> None:
        client = self._client
        if client is None:
            return
        subs = list(self.subscriptions.values())
        if self.protocol == paho.MQTTv5:
            rc, mid = client.subscribe([(s.topic_filter, _options(s)) for s in subs])
        else:
            rc, mid = client.subscribe([(s.topic_filter, s.qos) for s in subs])
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            self.restoring = self._requests[mid] = Request()  # done at its SUBACK
        logger.info("session %s: restoring %d subscription(s)", self.client_id, len(subs))

    def _await(self, request: Request, what: str, timeout: float | None) -> None:
        wait = self.options.request_timeout if timeout is None else timeout
        if not request.event.wait(wait):
            raise MQTTTimeoutError(f"the broker did not send {what} within {wait:g} s")
        if request.error is not None:
            raise request.error

    def _require_connected(self) -> paho.Client:
        if not self.connected or self._client is None:
            host, port = self.endpoint or ("?", 0)
            raise NotConnectedError(f"session {self.client_id!r} is not connected to "
                                    f"{host}:{port}; it is reconnecting", host=host, port=port)
        return self._client

    def receive(self, timeout: float | None) -> Message | None:
        """The next message of a subscription without callback, or None after ``timeout``."""
        inbox, ready = self._inbox_parts()
        with ready:
            if not ready.wait_for(lambda: bool(inbox), timeout):
                return None
            return inbox.popleft()

    def receive_nowait(self) -> Message | None:
        """The next inbox message if there is one."""
        inbox, ready = self._inbox_parts()
        with ready:
            return inbox.popleft() if inbox else None
