"""Client options, their environment fallbacks and validation (isa_common_mqtt._options)."""

from __future__ import annotations

import dataclasses
import math
import ssl
from typing import Any

import pytest

from isa_common_mqtt import InvalidArgumentError, InvalidTopicError, TLSSettings
from isa_common_mqtt._options import ClientOptions

NO_ENV: dict[str, str] = {}

NUMERIC_OPTIONS = [
    "keep_alive", "connect_timeout", "publish_timeout", "request_timeout", "close_timeout",
    "max_buffered_messages", "max_pending_callbacks", "max_inflight_qos2",
    "reconnect_min_delay", "reconnect_max_delay", "metrics_flush_interval",
]


def options(**kwargs: Any) -> ClientOptions:
    return ClientOptions.from_kwargs(kwargs, env=NO_ENV)


# -- names --------------------------------------------------------------------------------

def test_no_options_gives_the_defaults() -> None:
    assert options() == ClientOptions()


def test_an_unknown_option_is_a_type_error_listing_the_known_options() -> None:
    with pytest.raises(TypeError) as info:
        options(keepalive=30)
    message = str(info.value)
    assert "keepalive" in message
    for field in dataclasses.fields(ClientOptions):
        assert field.name in message


def test_every_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match="colour, flavour"):
        options(flavour=1, colour=2)


def test_an_unknown_option_is_not_an_invalid_argument_error() -> None:
    with pytest.raises(TypeError) as info:
        options(bogus=1)
    assert not isinstance(info.value, InvalidArgumentError)


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        options().keep_alive = 5  # type: ignore[misc]


# -- credentials from the environment -----------------------------------------------------

def test_credentials_come_from_the_environment_when_not_given() -> None:
    env = {"MQTT_USER": "alice", "MQTT_PASSWORD": "s3cret"}
    resolved = ClientOptions.from_kwargs({}, env=env)
    assert (resolved.username, resolved.password) == ("alice", "s3cret")


def test_explicit_credentials_win_over_the_environment() -> None:
    env = {"MQTT_USER": "alice", "MQTT_PASSWORD": "s3cret"}
    resolved = ClientOptions.from_kwargs({"username": "bob", "password": "hunter2"}, env=env)
    assert (resolved.username, resolved.password) == ("bob", "hunter2")


def test_explicit_none_credentials_fall_back_to_the_environment() -> None:
    env = {"MQTT_USER": "alice", "MQTT_PASSWORD": "s3cret"}
    resolved = ClientOptions.from_kwargs({"username": None, "password": None}, env=env)
    assert (resolved.username, resolved.password) == ("alice", "s3cret")


def test_each_credential_falls_back_on_its_own() -> None:
    env = {"MQTT_USER": "alice", "MQTT_PASSWORD": "s3cret"}
    resolved = ClientOptions.from_kwargs({"username": "bob"}, env=env)
    assert (resolved.username, resolved.password) == ("bob", "s3cret")


def test_empty_environment_credentials_are_ignored() -> None:
    resolved = ClientOptions.from_kwargs({}, env={"MQTT_USER": "", "MQTT_PASSWORD": ""})
    assert (resolved.username, resolved.password) == (None, None)


def test_without_credentials_anywhere_they_stay_none() -> None:
    resolved = options()
    assert (resolved.username, resolved.password) == (None, None)


def test_the_process_environment_is_used_when_env_is_not_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_USER", "from-os")
    monkeypatch.setenv("MQTT_PASSWORD", "os-secret")
    resolved = ClientOptions.from_kwargs({})
    assert (resolved.username, resolved.password) == ("from-os", "os-secret")


# -- secrets never appear in repr ---------------------------------------------------------

def test_the_password_is_not_in_the_repr() -> None:
    resolved = options(username="alice", password="s3cret-pw")
    assert "s3cret-pw" not in repr(resolved)
    assert "alice" in repr(resolved)


def test_a_password_from_the_environment_is_not_in_the_repr() -> None:
    resolved = ClientOptions.from_kwargs({}, env={"MQTT_PASSWORD": "env-s3cret"})
    assert resolved.password == "env-s3cret"
    assert "env-s3cret" not in repr(resolved)


def test_the_consul_token_is_not_in_the_repr() -> None:
    assert "tok-s3cret" not in repr(options(consul_token="tok-s3cret"))


def test_the_tls_key_file_is_not_in_the_repr() -> None:
    tls = TLSSettings(ca_file="/etc/ca.pem", cert_file="/etc/client.pem",
                      key_file="/secret/client.key")
    assert "/secret/client.key" not in repr(tls)
    assert "/etc/client.pem" in repr(tls)
    assert "/secret/client.key" not in repr(options(tls=tls, password="pw-s3cret"))


# -- tls forms ----------------------------------------------------------------------------

def test_tls_true_means_default_tls_settings() -> None:
    assert options(tls=True).tls == TLSSettings()


@pytest.mark.parametrize("value", [False, None])
def test_tls_false_or_none_means_no_tls(value: object) -> None:
    assert options(tls=value).tls is None


def test_tls_as_a_dict_of_fields() -> None:
    resolved = options(tls={"ca_file": "/etc/ca.pem", "cert_file": "/c.pem",
                            "key_file": "/k.pem"})
    assert resolved.tls == TLSSettings(ca_file="/etc/ca.pem", cert_file="/c.pem",
                                       key_file="/k.pem")


def test_tls_settings_are_kept_as_given() -> None:
    tls = TLSSettings(ca_file="/etc/ca.pem")
    assert options(tls=tls).tls is tls


@pytest.mark.parametrize("value", ["yes", 1, ["ca.pem"], ssl.create_default_context()])
def test_other_tls_values_raise_invalid_argument_error(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="tls"):
        options(tls=value)


def test_default_tls_settings_verify_the_server() -> None:
    context = TLSSettings().ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_a_ready_made_ssl_context_is_used_as_is() -> None:
    context = ssl.create_default_context()
    assert TLSSettings(context=context, ca_file="/ignored.pem").ssl_context() is context


# -- numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [0, -1, -0.5, "5", None, True, False, math.nan],
                         ids=["zero", "negative", "negative-float", "str", "None", "True",
                              "False", "nan"])
def test_numeric_options_must_be_positive_numbers(name: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=name):
        options(**{name: value})


@pytest.mark.parametrize("name", NUMERIC_OPTIONS)
@pytest.mark.parametrize("value", [1, 0.25, 3600])
def test_numeric_options_accept_positive_numbers(name: str, value: float) -> None:
    assert getattr(options(**{name: value}), name) == value


def test_invalid_argument_error_is_a_value_error() -> None:
    assert issubclass(InvalidArgumentError, ValueError)


# -- protocol -----------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["auto", "5", "3.1.1"])
def test_supported_protocols(protocol: str) -> None:
    assert options(protocol=protocol).protocol == protocol


@pytest.mark.parametrize("protocol", [5, 3.1, "3.1", "4", "v5", "MQTT5", "", None])
def test_other_protocols_raise_invalid_argument_error(protocol: object) -> None:
    with pytest.raises(InvalidArgumentError, match="protocol"):
        options(protocol=protocol)


# -- registry_root and topic_prefix -------------------------------------------------------

@pytest.mark.parametrize("root", ["$registry", "registry", "$iot-registry", "régistre"])
def test_valid_registry_roots(root: str) -> None:
    assert options(registry_root=root).registry_root == root


@pytest.mark.parametrize("root", ["", "+", "#", "reg+istry", "reg#", "a\x00", "\ud800",
                                  "$SYS", "$SYS/registry", None, 1])
def test_invalid_registry_roots_raise_invalid_argument_error(root: object) -> None:
    with pytest.raises(InvalidArgumentError, match="registry_root"):
        options(registry_root=root)


@pytest.mark.parametrize("prefix", ["", "acme/", "tenants/acme/", "{organization_id}/"])
def test_valid_topic_prefixes(prefix: str) -> None:
    assert options(topic_prefix=prefix).topic_prefix == prefix


@pytest.mark.parametrize("prefix", ["acme/+/", "acme/#", "a\x00/"])
def test_invalid_topic_prefixes_raise_invalid_topic_error(prefix: str) -> None:
    with pytest.raises(InvalidTopicError, match="topic_prefix"):
        options(topic_prefix=prefix)
