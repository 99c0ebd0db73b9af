"""``twistd mirror-server``: take mirror jobs and fetch trees into a mirror directory."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from twisted.application.service import IService
from twisted.python import usage

from mirror.daemon_options import ListenOptions, add_listeners, number, rate, settings_from
from mirror.mirror_server.control import ControlFactory
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.paths import TEMP_PREFIX
from mirror.security.options import (
    ClientSecurityOptions,
    SecurityOptions,
    client_policy,
    secure_factory,
)
from mirror.web.mirror_site import mirror_site_root
from mirror.web.options import WebOptions, add_web

_defaults = MirrorSettings()


class Options(ListenOptions, WebOptions, SecurityOptions, ClientSecurityOptions):
    command = "mirror-server"
    default_listen = "tcp:9001"
    synopsis = "[options]"
    longdesc = (
        "Accept jobs from mirror-init. For each SPEC of a job a manager LISTs the tree on its "
        "content server and feeds a shared bounded queue; --workers workers FETCH the files. "
        "Each file lands at MIRROR_DIR/HOST_PORT/PATH: written to a temporary name beside it, "
        "verified (size and BLAKE3 digest), then renamed into place with its mode and mtime. Files "
        "whose size and mtime already match are skipped. Nothing is ever written outside "
        "MIRROR_DIR/HOST_PORT, whatever a content server sends."
    )
    optFlags = [
        ["no-fsync", None, "Do not fsync placed files and their directories: faster, but a "
         "power loss or kernel crash may leave files missing, empty or partial at their final "
         "names (a killed process never does)."],
    ]
    optParameters = [
        ["mirror-dir", "m", None, "Directory to mirror into (required)."],
        ["workers", "w", _defaults.workers, "Worker count (files in flight).",
         number(int, 1, 1024)],
        ["queue-size", None, _defaults.queue_size, "Capacity of the work queue.",
         number(int, 1, 1000000)],
        ["connections-per-source", None, _defaults.connections_per_source,
         "Connections to each content server of a job for FETCH.", number(int, 1, 64)],
        ["disk-threads", None, _defaults.disk_threads, "File writer threads.",
         number(int, 1, 256)],
        ["stall-timeout", None, _defaults.stall_timeout,
         "Seconds without data after which a transfer fails.", number(float, 0.001)],
        ["min-rate", None, _defaults.min_rate,
         "A content connection that delivers less than RATE bytes per second (K, M, G: "
         "powers of 1024) over --min-rate-window seconds of transfer is dropped, and its "
         "files retried once on another connection; 0: no minimum.", rate],
        ["min-rate-window", None, _defaults.min_rate_window,
         "Seconds of transfer over which --min-rate is measured.", number(float, 0.001)],
        ["max-file-size", None, _defaults.max_file_size,
         "Largest file (bytes) accepted from a content server.", number(int, 0)],
        ["max-connections", None, _defaults.max_connections,
         "Control connections in total.", number(int, 1, 1000000)],
        ["max-per-peer", None, _defaults.max_per_peer,
         "Control connections per client address.", number(int, 1, 1000000)],
        ["submit-timeout", None, _defaults.submit_timeout,
         "Seconds within which a client must submit its job.", number(float, 0.001)],
        ["write-timeout", None, _defaults.write_timeout,
         "Seconds a client may read nothing before it is dropped.", number(float, 0.001)],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        mirror_dir = self["mirror-dir"]
        if not mirror_dir:
            raise usage.UsageError("--mirror-dir DIR is required")
        if not os.path.isdir(mirror_dir):
            raise usage.UsageError(f"--mirror-dir {mirror_dir}: not a directory")
        check_writable(mirror_dir, "--mirror-dir")
        self.check_web()
        self.check_security()
        self.pins = self.check_known_hosts()


def check_writable(directory: str, flag: str) -> None:
    """Create and remove a file in ``directory``, or raise `usage.UsageError` saying why not.

    Trying is the only honest test: ``os.access`` checks the real, not the effective, user
    and cannot see every reason a create fails, and the error says why (read-only file
    system, ...). The probe has the temporary-file prefix, so one left behind by a crash is
    swept at the next start.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe-", dir=directory)
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise usage.UsageError(f"{flag} {directory}: not writable ({reason})") from None
    os.close(fd)
    os.unlink(probe)



def mirror_settings(options: Options) -> MirrorSettings:
    """The service's settings from the command line."""
    return dataclasses.replace(settings_from(options, MirrorSettings),
                               fsync=not options["no-fsync"])


def makeService(options: Options) -> IService:
    service = MirrorService(options["mirror-dir"], mirror_settings(options))
    control = ControlFactory(service)
    if options["web"]:
        # Before --listen: once the log names the control port, it names the web site's.
        add_web(service, options["web"], mirror_site_root(service, control.limiter,
                                                          options["web"]), options.command)
    from twisted.internet import reactor

    # Content connections: TLS to pinned content servers, with our identity.
    service.endpoints = client_policy(options.security, options.pins, service.threads,
                                      reactor).endpoint
    add_listeners(service, options["listen"],
                  secure_factory(options.security, control, service.threads, reactor),
                  options.command)
    return service
