"""Topic names and filters: the MQTT specification's rules, matching, tenant prefixes.

Pure functions only; nothing here touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._errors import InvalidTopicError

MAX_TOPIC_BYTES = 65_535


_NONCHARACTERS = "".join(chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF))
DISCOURAGED = re.compile(f"[\x01-\x1f\x7f-\x9f\ufdd0-\ufdef{_NONCHARACTERS}]")
"""Control characters and Unicode noncharacters: the MQTT specification says SHOULD NOT,
and Mosquitto drops the connection of a client that sends them."""


def topic_violations(topic: object, *, allow_wildcards: bool = False) -> list[str]:
    """Every rule of MQTT 3.1.1 / 5 section 4.7 that ``topic`` breaks (empty when valid).

    With ``allow_wildcards`` the string is checked as a subscription filter, else as a
    publish topic name.
    """
    if not isinstance(topic, str):
        return [f"topic must be a str, not {type(topic).__name__}"]
    violations: list[str] = []
    if not topic:
        violations.append("topic must not be empty")
    if "\x00" in topic:
        violations.append("topic must not contain the NUL character (U+0000)")
    if DISCOURAGED.search(topic):
        # The specification says SHOULD NOT; Mosquitto drops the connection on them.
        violations.append("topic must not contain control characters (U+0001-U+001F, "
                          "U+007F-U+009F) or Unicode noncharacters (U+FDD0-U+FDEF, U+xFFFE)")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        violations.append("topic must be valid UTF-8 (no lone surrogates)")
        size = 0
    if size > MAX_TOPIC_BYTES:
        violations.append(f"topic is {size} bytes; at most {MAX_TOPIC_BYTES} UTF-8 bytes")
    if not allow_wildcards:
        if "+" in topic or "#" in topic:
            violations.append("wildcards '+' and '#' are not allowed in a topic name")
        return violations
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            violations.append("'#' must be a whole level and the last one")
            break
    if any("+" in level and level != "+" for level in levels):
        violations.append("'+' must be a whole level")
    return violations


def check_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid publish topic name, else raise InvalidTopicError."""
    if type(topic) is str and topic.isprintable() and topic.isascii() \
            and 0 < len(topic) <= MAX_TOPIC_BYTES and "+" not in topic and "#" not in topic:
        return topic  # fast path for the common case: plain printable ASCII names
    violations = topic_violations(topic)
    if violations:
        raise InvalidTopicError(f"invalid topic {topic!r}: " + "; ".join(violations), topic=topic)
    return topic  # type: ignore[return-value]


def check_filter(topic_filter: object) -> str:
    """Return ``topic_filter`` if it is a valid subscription filter, else raise."""
    violations = topic_violations(topic_filter, allow_wildcards=True)
    if violations:
        raise InvalidTopicError(
            f"invalid topic filter {topic_filter!r}: " + "; ".join(violations), topic=topic_filter)
    return topic_filter  # type: ignore[return-value]


def check_publishable(topic: object) -> str:
    """Like :func:`check_topic`, and refuse ``$SYS`` which brokers reserve for themselves."""
    name = check_topic(topic)
    if name.startswith("$SYS"):
        raise InvalidTopicError(
            f"cannot publish to {name!r}: $SYS topics belong to the broker", topic=name)
    return name


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` under MQTT rules.

    A filter starting with a wildcard does not match topics starting with ``$``.
    """
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


class TopicPrefix:
    """Maps user topics into a tenant namespace and back (``"acme/"`` + ``"a/b"``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if prefix:
            violations = topic_violations(prefix + "x")
            if violations:
                raise InvalidTopicError(f"invalid topic_prefix {prefix!r}: "
                                        + "; ".join(violations), topic=prefix)
        self.prefix = prefix

    def add(self, topic: str) -> str:
        """The broker topic (or filter) for a user topic (or filter)."""
        return self.prefix + topic if self.prefix else topic

    def strip(self, topic: str) -> str:
        """The user topic for a broker topic; topics outside the prefix are returned as is."""
        if self.prefix and topic.startswith(self.prefix):
            return topic[len(self.prefix):]
        return topic


class FilterIndex:
    """The filters of a set that match a topic, found by walking a trie of levels
    rather than testing every filter (a registry sync holds 65 of them)."""

    __slots__ = ("_exact", "_root")

    def __init__(self, filters: Iterable[str]) -> None:
        self._exact: set[str] = set()
        self._root: dict[str | None, Any] = {}
        for topic_filter in filters:
            if "+" not in topic_filter and "#" not in topic_filter:
                self._exact.add(topic_filter)
                continue
            node = self._root
            for level in topic_filter.split("/"):
                node = node.setdefault(level, {})
            node[None] = topic_filter

    def match(self, topic: str) -> list[str]:
        """Every filter of the set that ``topic`` matches (see :func:`matches`)."""
        found = [topic] if topic in self._exact else []
        if self._root:
            _walk(self._root, topic.split("/"), 0, found, topic.startswith("$"))
        return found


def _walk(node: dict[str | None, Any], levels: list[str], index: int, found: list[str],
          dollar: bool) -> None:
    wildcards_allowed = not (dollar and index == 0)
    rest = node.get("#")
    if rest is not None and None in rest and wildcards_allowed:
        found.append(rest[None])  # '#' also matches the parent level: 'a/#' matches 'a'
    if index == len(levels):
        if None in node:
            found.append(node[None])
        return
    plus = node.get("+")
    if plus is not None and wildcards_allowed:
        _walk(plus, levels, index + 1, found, dollar)
    child = node.get(levels[index])
    if child is not None:
        _walk(child, levels, index + 1, found, dollar)
