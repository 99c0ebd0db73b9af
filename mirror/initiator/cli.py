"""``mirror-init``: submit a mirroring job to a mirror server and report how it went.

Standard library only (argparse, a blocking socket): Twisted's import alone cost more than a
whole no-op job. Arguments are parsed first, so a bad argument is one line on stderr and
exit status 2; then `run` follows the job on one connection (`mirror.initiator.client`).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import IO, NoReturn

from mirror.filters import Pattern, PatternError, Rule, read_exclude_from
from mirror.initiator.client import (
    CONNECT_TIMEOUT,
    ControlClientError,
    JobDetached,
    JobInterrupted,
    JobResult,
    attach_job,
    connect,
    submit_job,
)
from mirror.initiator.endpoint import EndpointError, connect_unix, parse_client_endpoint
from mirror.initiator.jobs_cli import JOBS_HELP, add_job_options, check_job_options, run_request
from mirror.initiator.progress import ProgressDisplay
from mirror.initiator.report import build_report, format_json, format_text
from mirror.initiator.secure import (
    add_arguments as add_tls_arguments,
    check_arguments,
    explain,
    secure_opener,
)
from mirror.initiator.spec import SPEC_HELP, SpecError, parse_specs
from mirror.job_options import JobOptions
from mirror.rates import RATE_SYNTAX, parse_rate
from mirror.text import printable
from mirror.wire.control import ControlError, check_host

PROG = "mirror-init"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: --max-delete was exceeded: nothing was deleted.
EXIT_MAX_DELETE = 3
#: Interrupted (Ctrl-C, SIGTERM): the job followed was cancelled, or --attach detached.
EXIT_INTERRUPTED = 130

#: The mirror server's default control port (its --listen default, tcp:9001).
DEFAULT_PORT = 9001

HELP_EPILOG = f"""
{SPEC_HELP}

The mirror server fetches every SPEC in parallel and writes it under
MIRROR_DIR/HOST_PORT/PATH: MIRROR_DIR is the mirror server's --mirror-dir, HOST_PORT
the content server's host and port as given in the SPEC joined by '_' (for
files.example:8000:pub/docs, MIRROR_DIR/files.example_8000/pub/docs).

While the job runs, a progress line is shown (redrawn in place on a terminal, a line
per second otherwise) and every error is printed as it happens, naming the SPEC and
the path. At the end a table gives, per SPEC and in total: files and directories
transferred, bytes, mean, variance, standard deviation and coefficient of variation
of the file sizes, files skipped (already current), not exported (special files,
unrepresentable names, and links if the content server is too old to list them)
and failed, elapsed time and throughput; then, per SPEC with links, the links
placed and skipped, and why each skipped one was (an absolute target, or one
leading outside MIRROR_DIR/HOST_PORT/PATH: rsync's --safe-links). With
--json the table is replaced by one JSON object on stdout and the progress goes to
stderr.

Exit status:
  0  every SPEC was mirrored completely;
  1  the job ran but something failed (a content server unreachable, a missing path,
     files that could not be transferred), or the mirror server could not be
     reached, refused the job, dropped the connection, or --timeout expired (the job
     is then cancelled);
  2  bad arguments (a bad --include/--exclude pattern included);
  3  --delete would have deleted more than --max-delete entries: nothing was
     deleted (the rest of the job ran);
  130  interrupted (Ctrl-C or SIGTERM): the job was cancelled (what was done is
     reported), or, with --attach, mirror-init detached and the job goes on.
{JOBS_HELP}

Filters: --include and --exclude (and the lines of --exclude-from files) form
one list in command-line order; the first pattern that matches a path decides,
and a path none matches is mirrored. Paths are relative to the SPEC's PATH. A
pattern without '/' matches the last component, one with '/' the whole path
(anchored to PATH if it starts with '/'); a trailing '/' matches directories
only; '*' stays within a component, '**' crosses them, '?' is one character,
'dir/***' is dir and everything below it. An excluded directory is not
descended; excluded paths are neither fetched nor deleted.

Example:
  {PROG} -n mirror.example -p 7000 -s files.example:8000:pub/docs,[::1]:8000:.:0.5
"""


class UsageError(Exception):
    """A bad command line; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's own complaints (a missing value, say) go the same way as ours.
        raise UsageError(message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Option lists as ``-n, --host HOST``, not ``-n HOST, --host HOST``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + metavar


class _Version(argparse.Action):
    """``--version``: importlib.metadata is only imported when asked (it is slow to load)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:
        import importlib.metadata

        try:
            version = importlib.metadata.version("mirror")
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        print(f"{PROG} {version}")
        parser.exit(0)


class _FilterAction(argparse.Action):
    """--include, --exclude, --exclude-from: one list of rules in command-line order."""

    def __init__(self, *args: object, include: bool | None, **kwargs: object) -> None:
        self.include = include
        kwargs["dest"] = "filters"
        kwargs["default"] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        rules = list(getattr(namespace, "filters", None) or [])
        value = str(values)
        try:
            if self.include is None:
                rules += _read_patterns(value)
            else:
                Pattern(value)
                rules.append(Rule(self.include, value))
        except PatternError as e:
            raise UsageError(f"{option_string}: {e}") from None
        namespace.filters = rules


def _read_patterns(path: str) -> list[Rule]:
    try:
        with open(path, encoding="utf-8") as f:
            return read_exclude_from(f, path)
    except OSError as e:
        raise UsageError(f"cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path!r} is not UTF-8 text") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of mirror-init (values are checked by `parse_arguments`)."""
    parser = _Parser(
        prog=PROG,
        usage=(f"{PROG} [options] [--detach] -s SPEC[,SPEC...] [-s SPEC ...]\n"
               f"       {PROG} [options] --attach ID | --jobs | --cancel ID"),
        epilog=HELP_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "-n", "--host", metavar="HOST",
        help="The mirror server's host name or address (alias -m) [default: localhost].",
    )
    parser.add_argument("-m", dest="host", help=argparse.SUPPRESS)
    parser.add_argument(
        "-p", "--port", metavar="PORT",
        help=f"The mirror server's control port [default: {DEFAULT_PORT}].",
    )
    parser.add_argument(
        "--connect", metavar="ENDPOINT",
        help="The mirror server as an endpoint string, instead of -n/-p: unix:PATH (its "
             "--listen unix:PATH) or tcp:HOST:PORT.",
    )
    parser.add_argument(
        "-s", "--sources", metavar="SPECS", action="append", default=[],
        help="Comma-separated SPECs to mirror (see below); may be given several times.",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS",
        help="Give up (exit status 1) if the job is not finished after this many seconds; "
             "a job this mirror-init submitted is then cancelled.",
    )
    parser.add_argument(
        "--bwlimit", metavar="RATE",
        help=f"Limit the job's transfers to RATE in total: {RATE_SYNTAX}; 0: no limit "
             "[default: 0]. (rsync reads a plain number as KiB/s; here it is bytes/s.)",
    )
    parser.add_argument(
        "--no-links", dest="links", action="store_const", const="skip", default="safe",
        help="Mirror no symbolic link (each is counted as skipped). By default a link is "
             "recreated when its target stays inside the mirrored tree (rsync --links "
             "--safe-links); others are skipped and reported.",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="Print the final report as one JSON object on stdout; progress goes to stderr.",
    )
    parser.add_argument(
        "--delete", action="store_true",
        help="Once a SPEC's transfers are done and its listing had no error, delete "
             "from the mirror what the source no longer has (rsync --delete-after).",
    )
    parser.add_argument(
        "--max-delete", metavar="N",
        help="With --delete: if the job would delete more than N entries, delete "
             "nothing and exit with status 3.",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="List and compare only: report what would be transferred, replaced and "
             "deleted; change nothing in the mirror.",
    )
    parser.add_argument(
        "--no-multi-source", action="store_true",
        help="Fetch every file from its SPEC's server only, never big files from other "
             "holders of the same content at once (the mirror server's multi-source "
             "download).",
    )
    parser.add_argument(
        "--include", metavar="PATTERN", action=_FilterAction, include=True,
        help="Mirror paths matching PATTERN (if no earlier pattern decided); repeatable.",
    )
    parser.add_argument(
        "--exclude", metavar="PATTERN", action=_FilterAction, include=False,
        help="Neither fetch nor delete paths matching PATTERN (if no earlier pattern "
             "decided); repeatable.",
    )
    parser.add_argument(
        "--exclude-from", metavar="FILE", action=_FilterAction, include=None,
        help="Exclude the patterns of FILE, one a line ('#' or ';' comments, '+ PATTERN' "
             "includes, '- PATTERN' excludes); repeatable.",
    )
    add_job_options(parser)
    add_tls_arguments(parser)
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="Display the version and exit.")
    return parser


def _check_options(options: argparse.Namespace, extra: list[str]) -> None:
    """Check and convert the values argparse left as strings; raise `UsageError`."""
    _check_connect(options)
    host = options.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        options.host = check_host(host)
    except ControlError as e:
        raise UsageError(f"bad --host: {e}") from None
    port = options.port
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"bad --port {port!r}: expected 1..65535")
    options.port = int(port)
    if options.timeout is not None:
        try:
            seconds = float(options.timeout)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise UsageError(f"bad --timeout {options.timeout!r}: expected positive seconds")
        options.timeout = seconds
    max_delete = None
    if options.max_delete is not None:
        text = options.max_delete
        if not text.isascii() or not text.isdigit() or int(text) >= 2**64:
            raise UsageError(f"bad --max-delete {text!r}: expected a number of entries")
        max_delete = int(text)
    try:
        options.job_options = JobOptions(options.delete, max_delete, options.dry_run,
                                         tuple(options.filters),
                                         multi_source=not options.no_multi_source)
        options.job_options.filter_list()
    except PatternError as e:
        raise UsageError(str(e)) from None
    try:
        options.bwlimit = parse_rate(options.bwlimit) if options.bwlimit is not None else 0
    except ValueError as e:
        raise UsageError(f"bad --bwlimit: {e}") from None
    for arg in extra:
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"option {arg.split('=', 1)[0]} not recognized")
    if extra:
        raise UsageError(f"unexpected argument {extra[0]!r} (SPECs go after -s)")
    # Before the early return below: --attach, --jobs and --cancel use the pins too.
    tls_error = check_arguments(options)
    if tls_error is not None:
        raise UsageError(tls_error)
    if check_job_options(options, UsageError):
        _refuse_new_job_options(options)
        return  # --attach, --jobs, --cancel: no SPEC
    if not options.sources:
        raise UsageError("missing -s/--sources (what to mirror)")
    try:
        options.specs = parse_specs(options.sources)
    except SpecError as e:
        raise UsageError(str(e)) from None


def _refuse_new_job_options(options: argparse.Namespace) -> None:
    """--attach, --jobs and --cancel act on jobs as they were submitted: an option of a new
    job would be silently ignored, so it is refused."""
    given = [flag for flag, on in (
        ("--delete", options.delete), ("--max-delete", options.max_delete is not None),
        ("--dry-run", options.dry_run), ("--include/--exclude", bool(options.filters)),
        ("--bwlimit", options.bwlimit), ("--no-links", options.links != "safe")) if on]
    if given:
        raise UsageError(f"{given[0]} is for a new job (-s): not with --attach, --jobs or "
                         "--cancel")


def _check_connect(options: argparse.Namespace) -> None:
    """``--connect`` instead of ``-n``/``-p``: it sets ``host`` and ``port`` (TCP) or
    ``unix_socket`` (None unless given)."""
    options.unix_socket = None
    if options.connect is None:
        options.host = "localhost" if options.host is None else options.host
        options.port = str(DEFAULT_PORT) if options.port is None else options.port
        return
    if options.host is not None or options.port is not None:
        raise UsageError("--connect names the mirror server: give it without -n/-p")
    try:
        endpoint = parse_client_endpoint(options.connect)
    except EndpointError as e:
        raise UsageError(f"bad --connect {e}") from None
    if endpoint.path is not None:
        # Unused for a UNIX socket, but still checked below.
        options.host, options.port = "localhost", str(DEFAULT_PORT)
        options.unix_socket = endpoint.path
    else:
        options.host, options.port = endpoint.host, str(endpoint.port)


def parse_arguments(argv: Sequence[str], stderr: IO[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (without the program name); on error write one line and exit 2.

    The result has ``host``, ``port``, ``unix_socket`` (a path, or None), ``specs``
    (`SourceRequest`s), ``timeout`` (seconds or None), ``bwlimit`` (bytes per second, 0:
    none), ``json`` and ``job_options`` (`JobOptions`).
    """
    try:
        options, extra = build_parser().parse_known_args(list(argv))
        _check_options(options, extra)
    except UsageError as e:
        err = stderr if stderr is not None else sys.stderr
        message = " ".join(str(e).split())
        err.write(f"{PROG}: error: {message}\n")
        err.flush()
        raise SystemExit(EXIT_USAGE) from None
    return options


Opener = Callable[[str, int, "float | None"], socket.socket]


def run(
    options: argparse.Namespace,
    stdout: IO[str],
    stderr: IO[str],
    opener: Opener | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run the job described by ``options``; return the exit status.

    ``opener(host, port, timeout)`` makes the connection (tests pass a socket pair's end);
    by default TCP, or the UNIX socket of ``--connect unix:PATH``.
    """
    if opener is None:
        opener = _unix_opener(options.unix_socket) if options.unix_socket else connect
        opener = secure_opener(options, opener)
    if options.jobs or options.cancel is not None:
        return run_request(options, stdout, stderr, opener)
    attach = options.attach
    sources = [] if attach is not None else options.specs
    display = ProgressDisplay(stderr if options.json else stdout, sources, clock=clock)
    started = clock()
    result: JobResult | None = None
    error: str | None = None
    interrupted = detached = False
    try:
        if attach is not None:
            result = attach_job(
                options.host, options.port, attach, display, timeout=options.timeout,
                connect_timeout=CONNECT_TIMEOUT, wake=display.wake_at, tick=display.poll,
                clock=clock, opener=opener,
            )  # fmt: skip
            sources = result.sources
        else:
            result = submit_job(
                options.host, options.port, sources, display, timeout=options.timeout,
                connect_timeout=CONNECT_TIMEOUT, wake=display.wake_at, tick=display.poll,
                clock=clock, opener=opener, detach=options.detach,
                options=options.job_options, bwlimit=options.bwlimit,
                links=getattr(options, "links", "safe"),
            )  # fmt: skip
    except ControlClientError as e:
        error = explain(e, options)
        result = e.result
        interrupted = isinstance(e, JobInterrupted)
        detached = isinstance(e, JobDetached)
        if result is not None and attach is not None:
            sources = result.sources
    finally:
        display.finish()
    if options.detach and error is None and result is not None:
        stdout.write(f"{result.job_id}\n")  # the id alone, for scripts
        stdout.flush()
        return EXIT_OK
    if detached:
        stderr.write(f"{PROG}: {printable(error or 'detached')}; the job goes on. "
                     "Re-attach with: "
                     f"{PROG} -n {options.host} -p {options.port} --attach {attach}\n")
        stderr.flush()
        return EXIT_INTERRUPTED
    elapsed = clock() - started
    if attach is not None and result is not None:
        # Attached late: the job's own time (its longest source), as if followed from its
        # start, not just the time spent attached.
        elapsed = max([elapsed] + [d.elapsed for d in result.source_done if d is not None])
    if error is not None:
        # The reason may quote the server: never a raw ESC or CR on the terminal.
        stderr.write(f"{PROG}: {printable(error)}\n")
        stderr.flush()
    report = build_report(sources, result, elapsed, error,
                          dry_run=options.job_options.dry_run)
    if options.json:
        stdout.write(format_json(report))
    elif result is not None and (result.job_id is not None or any(result.source_done)):
        stdout.write(format_text(report))
    if result is not None and result.resumed and not options.json:
        stdout.write(f"the job was resumed after {result.resumed} restart(s) of the mirror "
                     "server: files placed after its last journal commit before a restart "
                     "are counted as skipped\n")
    stdout.flush()
    if interrupted:
        return EXIT_INTERRUPTED
    if result is not None and result.deletion_refused:
        return EXIT_MAX_DELETE
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _unix_opener(path: str) -> Opener:
    def opener(host: str, port: int, timeout: float | None) -> socket.socket:
        return connect_unix(path, timeout)

    return opener


def _robust_streams() -> None:
    # Remote names in any script must not crash the output on a non-UTF-8 terminal.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the job as Ctrl-C does: the report says "interrupted", status 1.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console script entry point; exits with the status described in ``--help``."""
    _robust_streams()
    try:
        options = parse_arguments(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # "--help | head": the reader left; stop quietly, and keep the interpreter's final
        # flush from raising again on the dead pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        status = run(options, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        # Outside the job itself (while the report is written): no traceback either.
        sys.stderr.write(f"{PROG}: interrupted\n")
        status = EXIT_INTERRUPTED
    sys.exit(status)


if __name__ == "__main__":
    main()
