"""The public surface of isa_common_mqtt: what users import and what ships."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

import isa_common_mqtt
from isa_common_mqtt import _errors


def public_names(module: types.ModuleType) -> set[str]:
    """Names ``module`` offers users (its names are loaded lazily, so ask dir()): no
    private names, no submodules."""
    return {name for name in dir(module) if not name.startswith("_")
            and not isinstance(getattr(module, name), types.ModuleType)}


def test_all_is_sorted() -> None:
    assert list(isa_common_mqtt.__all__) == sorted(isa_common_mqtt.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(isa_common_mqtt.__all__)) == len(isa_common_mqtt.__all__)


def test_all_is_exactly_the_public_names_of_the_package() -> None:
    assert set(isa_common_mqtt.__all__) == public_names(isa_common_mqtt) | {"__version__"}


@pytest.mark.parametrize("name", isa_common_mqtt.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from isa_common_mqtt import {name}", namespace)
    assert namespace[name] is getattr(isa_common_mqtt, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from isa_common_mqtt import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(isa_common_mqtt.__all__)


def test_importing_the_package_loads_neither_paho_nor_asyncio() -> None:
    """Names load on first use: a device or a CLI pays for what it uses."""
    code = ("import sys, isa_common_mqtt; "
            "assert not [m for m in sys.modules if m.startswith(('paho', 'asyncio'))]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_version_is_a_string() -> None:
    assert isinstance(isa_common_mqtt.__version__, str)
    assert isa_common_mqtt.__version__.count(".") >= 1


def test_mqtt_client_is_importable_from_its_module_too() -> None:
    from isa_common_mqtt.mqtt_client import MQTTClient

    assert MQTTClient is isa_common_mqtt.MQTTClient


def test_mqtt_client_module_is_importable_by_name() -> None:
    module = importlib.import_module("isa_common_mqtt.mqtt_client")
    assert module.MQTTClient is isa_common_mqtt.MQTTClient


EXCEPTIONS = [name for name in isa_common_mqtt.__all__
              if inspect.isclass(getattr(isa_common_mqtt, name))
              and issubclass(getattr(isa_common_mqtt, name), BaseException)]


def test_the_exception_tree_is_exported() -> None:
    assert "MQTTClientError" in EXCEPTIONS
    assert len(EXCEPTIONS) >= 20


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_every_exported_exception_derives_from_mqtt_client_error(name: str) -> None:
    assert issubclass(getattr(isa_common_mqtt, name), isa_common_mqtt.MQTTClientError)


def test_every_exception_the_library_defines_is_exported() -> None:
    defined = {name for name, value in vars(_errors).items()
               if inspect.isclass(value) and issubclass(value, BaseException)
               and value.__module__ == _errors.__name__}
    assert defined == set(EXCEPTIONS)


def test_mqtt_client_error_is_a_plain_exception() -> None:
    assert isa_common_mqtt.MQTTClientError.__bases__ == (Exception,)


def test_py_typed_ships_in_the_package() -> None:
    marker = Path(isa_common_mqtt.__file__).parent / "py.typed"
    assert marker.is_file()


def test_consul_is_not_imported_by_importing_the_package() -> None:
    subprocess.run(
        [sys.executable, "-c", "import isa_common_mqtt, sys; assert 'consul' not in sys.modules"],
        check=True, capture_output=True, timeout=60,
    )
