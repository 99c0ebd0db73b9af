"""``--index``, ``--advertise``, ``--node``, ``--rescan``, ``--hash-rate`` (`IndexOptions`)
and the content server's ``--state-dir`` (`StateDirOptions`): a daemon's registration with
an index, mixed into its options (after `ListenOptions`).

A serving mirror server can mix in `IndexOptions` alone (it has a state directory of its
own) and call `add_registration` with its mirror root, its state directory and the services
of its ``--serve`` listeners as ``listening``."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.python import usage

from mirror.daemon_options import Listener, number, rate
from mirror.index import codec
from mirror.index.client import IndexClient
from mirror.index.digest_store import Digests, MemoryDigests, SqliteDigests
from mirror.index.registration import ExportRegistration
from mirror.threads import Threads


def _address(option: str, value: str) -> str:
    try:
        codec.parse_address(value)
    except codec.BadMessage as e:
        raise usage.UsageError(f"--{option} {value}: {e}") from None
    return value


class IndexOptions(usage.Options):
    """Registration with a mirror index (``twistd mirror-index``)."""

    optParameters: list[list[Any]] = [
        ["index", None, None, "Register the export with the index at HOST:PORT."],
        ["advertise", None, None,
         "HOST:PORT other nodes reach this daemon at (default: the host and port of the "
         "first --listen endpoint; required when it is a wildcard or UNIX endpoint)."],
        ["node", None, None, "This node's name at the index (default: the --advertise "
                             "address)."],
        ["rescan", None, 10.0, "Seconds between walks of the export for changes.",
         number(float, 0.1, 86400)],
        ["hash-rate", None, 64 * 2**20,
         "Bytes per second the background hasher reads at most (K, M, G suffixes).", rate],
    ]

    def check_index(self, listen: list[str]) -> None:
        """Check the index options (call from postOptions, after --listen is filled)."""
        for option in ("index", "advertise"):
            if self[option]:
                _address(option, self[option])
        if self["node"]:
            try:
                codec.node_name(self["node"])
            except codec.BadMessage as e:
                raise usage.UsageError(f"--node: {e}") from None
        if not self["index"]:
            return
        if self["hash-rate"] <= 0:
            raise usage.UsageError("--hash-rate: must be more than 0")
        if not self["advertise"]:
            problem = wildcard_problem(listen[0])
            if problem:
                raise usage.UsageError(
                    f"--index needs --advertise HOST:PORT: the first --listen endpoint "
                    f"{listen[0]} {problem}, so other nodes cannot be told where to connect")


class StateDirOptions(usage.Options):
    """The content server's ``--state-dir``: where the digests it computed are kept."""

    optParameters: list[list[Any]] = [
        ["state-dir", None, None,
         "Directory (created 0700) where computed digests are kept across restarts "
         "(default: in memory only)."],
    ]

    def check_state_dir(self) -> None:
        path = self["state-dir"]
        if path and os.path.lexists(path) and not os.path.isdir(path):
            raise usage.UsageError(f"--state-dir {path}: not a directory")


def wildcard_problem(description: str) -> str | None:
    """Why ``description`` names no address to advertise, or None if it names one."""
    endpoint = serverFromString(None, description)
    if isinstance(endpoint, UNIXServerEndpoint):
        return "is a UNIX socket"
    # TCP, TCP6 and SSL endpoints keep the interface only in this attribute.
    interface = getattr(endpoint, "_interface", None)
    if interface is None:
        return "has no address that can be read"
    if not interface:
        return "listens on every address"
    try:
        if ipaddress.ip_address(interface).is_unspecified:
            return "listens on every address"
    except ValueError:
        pass
    return None


def listened_address(parent: MultiService) -> str | None:
    """HOST:PORT of the first `Listener` under ``parent`` (its real port: tcp:0 included)."""
    for service in parent:
        if isinstance(service, Listener) and service.port is not None:
            endpoint = serverFromString(None, service.description)
            host = getattr(endpoint, "_interface", "")
            return codec.format_address(host, service.port.getHost().port)  # type: ignore[attr-defined]
    return None


def add_registration(parent: MultiService, options: IndexOptions, root_fd: int,
                     threads: Threads, reactor: object, state_dir: str | None = None,
                     listening: MultiService | None = None) -> ExportRegistration | None:
    """The services that register ``root_fd``'s tree with ``--index`` (none without it);
    ``registration.client`` is its `IndexClient` (for updates the daemon makes itself).
    Digests are kept in ``state_dir`` (in memory without one). Call after `add_listeners`:
    the default --advertise is the address of the first `Listener` under ``listening``
    (default ``parent``)."""
    if not options["index"]:
        return None
    address = options["advertise"] or listened_address(listening or parent)
    if address is None:
        raise SystemExit("error: --index: no address to advertise; give --advertise HOST:PORT")
    client = IndexClient(reactor, options["index"], options["node"] or address, address)
    digests: Digests = SqliteDigests(state_dir) if state_dir else MemoryDigests()
    registration = ExportRegistration(client, root_fd, threads, digests, reactor,  # type: ignore[arg-type]
                                      rescan=options["rescan"], hash_rate=options["hash-rate"])
    collection: IServiceCollection = parent
    client.setServiceParent(collection)
    registration.setServiceParent(collection)
    return registration
