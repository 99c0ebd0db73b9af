"""``twistd content-server``: export a directory tree over the content protocol."""

from __future__ import annotations

import os

from twisted.application.service import IService, MultiService
from twisted.python import usage

from mirror.content_server.access import ReadAccess
from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.content_server.protocol import ContentSettings
from mirror.daemon_options import ListenOptions, add_listeners, number, rate, settings_from
from mirror.index.node_options import IndexOptions, StateDirOptions, add_registration
from mirror.security.options import SecurityOptions, access_control, secure_factory
from mirror.threads import DiskThreads
from mirror.web.content_site import content_site_root
from mirror.web.options import WebOptions, add_web

_defaults = ContentSettings()
#: --max-rate's help, shared with the mirror server's (--serve).
MAX_RATE_HELP = ("Bytes per second the daemon sends at most, all connections together (RATE: "
                 "K, M, G are powers of 1024); 0: no cap.")


class Options(ListenOptions, WebOptions, IndexOptions, StateDirOptions, SecurityOptions):
    command = "content-server"
    synopsis = "[options]"
    longdesc = (
        "Export the directory tree under --root to mirror servers: LIST walks it, FETCH "
        "streams a file (or a byte range) with its BLAKE3 digest. Nothing outside the root is ever "
        "listed or served; symbolic links are never followed (listed with their target to a "
        "mirror server that asks for links); FIFOs and devices are neither listed nor followed. "
        "All limits are local settings, never negotiated with clients."
    )
    optParameters = [
        ["root", "d", None, "Directory to export (required)."],
        ["threads", None, 4, "Disk reader threads.", number(int, 1, 256)],
        ["max-requests", None, _defaults.max_requests,
         "Requests in flight per connection.", number(int, 1, 10000)],
        ["max-connections", None, _defaults.max_connections,
         "Connections in total.", number(int, 1, 1000000)],
        ["max-per-peer", None, _defaults.max_per_peer,
         "Connections per client address.", number(int, 1, 1000000)],
        ["frame-timeout", None, _defaults.frame_timeout,
         "Seconds within which a request frame must complete once started.",
         number(float, 0.001)],
        ["idle-timeout", None, _defaults.idle_timeout,
         "Seconds a connection with no request in flight is kept.", number(float, 0.001)],
        ["write-timeout", None, _defaults.write_timeout,
         "Seconds a client may read nothing before it is dropped.", number(float, 0.001)],
        ["max-delay", None, _defaults.max_delay,
         "Largest per-file delay (seconds) a client may ask for.", number(float, 0)],
        ["max-lists-per-connection", None, _defaults.max_lists_per_connection,
         "LISTs walking the tree at once on one connection (more wait their turn).",
         number(int, 1, 10000)],
        ["max-lists", None, _defaults.max_lists,
         "LISTs walking the tree at once in the whole server (more wait their turn).",
         number(int, 1, 1000000)],
        ["max-rate", None, _defaults.max_rate, MAX_RATE_HELP, rate],
        ["hashes-timeout", None, _defaults.hashes_timeout,
         "Seconds within which a HASHES request's chunk hashes must be computed.",
         number(float, 0.001)],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        root = self["root"]
        if not root:
            raise usage.UsageError("--root DIR is required")
        if not os.path.isdir(root):
            raise usage.UsageError(f"--root {root}: not a directory")
        try:
            # What serving needs: the directory opened (as makeService will) and read.
            fd = open_root(root)
            try:
                with os.scandir(fd) as entries:
                    next(entries, None)
            finally:
                os.close(fd)
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            raise usage.UsageError(f"--root {root}: not readable ({reason})") from None
        self.check_web()
        self.check_index(self["listen"])
        self.check_state_dir()
        self.check_security()



def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    top = MultiService()
    threads = DiskThreads(size=options["threads"], name="content-disk")
    threads.setServiceParent(top)
    settings = settings_from(options, ContentSettings)
    factory = ContentServerFactory(open_root(options["root"]), threads, settings)
    access = access_control(options.security, threads, options.command)
    factory.access = ReadAccess(access.accounts, access.audit, access.presence)
    if options["web"]:
        # Before --listen: once the log names the daemon's port, it names the web site's.
        add_web(top, options["web"], content_site_root(factory, options["web"]),
                options.command)
    add_listeners(top, options["listen"],
                  secure_factory(options.security, factory, threads, reactor, access),
                  options.command)
    add_registration(top, options, factory.root_fd, threads, reactor, options["state-dir"])
    return top
