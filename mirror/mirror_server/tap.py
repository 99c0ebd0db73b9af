"""``twistd mirror-server``: take mirror jobs and fetch trees into a mirror directory."""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile

from twisted.application.service import IService, MultiService
from twisted.python import usage

from mirror.content_server.access import ReadAccess
from mirror.content_server.tap import MAX_RATE_HELP
from mirror.daemon_options import ListenOptions, add_listeners, number, rate, settings_from
from mirror.index.node_options import IndexOptions
from mirror.mirror_server.control import ControlFactory
from mirror.mirror_server.index_node import (
    ADVERTISE_HELP,
    INDEX_HELP,
    add_index,
    check_mirror_index,
)
from mirror.mirror_server.job_access import JobAccess
from mirror.mirror_server.journal import open_journal
from mirror.mirror_server.partials import PartialDir
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.mirror_server.serving import add_serving
from mirror.paths import STATE_DIR_NAME, TEMP_PREFIX
from mirror.security.options import (
    ClientSecurityOptions,
    SecurityOptions,
    access_control,
    client_policy,
    secure_factory,
)
from mirror.threads import DiskThreads
from mirror.web.mirror_site import mirror_site_root
from mirror.web.options import WebOptions, add_web

_defaults = MirrorSettings()


class Options(ListenOptions, WebOptions, SecurityOptions, ClientSecurityOptions, IndexOptions):
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
        ["state-dir", None, None,
         f"Directory of the server's own state (job journal); created mode 0700. "
         f"Default: MIRROR_DIR/{STATE_DIR_NAME}."],
        ["keep-jobs", None, _defaults.keep_jobs,
         "Seconds a finished job is kept for --attach and --jobs.", number(float, 0)],
        ["max-rate", None, 0, "With --serve: " + MAX_RATE_HELP, rate],
        ["multi-source-threshold", None, _defaults.multi_source_threshold,
         "Files of at least this many bytes (K, M, G: powers of 1024) are fetched from "
         "every holder of the same content at once.", rate],
        ["max-holders", None, _defaults.max_holders,
         "Most holders (the SPEC's server included) one file is fetched from at once; "
         "1: never from several.", number(int, 1, 64)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["serve"] = []
        self["holders"] = []
        self.docs["index"] = INDEX_HELP
        self.docs["advertise"] = ADVERTISE_HELP

    def opt_holder(self, address: str) -> None:
        """A serving mirror (HOST:PORT, an IPv6 host in brackets) assumed to hold every
        file at the path where it serves it (ORIGINHOST_ORIGINPORT/PATH): used as a holder
        for multi-source download. For tests and demos; repeatable. Every chunk it sends is
        verified against the hashes of the SPEC's own server."""
        self["holders"].append(parse_holder(address))

    def opt_serve(self, endpoint: str) -> None:
        """Also export the mirror directory, read-only, over the content protocol on
        ENDPOINT (an endpoint description as for --listen; may be given several times):
        other mirrors can mirror from this one like from a content server."""
        before = list(self["listen"])
        try:
            # Checked as --listen checks its endpoints (same messages), then moved here.
            self.opt_listen(endpoint)
        except usage.UsageError as e:
            raise usage.UsageError(str(e).replace("--listen", "--serve", 1)) from None
        self["listen"] = before
        self["serve"].append(endpoint)

    def postOptions(self) -> None:
        super().postOptions()
        mirror_dir = self["mirror-dir"]
        if not mirror_dir:
            raise usage.UsageError("--mirror-dir DIR is required")
        if not os.path.isdir(mirror_dir):
            raise usage.UsageError(f"--mirror-dir {mirror_dir}: not a directory")
        check_writable(mirror_dir, "--mirror-dir")
        if self["max-rate"] and not self["serve"]:
            raise usage.UsageError("--max-rate caps what --serve sends: give --serve too")
        if self["multi-source-threshold"] < 1:
            raise usage.UsageError("--multi-source-threshold: must be at least 1 byte")
        self.check_web()
        check_mirror_index(self)
        if not self["state-dir"]:
            self["state-dir"] = os.path.join(mirror_dir, STATE_DIR_NAME)
        make_state_dir(self["state-dir"])
        check_writable(self["state-dir"], "--state-dir")

        self.check_security()
        self.pins = self.check_known_hosts()


def make_state_dir(directory: str) -> None:
    """Create the state directory (mode 0700) if missing; refuse a link or a non-directory.

    It holds what the server keeps for itself (the job journal): only its owner may read it.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise usage.UsageError(f"--state-dir {directory}: cannot create ({reason})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise usage.UsageError(f"--state-dir {directory}: not a directory (or a link)")


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



def parse_holder(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``) of a --holder; raises `usage.UsageError`."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isascii() or not port.isdigit() \
            or not 1 <= int(port) <= 65535:
        raise usage.UsageError(f"--holder {address}: expected HOST:PORT")
    return host, int(port)


def mirror_settings(options: Options) -> MirrorSettings:
    """The service's settings from the command line."""
    return dataclasses.replace(settings_from(options, MirrorSettings),
                               fsync=not options["no-fsync"],
                               holders=tuple(options["holders"]))


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    # One thread: the journal's commits are ordered, and SQLite is used by one at a time.
    journal_threads = DiskThreads(reactor, 1, name="mirror-journal")
    try:
        journal = open_journal(options["state-dir"], reactor, journal_threads)
        partials = PartialDir(options["state-dir"])
    except Exception as e:  # sqlite3.Error, OSError: a one-line start-up error
        raise SystemExit(f"{options.command}: error: --state-dir {options['state-dir']}: "
                         f"cannot open the job journal ({e})") from None
    service = MirrorService(options["mirror-dir"], mirror_settings(options),
                            journal=journal, partials=partials)
    journal_threads.setServiceParent(service)
    control = ControlFactory(service)
    access = access_control(options.security, service.threads, options.command)
    if access.accounts is not None:
        control.job_access = JobAccess(access.accounts, access.audit)
    if options["web"]:
        # Before --listen: once the log names the control port, it names the web site's.
        add_web(service, options["web"], mirror_site_root(service, control.limiter,
                                                          options["web"]), options.command)

    # Content connections: TLS to pinned content servers, with our identity.
    service.endpoints = client_policy(options.security, options.pins, service.threads,
                                      reactor).endpoint
    add_listeners(service, options["listen"],
                  secure_factory(options.security, control, service.threads, reactor, access),
                  options.command)
    serving: MultiService | None = None
    root_fd = None
    if options["serve"]:
        # Its own parent: the default --advertise is the first --serve endpoint's address.
        serving = MultiService()
        serving.setServiceParent(service)
        served = add_serving(serving, service.mirror_dir, service.threads, options["serve"],
                             options["max-rate"], options.command,
                             lambda f: secure_factory(options.security, f, service.threads,
                                                      reactor, access))
        # A served mirror is read under the mirror server's own grants (none by default);
        # an administrator asks it who is connected (control port included).
        served.access = ReadAccess(access.accounts, access.audit, access.presence)
        root_fd = served.root_fd
    add_index(service, options, reactor, options["state-dir"], serving, root_fd)
    return service
