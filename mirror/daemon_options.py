"""Command-line pieces shared by the two twistd plugins' ``Options``."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

from twisted.application import strports
from twisted.application.service import IServiceCollection
from twisted.internet.protocol import Factory
from twisted.python import usage


def number(kind: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """A coercer for ``usage.Options`` that accepts ``kind`` values in ``[low, high]``."""

    def coerce(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{text!r}: must be {bound}")
        return value

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class ListenOptions(usage.Options):
    """``--listen`` as ``twistd web`` has it (repeatable endpoint strings), plus ``-p PORT``."""

    default_listen = "tcp:9000"
    #: The plugin's name, for error messages.
    command = "twistd"

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on ENDPOINT, a twistd endpoint description (tcp:9000:interface=127.0.0.1,
        unix:/path/sock, ...). May be given several times."""
        self["listen"].append(endpoint)

    def opt_port(self, port: str) -> None:
        """Shorthand for --listen tcp:PORT."""
        try:
            number(int, 1, 65535)(port)
        except ValueError as e:
            raise usage.UsageError(f"--port: {e}") from None
        self["listen"].append(f"tcp:{port}")

    opt_p = opt_port

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Bad arguments: one line on stderr and exit status 2 (twistd itself would print the
        whole help and exit 1)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"{self.command}: error: {e}\n")
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"].append(self.default_listen)


def add_listeners(parent: IServiceCollection, endpoints: list[str], factory: Factory) -> None:
    """One ``strports`` service per endpoint; a port in use fails start-up loudly."""
    for description in endpoints:
        strports.service(description, factory).setServiceParent(parent)
