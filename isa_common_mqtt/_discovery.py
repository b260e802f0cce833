"""Where is the broker: explicit arguments, then the environment, then Consul, then localhost.

:func:`resolve_endpoints` returns a ranked list of :class:`Endpoint`; the session layer tries
them in order and fails over to the next one when a broker refuses. Nothing is cached, so the
session calls it again on every reconnect and sees Consul's current view.

Host and port are resolved like this (the first row that applies wins)::

    host argument given   -> (host, port or 1883)                          "explicit"
    MQTT_HOST set         -> (MQTT_HOST, port or MQTT_PORT or 1883)        "env"
    Consul has healthy    -> (Service.Address or Node.Address,
      "mqtt" instances         port or Service.Port), in Consul's order    "consul"
    otherwise             -> ("localhost", port or MQTT_PORT or 1883)      "default"

A ``port`` argument without a host therefore pins the port of whatever host is discovered:
an explicit value always beats a discovered one. An explicit host ignores the environment
and Consul entirely. ``MQTT_PORT`` belongs to the environment's host and to the localhost
default; Consul instances keep their registered port. ``MQTT_PORT`` is validated whenever
the environment is consulted, so a typo fails at once rather than during a Consul outage.

Consul is always consulted when neither argument nor ``MQTT_HOST`` names a host. The agent is
``ConsulSettings.host``/``port``, else ``CONSUL_HOST``/``CONSUL_PORT``, else 127.0.0.1:8500.
The unconfigured default agent gets a short timeout (``default_agent_timeout``, 0.5 s): on a
machine without Consul the connection is refused at once, so an unconfigured client pays
only the refused attempt and a warning. Consul's order is kept as is (no shuffling), which
makes the result deterministic. ``consul`` is imported lazily: with requests it costs 0.1-0.2 s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidArgumentError

__all__ = ["ConsulSettings", "Endpoint", "resolve_endpoints"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 1883
DEFAULT_CONSUL_HOST = "127.0.0.1"
DEFAULT_CONSUL_PORT = 8500


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker address to try; ``source`` is "explicit", "env", "consul" or "default"."""

    host: str
    port: int
    source: str


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """How to reach the Consul agent; unset fields come from ``CONSUL_*`` variables."""

    host: str | None = None
    port: int | None = None
    token: str | None = field(default=None, repr=False)
    service: str = "mqtt"
    scheme: str = "http"
    timeout: float = 2.0
    default_agent_timeout: float = 0.5


def resolve_endpoints(
    host: str | None,
    port: int | None,
    *,
    env: Mapping[str, str] | None = None,
    consul: ConsulSettings | None = None,
) -> list[Endpoint]:
    """Ranked broker endpoints to try in order; never empty.

    Raises :class:`InvalidArgumentError` for a bad argument or a malformed ``MQTT_PORT`` /
    ``CONSUL_PORT``. Consul failures are not raised: they log a warning and fall back.
    """
    if port is not None:
        _check_port(port, "port")
    if host is not None:
        if not isinstance(host, str) or not host:
            raise InvalidArgumentError(f"host must be a non-empty str, not {host!r}")
        return [Endpoint(host, port or DEFAULT_PORT, "explicit")]

    environ: Mapping[str, str] = os.environ if env is None else env
    env_port = _env_port(environ, "MQTT_PORT")
    env_host = environ.get("MQTT_HOST", "").strip()
    if env_host:
        return [Endpoint(env_host, port or env_port or DEFAULT_PORT, "env")]

    fallback = Endpoint(DEFAULT_HOST, port or env_port or DEFAULT_PORT, "default")
    try:
        return _from_consul(consul or ConsulSettings(), environ, port)
    except _ConsulUnavailable as exc:
        # Reconnects ask again; warn once per agent and reason, not on every attempt.
        level = logging.DEBUG if str(exc) in _warned else logging.WARNING
        _warned.add(str(exc))
        logger.log(level, "%s; using %s:%d", exc, fallback.host, fallback.port)
    return [fallback]


_warned: set[str] = set()


class _ConsulUnavailable(Exception):
    """Consul gave no usable endpoint; the message names the agent and the reason."""


def _check_port(port: object, what: str) -> int:
    """Return ``port`` if it is a TCP port number, else raise naming ``what``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65_535:
        raise InvalidArgumentError(f"{what} must be an int in 1..65535, not {port!r}")
    return port


def _env_port(environ: Mapping[str, str], name: str) -> int | None:
    """The port in variable ``name``, ``None`` when unset or empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgumentError(
            f"environment variable {name}={raw!r} is not a port number"
        ) from None
    return _check_port(value, f"environment variable {name}")


def _from_consul(
    settings: ConsulSettings, environ: Mapping[str, str], port: int | None
) -> list[Endpoint]:
    """Healthy instances of ``settings.service``; raises :class:`_ConsulUnavailable`."""
    if settings.port is not None:
        _check_port(settings.port, "ConsulSettings.port")
    agent_host = settings.host or environ.get("CONSUL_HOST") or None
    agent_port = settings.port or _env_port(environ, "CONSUL_PORT")
    configured = agent_host is not None or agent_port is not None
    agent_host = agent_host or DEFAULT_CONSUL_HOST
    agent_port = agent_port or DEFAULT_CONSUL_PORT
    token = settings.token or environ.get("CONSUL_HTTP_TOKEN") or None
    where = f"Consul agent at {settings.scheme}://{agent_host}:{agent_port}"

    import consul  # lazy: py-consul and requests take 0.1-0.2 s to import

    is_bare_ipv6 = ":" in agent_host and not agent_host.startswith("[")
    client = consul.Consul(
        host=f"[{agent_host}]" if is_bare_ipv6 else agent_host,
        port=agent_port,
        scheme=settings.scheme,
        connections_timeout=settings.timeout if configured else settings.default_agent_timeout,
    )
    client.token = token  # py-consul would read CONSUL_HTTP_TOKEN from os.environ itself
    try:
        _, entries = client.health.service(settings.service, passing=True)
    except (consul.ConsulException, OSError, ValueError) as exc:  # requests errors are OSError
        raise _ConsulUnavailable(f"{where} failed to list service {settings.service!r}: "
                                 f"{exc}") from exc
    finally:
        client.http.session.close()

    found = [ep for entry in entries or [] if (ep := _endpoint(entry, port)) is not None]
    if not found:
        raise _ConsulUnavailable(f"{where} has no healthy instance of service "
                                 f"{settings.service!r}")
    return list(dict.fromkeys(found))  # the same address twice: keep the first


def _endpoint(entry: Any, port: int | None) -> Endpoint | None:
    """The endpoint of one ``/v1/health/service`` entry, ``None`` (logged) when unusable."""
    try:
        service = entry["Service"]
        address = service.get("Address") or entry["Node"]["Address"]
        found_port = port or service["Port"]
    except (KeyError, TypeError, AttributeError):
        address = found_port = None
    if not isinstance(address, str) or not address or isinstance(found_port, bool) \
            or not isinstance(found_port, int) or not 1 <= found_port <= 65_535:
        logger.warning("ignoring Consul entry without a usable address and port: %r", entry)
        return None
    return Endpoint(address, found_port, "consul")
