"""Command-line pieces shared by the two twistd plugins' ``Options``."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.application.service import IServiceCollection, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from mirror.endpoint_strings import escaped_ipv6
from mirror.rates import parse_rate

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


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


def rate(text: str) -> int:
    """A coercer for a RATE option (`mirror.rates`: ``500K``, ``8M``; 0 means none)."""
    return parse_rate(text)


rate.coerceDoc = ""  # type: ignore[attr-defined]


class _NamedCoerce(usage.CoerceParameter):
    """A bad value is reported with the option's name ("--workers: '0': must be ..."), not
    as usage.Options' anonymous "Parameter type enforcement failed: ..."."""

    def dispatch(self, parameterName: str, value: str) -> None:
        try:
            coerced = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{parameterName}: {e}") from None
        self.options.opts[parameterName] = coerced


class ListenOptions(usage.Options):
    """``--listen`` as ``twistd web`` has it (repeatable endpoint strings), plus ``-p PORT``."""

    default_listen = "tcp:9000"
    #: The plugin's name, for error messages.
    command = "twistd"

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.docs["listen"] = (self.docs.get("listen") or "") + (
            f" Default: {self.default_listen}.")
        for name, handler in list(self._dispatch.items()):
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _NamedCoerce(self, handler.coerce)

    def opt_listen(self, endpoint: str) -> None:
        """Listen on ENDPOINT, a twistd endpoint description (tcp:9000:interface=127.0.0.1,
        unix:/path/sock, ...). May be given several times. Colons inside a value are
        escaped with a backslash: an IPv6 address is tcp:9000:interface=\\:\\:1."""
        try:
            # Parsed only (no reactor is needed for that): a typo is a usage error now
            # rather than a traceback later.
            serverFromString(None, endpoint)
        except Exception as e:
            escaped = escaped_ipv6(endpoint)
            if escaped is not None:
                raise usage.UsageError(
                    f"--listen {endpoint}: the colons of an IPv6 address must be escaped "
                    f"with a backslash in an endpoint string: --listen '{escaped}'") from None
            raise usage.UsageError(f"--listen {endpoint}: {e}") from None
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


class Listener(Service):
    """One listening endpoint; listening starts in `add_listeners`, the service stops it."""

    log = Logger()

    def __init__(self, description: str, command: str, reactor: IReactorCore) -> None:
        self.description = description
        self.command = command
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.failure: Failure | None = None
        #: Set once `add_listeners` has looked at the outcome: a later failure is logged.
        self.reported = False

    def listened(self, result: IListeningPort | Failure) -> None:
        if not isinstance(result, Failure):
            self.port = result
            return
        self.failure = result
        if self.reported:
            # An endpoint that only fails later (none of Twisted's own does).
            self.log.critical("{command}: cannot listen on {endpoint}: {reason}",
                              command=self.command, endpoint=self.description,
                              reason=_reason(result))
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        # The parent MultiService turns an exception raised here into a failed Deferred.
        return self.port.stopListening()


def _reason(failure: Failure) -> str:
    """Why listening failed, in a few words ("address already in use")."""
    error = failure.value
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


def settings_from(options: usage.Options, settings_class: type[T]) -> T:
    """The settings dataclass filled from the options named like its fields (``max_delay``
    <- ``--max-delay``); fields without an option keep their defaults."""
    values = {}
    for field in dataclasses.fields(settings_class):
        name = field.name.replace("_", "-")
        if name in options:
            values[field.name] = options[name]
    return settings_class(**values)


def add_listeners(parent: IServiceCollection, endpoints: list[str], factory: IProtocolFactory,
                  command: str = "twistd", reactor: IReactorCore | None = None) -> None:
    """Listen on every endpoint now, from ``makeService``; one `Listener` each under ``parent``.

    twistd's own strports services listen only in ``privilegedStartService``, after it has
    forked and sent output to its log: a port in use then ends in a traceback in the log and,
    daemonized, "An error has occurred" on the terminal. Listening here, before any of that
    (twistd runs ``makeService`` as the invoking user too, before dropping privileges), a
    failure is one line on stderr, ``COMMAND: error: cannot listen on ENDPOINT: REASON``,
    and exit status 1.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    for description in endpoints:
        listener = Listener(description, command, reactor)
        try:
            d = serverFromString(reactor, description).listen(factory)
        except Exception:
            listener.listened(Failure())
        else:
            d.addBoth(listener.listened)
        listener.reported = True
        if listener.failure is not None:
            raise SystemExit(f"{command}: error: cannot listen on {description}: "
                             f"{_reason(listener.failure)}")
        listener.setServiceParent(parent)
