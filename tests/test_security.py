"""Security against a real Mosquitto: TLS and mutual TLS (certificates from trustme),
passwords, the multi-tenant ACL of docker/mosquitto/mosquitto-secure.conf, and secrets that
never show in logs, errors or reprs."""

from __future__ import annotations

import contextlib
import gc
import logging
import ssl
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from isa_common_mqtt import (
    AuthenticationError,
    AuthorizationError,
    BrokerConnectionError,
    DeviceStatus,
    MQTTClient,
    MQTTClientError,
    TLSSettings,
)
from isa_common_mqtt._registry import Schema
from isa_common_mqtt.testing import MosquittoFactory, MosquittoProcess

from .conftest import WAIT

DOCKER = Path(__file__).resolve().parents[1] / "docker" / "mosquitto"
SECURE_CONF = DOCKER / "mosquitto-secure.conf"
PASSWORDS = {"acme": "acme-example-password", "globex": "globex-example-password",
             "acme-thermo-1": "thermo-1-example-password"}
"""The example credentials of docker/mosquitto/passwd."""

ClientFactory = Callable[..., MQTTClient]


# == certificates and brokers ==============================================================

@dataclass(frozen=True)
class PKI:
    """Certificate files written for one test module."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path
    client_cert: Path
    client_key: Path
    client_key_pem: bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    wrong = ca.issue_cert("broker.other.example")
    client = ca.issue_cert("device-7@clients.example", common_name="device-7")
    files = {
        "ca": ca.cert_pem, "other_ca": other.cert_pem,
        "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
        "wrong_name_cert": wrong.cert_chain_pems[0], "wrong_name_key": wrong.private_key_pem,
        "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = folder / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return PKI(**paths, client_key_pem=client.private_key_pem.bytes())


def tls_config(pki: PKI, *, cert: Path, key: Path, require_certificate: bool = False) -> str:
    """Listener settings that turn the private broker's only listener into a TLS one."""
    lines = [f"cafile {pki.ca}", f"certfile {cert}", f"keyfile {key}"]
    if require_certificate:
        lines.append("require_certificate true")
    return "\n".join(lines)


@pytest.fixture
def clients() -> Iterator[ClientFactory]:
    """Make clients; every one is closed at teardown (before the brokers stop)."""
    made: list[MQTTClient] = []

    def make(broker: MosquittoProcess, **options: object) -> MQTTClient:
        settings: dict[str, object] = {"connect_timeout": WAIT, "request_timeout": WAIT,
                                       "publish_timeout": WAIT}
        settings.update(options)
        client = MQTTClient(host=broker.host, port=broker.port, **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@contextlib.contextmanager
def collecting_failed_handshakes() -> Iterator[None]:
    """Collect, silently, the sockets a failed TLS handshake leaves open, so that they cannot
    fail a later test; test_a_failed_tls_handshake_leaves_no_socket_open pins that leak."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


def round_trip(client: MQTTClient, topic: str) -> None:
    """Subscribe, publish, and see the message come back through the broker."""
    got = threading.Event()
    sid = client.connect(f"rt-{uuid.uuid4().hex[:8]}")["session_id"]
    client.subscribe(sid, topic, qos=1, callback=lambda *a: got.set())
    client.publish(sid, topic, b"over tls", qos=1)
    assert got.wait(WAIT)


# == TLS ===================================================================================

def test_tls_with_the_right_ca_connects(mosquitto_factory: MosquittoFactory, pki: PKI,
                                        clients: ClientFactory) -> None:
    broker = mosquitto_factory(extra_config=tls_config(pki, cert=pki.server_cert,
                                                       key=pki.server_key))
    round_trip(clients(broker, tls={"ca_file": str(pki.ca)}), "tls/ca-file")
    context = ssl.create_default_context(cafile=str(pki.ca))
    round_trip(clients(broker, tls=TLSSettings(context=context)), "tls/context")


@pytest.mark.parametrize("trust", ["system store", "another CA"])
def test_tls_verifies_the_broker_by_default(mosquitto_factory: MosquittoFactory, pki: PKI,
                                            clients: ClientFactory, trust: str) -> None:
    broker = mosquitto_factory(extra_config=tls_config(pki, cert=pki.server_cert,
                                                       key=pki.server_key))
    tls: object = True if trust == "system store" else {"ca_file": str(pki.other_ca)}
    client = clients(broker, tls=tls)
    with collecting_failed_handshakes():
        with pytest.raises(BrokerConnectionError) as caught:
            client.connect("untrusting")
        assert isinstance(caught.value, ConnectionError)
        assert f"{broker.host}:{broker.port}" in str(caught.value)
        assert "certificate verify failed" in str(caught.value).lower()
        del caught


def test_tls_checks_the_host_name(mosquitto_factory: MosquittoFactory, pki: PKI,
                                  clients: ClientFactory) -> None:
    broker = mosquitto_factory(extra_config=tls_config(pki, cert=pki.wrong_name_cert,
                                                       key=pki.wrong_name_key))
    client = clients(broker, tls={"ca_file": str(pki.ca)})  # trusted CA, name is wrong
    with collecting_failed_handshakes():
        with pytest.raises(BrokerConnectionError) as caught:
            client.connect("wrong-name")
        assert f"{broker.host}:{broker.port}" in str(caught.value)
        assert "mismatch" in str(caught.value).lower()
        del caught


def test_mutual_tls_refuses_a_client_without_certificate(
        mosquitto_factory: MosquittoFactory, pki: PKI, clients: ClientFactory) -> None:
    broker = mosquitto_factory(extra_config=tls_config(
        pki, cert=pki.server_cert, key=pki.server_key, require_certificate=True))
    anonymous = clients(broker, tls={"ca_file": str(pki.ca)})
    with collecting_failed_handshakes():
        with pytest.raises(BrokerConnectionError) as caught:
            anonymous.connect("no-cert")
        assert f"{broker.host}:{broker.port}" in str(caught.value)
        del caught
    authenticated = clients(broker, tls={"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                                         "key_file": str(pki.client_key)})
    round_trip(authenticated, "mtls/ok")
    assert authenticated.connect("mtls-v5")["protocol"] == "5"


def test_a_failed_tls_handshake_leaves_no_socket_open(
        mosquitto_factory: MosquittoFactory, pki: PKI, clients: ClientFactory) -> None:
    broker = mosquitto_factory(extra_config=tls_config(pki, cert=pki.server_cert,
                                                       key=pki.server_key))
    client = clients(broker, tls={"ca_file": str(pki.other_ca)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(BrokerConnectionError):
            client.connect("leaky")
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


# == passwords =============================================================================

@pytest.fixture
def password_broker(mosquitto_factory: MosquittoFactory) -> MosquittoProcess:
    """A private Mosquitto that wants the credentials of docker/mosquitto/passwd (no ACL)."""
    return mosquitto_factory(
        extra_config=f"allow_anonymous false\npassword_file {DOCKER / 'passwd'}")


def tenant(clients: ClientFactory, broker: MosquittoProcess, name: str,
           **options: object) -> MQTTClient:
    """A tenant's client as the acl file prescribes (MQTT 5, so refusals can be reported)."""
    settings: dict[str, object] = {
        "username": name, "password": PASSWORDS[name], "organization_id": name,
        "registry_root": "registry", "topic_prefix": "{organization_id}/", "protocol": "5"}
    settings.update(options)
    return clients(broker, **settings)


def test_good_credentials_connect(password_broker: MosquittoProcess,
                                  clients: ClientFactory) -> None:
    acme = tenant(clients, password_broker, "acme")
    sid = acme.connect("acme-app")["session_id"]
    assert acme.publish(sid, "hello", b"world", qos=1)["success"] is True


@pytest.mark.parametrize(("username", "password"), [
    ("acme", "not-the-password"), ("nobody", "whatever"), (None, None)])
def test_bad_credentials_raise_authentication_error(
        password_broker: MosquittoProcess, clients: ClientFactory,
        username: str | None, password: str | None) -> None:
    client = clients(password_broker, username=username, password=password,
                     registry_root="registry")
    with pytest.raises(AuthenticationError):
        client.connect("intruder")
    # Credentials given to connect() are checked for that session alone.
    acme = tenant(clients, password_broker, "acme")
    with pytest.raises(AuthenticationError):
        acme.connect("second-login", username="acme", password="wrong")


def test_connect_many_reports_bad_credentials_per_session(
        password_broker: MosquittoProcess, clients: ClientFactory) -> None:
    acme = tenant(clients, password_broker, "acme", track_in_registry=False)
    result = acme.connect_many([
        {"client_id": "acme-bad-1", "username": "acme", "password": "not-acmes-password"},
        "acme-good-1",
        {"client_id": "acme-bad-2", "username": "acme", "password": "not-acmes-password"},
        "acme-good-2"])
    assert [s["client_id"] for s in result["sessions"]] == ["acme-good-1", "acme-good-2"]
    assert [e["index"] for e in result["errors"]] == [0, 2]
    assert all("username and password" in e["error"] for e in result["errors"])
    assert "not-acmes-password" not in str(result)


# == the multi-tenant ACL ==================================================================

@pytest.fixture
def secure_broker(mosquitto_factory: MosquittoFactory) -> MosquittoProcess:
    """Mosquitto started from docker/mosquitto/mosquitto-secure.conf with its passwd and acl."""
    return mosquitto_factory(config_file=SECURE_CONF)


def test_a_tenant_cannot_read_another_tenants_topics(secure_broker: MosquittoProcess,
                                                     clients: ClientFactory) -> None:
    """Mosquitto 2.0 grants any subscription and checks "read" per message: a subscription
    reaching into another tenant's tree is accepted (or refused) and receives nothing."""
    acme = tenant(clients, secure_broker, "acme")
    acme.set_retained_message("plans", b"acme only")  # broker topic acme/plans
    acme.register_device("pump-1", "Pump 1", "actuator")

    globex = tenant(clients, secure_broker, "globex", topic_prefix="")
    spy = globex.connect("spy")["session_id"]
    seen: list[str] = []
    done = threading.Event()

    def on_message(topic: str, payload: bytes, qos: int, retained: bool, ts: float) -> None:
        seen.append(topic)
        if topic == "globex/done":
            done.set()

    for topic_filter in ("acme/#", "#", "+/plans", "+/secrets", "registry/acme/#",
                         "registry/#"):
        with contextlib.suppress(AuthorizationError):  # refusing is fine too
            globex.subscribe(spy, topic_filter, qos=1, callback=on_message)
    sid = acme.connect("acme-app")["session_id"]
    acme.publish(sid, "secrets", b"acme only", qos=1)  # broker topic acme/secrets
    acme.publish(sid, "secrets", b"acme only", qos=2)
    globex.publish(spy, "globex/done", b"", qos=1)
    assert done.wait(WAIT)
    assert "globex/done" in seen
    assert [t for t in seen if t.startswith(("acme/", "registry/acme/"))] == []
    assert globex.get_retained_message("acme/plans") == {"found": False}
    assert acme.get_retained_message("plans")["payload"] == b"acme only"


def test_a_tenant_cannot_write_another_tenants_topics(secure_broker: MosquittoProcess,
                                                      clients: ClientFactory) -> None:
    acme = tenant(clients, secure_broker, "acme")
    seen: list[bytes] = []
    done = threading.Event()

    def on_message(topic: str, payload: bytes, qos: int, retained: bool, ts: float) -> None:
        seen.append(payload)
        if payload == b"end":
            done.set()

    sid = acme.connect("acme-listener")["session_id"]
    acme.subscribe(sid, "#", qos=1, callback=on_message)  # broker filter acme/#
    acme.set_retained_message("state", b"acme's")

    globex = tenant(clients, secure_broker, "globex", topic_prefix="")
    forger = globex.connect("forger")["session_id"]
    for qos in (1, 2):
        with pytest.raises(AuthorizationError) as caught:
            globex.publish(forger, "acme/commands", b"forged", qos=qos)
        assert caught.value.topic == "acme/commands"
    result = globex.publish_batch(forger, [{"topic": "acme/commands", "payload": b"forged"},
                                           {"topic": "globex/fine", "payload": b"ok"}])
    assert result["published_count"] == 1 and result["failed_count"] == 1
    with pytest.raises(AuthorizationError):
        globex.set_retained_message("acme/state", b"forged")
    with pytest.raises(AuthorizationError):
        globex.delete_retained_message("acme/state")
    acme.publish(sid, "end", b"end", qos=1)
    assert done.wait(WAIT)
    assert b"forged" not in seen
    assert acme.get_retained_message("state")["payload"] == b"acme's"


def test_a_tenant_cannot_touch_another_tenants_registry(secure_broker: MosquittoProcess,
                                                        clients: ClientFactory) -> None:
    acme = tenant(clients, secure_broker, "acme")
    acme.register_device("pump-1", "Pump 1", "actuator", {"site": "north"})
    acme.update_device_status("pump-1", DeviceStatus.ONLINE)
    before = acme.list_devices()

    globex = tenant(clients, secure_broker, "globex", topic_prefix="")
    globex.register_device("pump-1", "Globex's own pump", "actuator")  # its own registry
    record = Schema("registry/acme").device("pump-1")
    with pytest.raises(AuthorizationError):
        globex.set_retained_message(record, b"\x80")  # overwrite acme's record
    with pytest.raises(AuthorizationError):
        globex.delete_retained_message(record)
    with pytest.raises(AuthorizationError):
        globex.delete_retained_message(Schema("registry/acme").status("pump-1"))
    # Pretending to be acme: the registry cannot even be read, let alone written.
    impostor = tenant(clients, secure_broker, "globex", organization_id="acme",
                      request_timeout=2.0)
    for attempt in (impostor.list_devices, lambda: impostor.unregister_device("pump-1"),
                    lambda: impostor.register_device("pump-2", "Fake", "sensor")):
        with pytest.raises(AuthorizationError):
            attempt()

    fresh = tenant(clients, secure_broker, "acme")  # reads what the broker holds
    after = fresh.list_devices()
    assert after["total_count"] == before["total_count"] == 1
    assert after["devices"][0]["device_name"] == "Pump 1"
    assert after["devices"][0]["metadata"] == {"site": "north"}
    assert after["devices"][0]["status"] == DeviceStatus.ONLINE
    assert globex.get_device_info("pump-1")["device_name"] == "Globex's own pump"


def device_client(clients: ClientFactory, broker: MosquittoProcess) -> MQTTClient:
    """Device thermo-1 of acme, logged in as acme-thermo-1 (see docker/mosquitto/acl)."""
    return clients(broker, username="acme-thermo-1", password=PASSWORDS["acme-thermo-1"],
                   organization_id="acme", registry_root="registry", protocol="5",
                   track_in_registry=False)


def test_a_device_writes_only_its_own_registry_records(secure_broker: MosquittoProcess,
                                                       clients: ClientFactory) -> None:
    acme = tenant(clients, secure_broker, "acme")
    acme.register_device("thermo-1", "Thermostat", "sensor", {"room": "lab"})
    acme.register_device("pump-1", "Pump 1", "actuator")

    device = device_client(clients, secure_broker)
    sid = device.connect("thermo-1", device_id="thermo-1")["session_id"]
    device.publish(sid, "acme/devices/thermo-1/temperature", b"21.5", qos=1)
    device.update_device_status("thermo-1", DeviceStatus.SLEEPING)
    with pytest.raises(AuthorizationError):
        device.publish(sid, "acme/devices/pump-1/command", b"stop", qos=1)
    with pytest.raises(AuthorizationError):
        device.update_device_status("pump-1", DeviceStatus.ERROR)
    with pytest.raises(AuthorizationError):
        device.register_device("thermo-2", "Rogue", "sensor")
    with pytest.raises(AuthorizationError):
        device.update_device_status("thermo-1", DeviceStatus.ONLINE, {"room": "renamed"})
    # The device's own view shows what the broker holds, not its refused writes.
    assert device.get_device_info("pump-1")["status"] == DeviceStatus.UNKNOWN
    assert device.get_device_info("thermo-2") is None

    fresh = tenant(clients, secure_broker, "acme")
    assert fresh.get_device_info("thermo-1")["status"] == DeviceStatus.SLEEPING
    assert fresh.get_device_info("thermo-1")["metadata"] == {"room": "lab"}
    assert fresh.get_device_info("pump-1")["status"] == DeviceStatus.UNKNOWN
    assert fresh.get_device_info("thermo-2") is None
    device.disconnect(sid)  # a clean end marks the device OFFLINE
    assert tenant(clients, secure_broker, "acme").get_device_info(
        "thermo-1")["status"] == DeviceStatus.OFFLINE


# == secrets ===============================================================================

def test_secrets_never_show_in_logs_errors_or_reprs(
        password_broker: MosquittoProcess, mosquitto_factory: MosquittoFactory, pki: PKI,
        clients: ClientFactory, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_password = "w0rong-Pa55word-that-must-not-leak"
    consul_token = "consul-token-that-must-not-leak"
    secrets = [*PASSWORDS.values(), wrong_password, consul_token,
               pki.client_key_pem.decode().splitlines()[1]]
    texts: list[str] = []

    def note(*things: object) -> None:
        texts.extend(f"{t!s} {t!r}" for t in things)

    good = tenant(clients, password_broker, "acme", consul_token=consul_token)
    sid = good.connect("acme-app")["session_id"]
    note(good, good.options, good.get_connection_status(sid), good.health_check(True))
    bad = clients(password_broker, username="acme", password=wrong_password,
                  registry_root="registry")
    with pytest.raises(AuthenticationError) as caught:
        bad.connect("intruder")
    note(caught.value, caught.value.__cause__, caught.value.__context__, bad, bad.options)
    with pytest.raises(AuthenticationError) as caught:
        good.connect("second", username="acme", password=wrong_password)
    note(caught.value, caught.value.__cause__, caught.value.__context__)

    monkeypatch.setenv("MQTT_USER", "acme")
    monkeypatch.setenv("MQTT_PASSWORD", wrong_password)
    from_env = clients(password_broker, registry_root="registry")
    with pytest.raises(AuthenticationError) as caught:
        from_env.connect("env")
    note(caught.value, from_env, from_env.options)

    tls_broker = mosquitto_factory(extra_config=tls_config(pki, cert=pki.server_cert,
                                                           key=pki.server_key))
    settings = TLSSettings(ca_file=str(pki.other_ca), cert_file=str(pki.client_cert),
                           key_file=str(pki.client_key))
    mtls = clients(tls_broker, tls=settings, password=wrong_password, username="x")
    with collecting_failed_handshakes():
        with pytest.raises(MQTTClientError) as failure:
            mtls.connect("tls")
        note(failure.value, failure.value.__cause__, settings, mtls, mtls.options)
        del failure
    secrets.append(str(pki.client_key))  # the key's path is kept out of reprs too

    texts += [r.getMessage() for r in caplog.records]
    texts.append(caplog.text)  # formatted, tracebacks included
    assert any("refused" in t for t in texts)  # the failures were noted
    for secret in secrets:
        leaks = [t for t in texts if secret in t]
        assert not leaks, f"secret {secret[:6]}... leaked in {leaks[0][:200]!r}"
