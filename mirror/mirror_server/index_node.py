"""A mirror server in a mirror network: ``--index HOST:PORT`` (with ``--serve``, also
``--advertise``, ``--node``, ``--rescan``, ``--hash-rate``).

- With ``--serve``, the mirror registers what it serves, as a content server does
  (`mirror.index.node_options.add_registration`: the walks, the lease, the background
  hasher for files it did not place itself). Each file its stores place, and each file
  ``--delete`` removes, reaches the index at once through the store's observer seam
  (`mirror.mirror_server.placement.ReactorPlacements`), with the digest the mirror
  verified: nothing to hash again.
- Either way, the index tells who else holds a big file (`IndexHolders`, the service's
  ``holder_finder``): multi-source download from every holder of the same digest. A mirror
  without ``--serve`` only asks (`mirror.index.querier.IndexQuerier`).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from mirror.index import codec
from mirror.index.node_options import IndexOptions, add_registration
from mirror.index.querier import IndexQuerier
from mirror.mirror_server.multi_source import Holder
from mirror.mirror_server.placement import ReactorPlacements
from mirror.mirror_server.service import MirrorService


class Querier(Protocol):
    """`IndexClient` or `IndexQuerier`."""

    def query(self, path: str | None = None, digest: str | None = None
              ) -> Deferred[list[codec.Holder]]: ...


class IndexHolders:
    """A `multi_source.HolderFinder` asking the index: the live holders of the same digest
    (never this mirror itself: ``own_address``/``own_node``), each at the path where it
    serves the file. What they send is verified against the origin's chunk hashes."""

    log = Logger()

    def __init__(self, querier: Querier, own_address: str | None = None,
                 own_node: str | None = None) -> None:
        self.querier = querier
        self.own_address = own_address
        self.own_node = own_node

    def holders(self, path: str, digest: bytes) -> Deferred[list[Holder]]:
        want = digest.hex()
        d = self.querier.query(digest=want)
        return d.addCallback(self._holders, want)

    def _holders(self, rows: list[codec.Holder], want: str) -> list[Holder]:
        found: list[Holder] = []
        for row in rows:
            if row.digest != want or row.address == self.own_address \
                    or row.node == self.own_node:
                continue
            try:
                host, port = codec.parse_address(row.address)
            except codec.BadMessage:
                continue  # checked by the codec already; never trusted further
            found.append(Holder(host, port, row.path))
        return found


def add_index(service: MirrorService, options: IndexOptions, reactor: Any,
              state_dir: str, serving: MultiService | None = None,
              serving_root_fd: int | None = None) -> IndexHolders | None:
    """The services of ``--index`` under ``service`` (none without it); returns the holder
    finder, made the service's unless ``--holder`` named holders explicitly. ``serving``
    holds the ``--serve`` listeners (the default advertised address is the first one's) and
    ``serving_root_fd`` the exported mirror directory."""
    if not options["index"]:
        return None
    querier: Querier
    if serving is not None and serving_root_fd is not None:
        registration = add_registration(service, options, serving_root_fd, service.threads,
                                        reactor, state_dir, listening=serving)
        assert registration is not None  # --index was given
        client = registration.client
        service.placements = ReactorPlacements(registration, reactor.callFromThread)
        querier = client
        finder = IndexHolders(querier, client.address, client.node)
    else:
        only = IndexQuerier(reactor, options["index"])
        only.setServiceParent(service)
        finder = IndexHolders(only)
    if service.holder_finder is None:
        service.holder_finder = finder
    return finder


INDEX_HELP = ("The index (twistd mirror-index) at HOST:PORT: asked who else holds a big file "
              "(multi-source download); with --serve, also told what this mirror serves, "
              "each placed file within a second and each file --delete removes.")
ADVERTISE_HELP = ("HOST:PORT other nodes reach this mirror's --serve at (default: the host "
                  "and port of the first --serve endpoint; required when it is a wildcard "
                  "or UNIX endpoint).")


def check_mirror_index(options: IndexOptions) -> None:
    """The mirror server's --index options (from postOptions): the advertised address is
    that of --serve, and without --serve the mirror only asks."""
    serve: list[str] = options["serve"]
    if serve:
        try:
            options.check_index(serve)
        except usage.UsageError as e:
            raise usage.UsageError(str(e).replace("--listen", "--serve")) from None
        return
    for option in ("advertise", "node"):
        if options[option]:
            raise usage.UsageError(f"--{option} says how this mirror's --serve is "
                                   f"registered: give --serve and --index too")
    if options["index"]:
        try:
            codec.parse_address(options["index"])
        except codec.BadMessage as e:
            raise usage.UsageError(f"--index {options['index']}: {e}") from None
