"""``twistd mirror-index``: who holds what, for a mirror network."""

from __future__ import annotations

import os
import sqlite3

from twisted.application.service import IService, MultiService
from twisted.python import usage

from mirror.daemon_options import ListenOptions, add_listeners, number, settings_from
from mirror.index.database import is_postgres, open_registry
from mirror.index.expiry import ExpiryService
from mirror.index.factory import IndexFactory
from mirror.index.overview import OverviewService
from mirror.index.registry import Limits
from mirror.index.service import RegistryService
from mirror.index.settings import IndexSettings
from mirror.web.index_site import index_site_root
from mirror.web.options import WebOptions, add_web

_defaults = IndexSettings()


class Options(ListenOptions, WebOptions):
    command = "mirror-index"
    default_listen = "tcp:9002"
    synopsis = "[options] --db PATH|postgresql://..."
    longdesc = (
        "Keep a registry of which node (content server or serving mirror) holds which file, "
        "with its size, mtime and BLAKE3 digest; nodes register over the index protocol and "
        "renew their lease while they run; mirror-where asks who holds a path or digest."
    )
    optParameters = [
        ["db", None, None, "SQLite file (created on first start), or a postgresql:// URL."],
        ["lease", None, _defaults.lease,
         "Seconds a registration lasts unless renewed.", number(float, 1, 86400)],
        ["max-nodes", None, _defaults.max_nodes, "Live nodes at most.",
         number(int, 1, 10**9)],
        ["max-files-per-node", None, _defaults.max_files_per_node,
         "Files one node may register.", number(int, 1, 10**12)],
        ["max-answer", None, _defaults.max_answer, "Rows one WHERE answer holds at most.",
         number(int, 1, 10**9)],
        ["max-connections", None, _defaults.max_connections, "Connections in total.",
         number(int, 1, 1000000)],
        ["max-per-peer", None, _defaults.max_per_peer, "Connections per client address.",
         number(int, 1, 1000000)],
        ["idle-timeout", None, _defaults.idle_timeout,
         "Seconds a connection with no request is kept.", number(float, 0.001)],
        ["frame-timeout", None, _defaults.frame_timeout,
         "Seconds within which a frame must complete once started.", number(float, 0.001)],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        db = self["db"]
        if not db:
            raise usage.UsageError("--db PATH (or postgresql://...) is required")
        self.check_web()
        check_database(db)


def check_database(db: str) -> None:
    """Open ``db`` once now, so that a wrong path or an unreachable server is one clear
    line at start, not a traceback in the log later."""
    if is_postgres(db):
        try:
            import psycopg

            psycopg.connect(db, connect_timeout=10).close()
        except Exception as e:
            raise usage.UsageError(f"--db: cannot connect to PostgreSQL: "
                                   f"{str(e).strip().splitlines()[0]}") from None
        return
    parent = os.path.dirname(os.path.abspath(db))
    if not os.path.isdir(parent):
        raise usage.UsageError(f"--db {db}: directory {parent} does not exist")
    try:
        sqlite3.connect(db).close()
    except sqlite3.Error as e:
        raise usage.UsageError(f"--db {db}: cannot open ({e})") from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    top = MultiService()
    settings = settings_from(options, IndexSettings)
    limits = Limits(max_nodes=settings.max_nodes,
                    max_files_per_node=settings.max_files_per_node)
    registry, pool = open_registry(options["db"], reactor, limits)
    RegistryService(registry, pool, reactor).setServiceParent(top)
    ExpiryService(registry, reactor, max(1.0, settings.lease / 4)).setServiceParent(top)
    factory = IndexFactory(registry, reactor, settings)
    if options["web"]:
        # Before --listen: once the log names the index's port, it names the web site's.
        overview = OverviewService(registry, reactor)
        overview.setServiceParent(top)
        add_web(top, options["web"], index_site_root(factory, overview, options["web"]),
                options.command)
    add_listeners(top, options["listen"], factory, options.command)
    return top
