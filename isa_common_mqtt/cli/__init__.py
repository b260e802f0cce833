"""``isa-mqtt``: the command line of isa_common_mqtt, built only on its public API.

Run it as ``isa-mqtt ...`` or ``python -m isa_common_mqtt.cli ...``; docs/cli.md has every
command, its output and the exit codes.
"""

from ._app import main

__all__ = ["main"]
