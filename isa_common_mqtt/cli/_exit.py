"""Exit codes scripts can rely on, and how an exception maps to one line and one code."""

from __future__ import annotations

import enum

from isa_common_mqtt import (
    AuthenticationError,
    AuthorizationError,
    BrokerConnectionError,
    InvalidArgumentError,
    MQTTClientError,
    MQTTTimeoutError,
)


class ExitCode(enum.IntEnum):
    """The exit status of ``isa-mqtt`` (documented in docs/cli.md)."""

    OK = 0
    FAILED = 1
    """The operation failed or the thing asked for does not exist."""
    USAGE = 2
    """The command line is wrong (argparse), or the library rejected an argument."""
    UNREACHABLE = 3
    """The broker could not be reached, or the connection was lost."""
    REFUSED = 4
    """The broker refused the credentials or the ACL refused the operation."""
    TIMEOUT = 5
    """A bounded wait ran out."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT)."""
    BROKEN_PIPE = 141
    """Standard output was closed by the reader (``| head``)."""


class CliError(Exception):
    """A failure the command reports itself, with the exit code it means."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """Collapse whitespace so an error is exactly one line."""
    return " ".join(text.split())


def _with_address(exc: BaseException) -> str:
    """The message of a connection error, naming host:port when the library knows them."""
    message = str(exc) or type(exc).__name__
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if host is not None and port is not None and f"{host}:{port}" not in message:
        message += f" (broker {host}:{port})"
    return message


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the one-line message for an exception of a command."""
    if isinstance(exc, CliError):
        return exc.code, one_line(str(exc))
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return ExitCode.REFUSED, one_line(str(exc))
    if isinstance(exc, (MQTTTimeoutError, TimeoutError)):
        return ExitCode.TIMEOUT, one_line(str(exc) or "timed out")
    if isinstance(exc, (BrokerConnectionError, ConnectionError)):
        return ExitCode.UNREACHABLE, one_line(_with_address(exc))
    if isinstance(exc, InvalidArgumentError):
        return ExitCode.USAGE, one_line(str(exc))
    if isinstance(exc, MQTTClientError):
        return ExitCode.FAILED, one_line(str(exc))
    if isinstance(exc, OSError):
        return ExitCode.FAILED, one_line(str(exc))
    return ExitCode.FAILED, one_line(f"internal error: {type(exc).__name__}: {exc} "
                                     "(run with -v to see the traceback)")
