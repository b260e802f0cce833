"""Topic names and filters (isa_common_mqtt._topics): MQTT section 4.7 rules and matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isa_common_mqtt import InvalidTopicError
from isa_common_mqtt._topics import (
    DISCOURAGED,
    MAX_TOPIC_BYTES,
    TopicPrefix,
    check_filter,
    check_publishable,
    check_topic,
    matches,
    topic_violations,
)

# -- topic_violations: publish topic names ------------------------------------------------

VALID_NAMES = [
    "a",
    "sport/tennis/player1",
    "a//b",  # empty levels are valid
    "/a",
    "a/",
    "/",
    "//",
    " ",
    "température/salle à manger",
    "emoji/🌡️",
    "$SYS/broker/uptime",  # valid as a name; only check_publishable refuses it
    "$registry/acme",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_topic_names_have_no_violations(name: str) -> None:
    assert topic_violations(name) == []


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_topic_names_are_also_valid_filters(name: str) -> None:
    assert topic_violations(name, allow_wildcards=True) == []


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("\x00", "NUL"),
        ("a/\ud800/b", "surrogate"),
        ("\udfff", "surrogate"),
        ("+", "wildcards"),
        ("#", "wildcards"),
        ("sport/+/player1", "wildcards"),
        ("sport/#", "wildcards"),
        ("sport+", "wildcards"),
        ("a#b", "wildcards"),
    ],
)
def test_invalid_topic_names_are_reported_with_the_rule_they_break(
        name: str, fragment: str) -> None:
    violations = topic_violations(name)
    assert violations
    assert any(fragment in v for v in violations), violations


@pytest.mark.parametrize("value", [None, 1, 1.5, b"a/b", bytearray(b"a"), ["a"], object()])
def test_a_non_str_topic_is_one_type_violation(value: object) -> None:
    violations = topic_violations(value)
    assert len(violations) == 1
    assert type(value).__name__ in violations[0]
    assert topic_violations(value, allow_wildcards=True) == violations


def test_every_broken_rule_is_listed() -> None:
    violations = topic_violations("\x00+")
    assert len(violations) == 2
    assert any("NUL" in v for v in violations)
    assert any("wildcard" in v for v in violations)


# -- the 65,535 byte limit counts UTF-8 bytes, not characters -----------------------------

def test_max_topic_bytes_is_the_mqtt_string_limit() -> None:
    assert MAX_TOPIC_BYTES == 65_535


@pytest.mark.parametrize(
    ("unit", "unit_bytes"),
    [("a", 1), ("é", 2), ("€", 3), ("😀", 4)],
)
def test_a_topic_of_exactly_65535_utf8_bytes_is_valid(unit: str, unit_bytes: int) -> None:
    count, rest = divmod(MAX_TOPIC_BYTES, unit_bytes)
    topic = unit * count + "a" * rest
    assert len(topic.encode("utf-8")) == MAX_TOPIC_BYTES
    assert topic_violations(topic) == []
    assert check_topic(topic) is topic


@pytest.mark.parametrize(
    ("unit", "unit_bytes"),
    [("a", 1), ("é", 2), ("€", 3), ("😀", 4)],
)
def test_a_topic_one_byte_over_65535_utf8_bytes_is_invalid(unit: str, unit_bytes: int) -> None:
    count, rest = divmod(MAX_TOPIC_BYTES, unit_bytes)
    topic = unit * count + "a" * (rest + 1)
    assert len(topic.encode("utf-8")) == MAX_TOPIC_BYTES + 1
    violations = topic_violations(topic)
    assert any("65535" in v and "65536" in v for v in violations), violations
    with pytest.raises(InvalidTopicError):
        check_topic(topic)


def test_a_multibyte_topic_under_65535_characters_but_over_65535_bytes_is_invalid() -> None:
    topic = "é" * 40_000  # 40,000 characters, 80,000 bytes
    assert topic_violations(topic)
    with pytest.raises(InvalidTopicError):
        check_topic(topic)


def test_the_byte_limit_applies_to_filters_too() -> None:
    assert topic_violations("a" * MAX_TOPIC_BYTES, allow_wildcards=True) == []
    assert topic_violations("a" * (MAX_TOPIC_BYTES - 2) + "/#", allow_wildcards=True) == []
    assert topic_violations("a" * (MAX_TOPIC_BYTES - 1) + "/#", allow_wildcards=True)


# -- topic_violations: subscription filters -----------------------------------------------

@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "sport/#",
        "sport/tennis/#",
        "sport/+",
        "+/tennis/#",
        "+/+",
        "/+",
        "+/",
        "sport/+/player1",
        "$SYS/#",
        "$SYS/broker/+",
        "+//#",
    ],
)
def test_valid_filters_have_no_violations(topic_filter: str) -> None:
    assert topic_violations(topic_filter, allow_wildcards=True) == []
    assert check_filter(topic_filter) is topic_filter


@pytest.mark.parametrize(
    ("topic_filter", "fragment"),
    [
        ("sport/tennis#", "'#' must be a whole level"),
        ("sport/#/ranking", "'#' must be a whole level and the last one"),
        ("#/a", "last one"),
        ("##", "'#' must be a whole level"),
        ("a/#/", "last one"),
        ("sport+", "'+' must be a whole level"),
        ("sport/+tennis", "'+' must be a whole level"),
        ("++", "'+' must be a whole level"),
        ("", "empty"),
        ("a/\x00/#", "NUL"),
        ("\ud800/#", "surrogate"),
    ],
)
def test_invalid_filters_are_reported_with_the_rule_they_break(
        topic_filter: str, fragment: str) -> None:
    violations = topic_violations(topic_filter, allow_wildcards=True)
    assert any(fragment in v for v in violations), violations


# -- check_topic / check_filter / check_publishable ---------------------------------------

def test_invalid_topic_error_is_a_value_error() -> None:
    assert issubclass(InvalidTopicError, ValueError)


@pytest.mark.parametrize("name", ["a", "a//b", "température", "$SYS/broker/uptime"])
def test_check_topic_returns_a_valid_name_unchanged(name: str) -> None:
    assert check_topic(name) is name


@pytest.mark.parametrize("name", ["", "a/+", "a/#", "a\x00", "\ud800", None, 3, b"a"])
def test_check_topic_raises_invalid_topic_error_carrying_the_topic(name: object) -> None:
    with pytest.raises(InvalidTopicError) as info:
        check_topic(name)
    assert info.value.topic == name or info.value.topic is name
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a+", "a\x00/#", None, 3])
def test_check_filter_raises_invalid_topic_error_carrying_the_filter(
        topic_filter: object) -> None:
    with pytest.raises(InvalidTopicError) as info:
        check_filter(topic_filter)
    assert info.value.topic == topic_filter or info.value.topic is topic_filter
    assert "filter" in str(info.value)


@pytest.mark.parametrize("name", ["$SYS/broker/uptime", "$SYS", "$SYS/"])
def test_check_publishable_refuses_sys_topics(name: str) -> None:
    with pytest.raises(InvalidTopicError, match=r"\$SYS"):
        check_publishable(name)


@pytest.mark.parametrize("name", ["a/b", "$registry/acme/00/device/d1", "sys/x", "SYS/x",
                                  "a/$SYS"])
def test_check_publishable_accepts_other_valid_names(name: str) -> None:
    assert check_publishable(name) is name


@pytest.mark.parametrize("name", ["", "a/#", "a\x00", None])
def test_check_publishable_rejects_invalid_names_like_check_topic(name: object) -> None:
    with pytest.raises(InvalidTopicError):
        check_publishable(name)


def test_only_check_publishable_refuses_sys() -> None:
    assert check_topic("$SYS/broker/uptime") == "$SYS/broker/uptime"
    assert check_filter("$SYS/#") == "$SYS/#"


# -- matches ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        # exact names
        ("sport/tennis", "sport/tennis", True),
        ("sport/tennis", "sport/Tennis", False),
        ("sport/tennis", "sport/tennis/", False),
        ("sport", "sport/tennis", False),
        # '#' matches the parent level and every level below
        ("sport/#", "sport", True),
        ("sport/#", "sport/", True),
        ("sport/#", "sport/tennis", True),
        ("sport/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/#", "sport", False),
        ("sport/#", "sports", False),
        ("sport/#", "other/sport", False),
        ("#", "sport", True),
        ("#", "/", True),
        ("#", "a/b/c", True),
        # '+' matches exactly one level, including an empty one
        ("sport/+", "sport/tennis", True),
        ("sport/+", "sport/", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/tennis/player1", False),
        ("sport/+/player1", "sport/tennis/player1", True),
        ("sport/+/player1", "sport//player1", True),
        ("+", "sport", True),
        ("+", "/finance", False),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+/+/+", "a//", True),
        ("+/tennis/#", "sport/tennis/player1", True),
        ("+/tennis/#", "sport/tennis", True),
        ("+/#", "/", True),
        # topics starting with '$' are not matched by a leading wildcard
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("+/#", "$SYS/broker", False),
        ("+", "$SYS", False),
        ("#", "$registry/acme", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+/uptime", "$SYS/broker/uptime", True),
        ("$SYS/broker/uptime", "$SYS/broker/uptime", True),
        ("$SYS/#", "$SYSTEM/x", False),
        # '$' later in the topic is an ordinary character
        ("+/$x", "a/$x", True),
        ("a/#", "a/$x", True),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


# -- TopicPrefix --------------------------------------------------------------------------

def test_topic_prefix_adds_the_prefix_to_topics_and_filters() -> None:
    prefix = TopicPrefix("acme/")
    assert prefix.add("a/b") == "acme/a/b"
    assert prefix.add("#") == "acme/#"
    assert prefix.add("+/temp") == "acme/+/temp"


def test_topic_prefix_strips_the_prefix_from_broker_topics() -> None:
    strip = TopicPrefix("acme/").strip
    assert strip("acme/a/b") == "a/b"


def test_topic_prefix_returns_topics_outside_the_prefix_unchanged() -> None:
    strip = TopicPrefix("acme/").strip
    assert strip("other/a/b") == "other/a/b"
    assert strip("$SYS/broker/uptime") == "$SYS/broker/uptime"
    assert strip("acm") == "acm"


@pytest.mark.parametrize("topic", ["a", "a/b", "/a", "a/", "température/x"])
def test_topic_prefix_strip_undoes_add(topic: str) -> None:
    prefix = TopicPrefix("tenants/acme/")
    assert prefix.strip(prefix.add(topic)) == topic


def test_an_empty_topic_prefix_is_the_identity() -> None:
    prefix = TopicPrefix("")
    assert prefix.prefix == ""
    assert prefix.add("a/b") == "a/b"
    assert prefix.strip("a/b") == "a/b"


@pytest.mark.parametrize("bad", ["acme/+/", "acme/#", "a\x00/", "\ud800/"])
def test_an_invalid_topic_prefix_raises_invalid_topic_error(bad: str) -> None:
    with pytest.raises(InvalidTopicError, match="topic_prefix"):
        TopicPrefix(bad)


# -- properties ---------------------------------------------------------------------------

# Levels of a valid topic name: any text without '/', wildcards, control characters
# (NUL included: category Cc) or lone surrogates.
levels = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"),
    max_size=8,
)
level_lists = st.lists(levels, min_size=1, max_size=8).filter(lambda ls: "/".join(ls) != "")


@given(st.text())
def test_check_topic_returns_the_same_string_or_raises_invalid_topic_error(text: str) -> None:
    try:
        result = check_topic(text)
    except InvalidTopicError:
        return
    assert result is text


@given(st.one_of(st.text(), st.text(alphabet="ab/+#\x00$", max_size=12)))
def test_topic_violations_is_empty_exactly_when_check_topic_succeeds(text: str) -> None:
    try:
        check_topic(text)
        accepted = True
    except InvalidTopicError:
        accepted = False
    assert accepted is (topic_violations(text) == [])


@given(st.text(alphabet="ab/+#\x00$", max_size=12))
def test_filter_violations_are_empty_exactly_when_check_filter_succeeds(text: str) -> None:
    try:
        check_filter(text)
        accepted = True
    except InvalidTopicError:
        accepted = False
    assert accepted is (topic_violations(text, allow_wildcards=True) == [])


@given(level_lists)
def test_a_valid_topic_name_matches_itself(parts: list[str]) -> None:
    topic = "/".join(parts)
    assert check_topic(topic) == topic
    assert matches(topic, topic) is True


@given(level_lists)
def test_hash_matches_every_topic_not_starting_with_dollar(parts: list[str]) -> None:
    topic = "/".join(parts)
    assert matches("#", topic) is (not topic.startswith("$"))


@given(level_lists, st.data())
def test_replacing_levels_with_plus_gives_a_filter_matching_the_topic(
        parts: list[str], data: st.DataObject) -> None:
    topic = "/".join(parts)
    first = 1 if topic.startswith("$") else 0  # a leading wildcard never matches '$' topics
    replaced = data.draw(st.sets(st.integers(first, len(parts) - 1)) if first < len(parts)
                         else st.just(set()))
    topic_filter = "/".join("+" if i in replaced else p for i, p in enumerate(parts))
    assert check_filter(topic_filter) == topic_filter
    assert matches(topic_filter, topic) is True


@given(level_lists, st.data())
def test_a_prefix_of_levels_followed_by_hash_matches_the_topic(
        parts: list[str], data: st.DataObject) -> None:
    topic = "/".join(parts)
    keep = data.draw(st.integers(1 if topic.startswith("$") else 0, len(parts)))
    topic_filter = "/".join([*parts[:keep], "#"])
    assert matches(topic_filter, topic) is True


@pytest.mark.parametrize("topic", ["a\tb", "a\x01", "\x1f", "a\x7f", "\x85", "x\x9fy"],
                         ids=["tab", "soh", "us", "del", "nel", "c1"])
def test_control_characters_are_refused(topic: str) -> None:
    """The specification says SHOULD NOT; Mosquitto drops the connection on a tab."""
    assert any("control characters" in v for v in topic_violations(topic))
    with pytest.raises(InvalidTopicError, match="control characters"):
        check_topic(topic)


def test_discouraged_characters_are_exactly_the_specifications_list() -> None:
    """Control characters U+0001-U+001F and U+007F-U+009F, and the Unicode noncharacters
    U+FDD0-U+FDEF and U+xFFFE/U+xFFFF of every plane: nothing more, nothing less."""
    def listed(code: int) -> bool:
        return 0 < code < 0x20 or 0x7F <= code <= 0x9F or 0xFDD0 <= code <= 0xFDEF \
            or code & 0xFFFE == 0xFFFE

    found = set(map(ord, DISCOURAGED.findall("".join(map(chr, range(0x110000))))))
    assert found == {code for code in range(0x110000) if listed(code)}
