"""``mirror-init``: submit a mirroring job to a mirror server and report how it went.

Arguments are parsed before the reactor starts, so a bad argument is one line on stderr and
exit status 2. The job itself runs under `twisted.internet.task.react`.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import sys
from collections.abc import Sequence
from typing import IO, NoReturn, cast

from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorCore, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from mirror.initiator.client import ControlClientError, JobResult, submit_job
from mirror.initiator.progress import ProgressDisplay
from mirror.initiator.report import build_report, format_json, format_text
from mirror.initiator.spec import SPEC_HELP, SpecError, parse_specs
from mirror.text import printable
from mirror.wire.control import ControlError, check_host

PROG = "mirror-init"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The mirror server's default control port (its --listen default, tcp:9001).
DEFAULT_PORT = 9001
#: Seconds allowed to establish the connection to the mirror server.
CONNECT_TIMEOUT = 30.0

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
of the file sizes, files skipped (already current), not exported (links, special
files and unrepresentable names the content server left out) and failed, elapsed
time and throughput. With
--json the table is replaced by one JSON object on stdout and the progress goes to
stderr.

Exit status:
  0  every SPEC was mirrored completely;
  1  the job ran but something failed (a content server unreachable, a missing path,
     files that could not be transferred), or the mirror server could not be
     reached, refused the job, dropped the connection, or --timeout expired;
  2  bad arguments.

Example:
  {PROG} -n mirror.example -p 7000 -s files.example:8000:pub/docs,[::1]:8000:.:0.5
"""


class Options(usage.Options):
    """The command line of mirror-init."""

    synopsis = f"Usage: {PROG} [options] -s SPEC[,SPEC...] [-s SPEC ...]"
    # Not None: usage.Options would fall back to __main__.__doc__ and rewrap it.
    longdesc = ""

    optFlags = [
        ["json", None, "Print the final report as one JSON object on stdout; progress goes "
         "to stderr."],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["host"] = "localhost"
        self["port"] = DEFAULT_PORT
        self["sources"] = []
        self["timeout"] = None
        self["specs"] = []

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + HELP_EPILOG

    def opt_version(self) -> NoReturn:
        """Display the version and exit."""
        try:
            version = importlib.metadata.version("mirror")
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        print(f"{PROG} {version}")
        sys.exit(0)

    def opt_host(self, value: str) -> None:
        """The mirror server's host name or address (alias -m) [default: localhost]."""
        host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            self["host"] = check_host(host)
        except ControlError as e:
            raise usage.UsageError(f"bad --host: {e}") from None

    opt_m = opt_host
    opt_n = opt_host  # assigned last: the help shows -n

    def opt_port(self, value: str) -> None:
        """The mirror server's control port [default: 9001]."""
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 65535:
            raise usage.UsageError(f"bad --port {value!r}: expected 1..65535")
        self["port"] = int(value)

    opt_p = opt_port

    def opt_sources(self, value: str) -> None:
        """Comma-separated SPECs to mirror (see below); may be given several times."""
        self["sources"].append(value)

    opt_s = opt_sources

    def opt_timeout(self, value: str) -> None:
        """Give up (exit status 1) if the job is not finished after this many seconds."""
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise usage.UsageError(f"bad --timeout {value!r}: expected positive seconds")
        self["timeout"] = seconds

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r} (SPECs go after -s)")

    def postOptions(self) -> None:
        if not self["sources"]:
            raise usage.UsageError("missing -s/--sources (what to mirror)")
        try:
            self["specs"] = parse_specs(self["sources"])
        except SpecError as e:
            raise usage.UsageError(str(e)) from None


def parse_arguments(argv: Sequence[str], stderr: IO[str] | None = None) -> Options:
    """Parse ``argv`` (without the program name); on error write one line and exit 2."""
    options = Options()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        err = stderr if stderr is not None else sys.stderr
        message = " ".join(str(e).split())
        err.write(f"{PROG}: error: {message}\n")
        err.flush()
        raise SystemExit(EXIT_USAGE) from None
    return options


async def run(
    reactor: IReactorTime,
    options: Options,
    stdout: IO[str],
    stderr: IO[str],
    endpoint: IStreamClientEndpoint | None = None,
) -> int:
    """Run the job described by ``options``; return the exit status.

    ``reactor`` is the clock, and also where the shutdown trigger goes (an ``IReactorCore``:
    its static type cannot say both).
    """
    sources = options["specs"]
    if endpoint is None:
        endpoint = HostnameEndpoint(
            reactor, options["host"], options["port"], timeout=CONNECT_TIMEOUT
        )
    display = ProgressDisplay(stderr if options["json"] else stdout, sources, clock=reactor)
    started = reactor.seconds()
    job = submit_job(reactor, endpoint, sources, display, timeout=options["timeout"])
    # Ctrl-C or SIGTERM stops the reactor: cancel the job first so the display is closed,
    # the connection dropped and the exit status says the job did not finish.
    core = cast(IReactorCore, reactor)
    trigger = core.addSystemEventTrigger("before", "shutdown", job.cancel)
    result: JobResult | None = None
    error: str | None = None
    try:
        result = await job
    except ControlClientError as e:
        error = str(e)
        result = e.result
    except CancelledError:
        error = "interrupted"
    finally:
        core.removeSystemEventTrigger(trigger)
        display.finish()
    elapsed = reactor.seconds() - started
    if error is not None:
        # The reason may quote the server: never a raw ESC or CR on the terminal.
        stderr.write(f"{PROG}: {printable(error)}\n")
        stderr.flush()
    report = build_report(sources, result, elapsed, error)
    if options["json"]:
        stdout.write(format_json(report))
    elif result is not None and (result.job_id is not None or any(result.source_done)):
        stdout.write(format_text(report))
    stdout.flush()
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _start_logging(stderr: IO[str]) -> None:
    """Warnings and errors from Twisted (and our own bugs) to stderr; info is noise here."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _robust_streams() -> None:
    # Remote names in any script must not crash the output on a non-UTF-8 terminal.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


async def _react_main(reactor: IReactorTime, options: Options) -> None:
    status = await run(reactor, options, sys.stdout, sys.stderr)
    if status != EXIT_OK:
        raise SystemExit(status)


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
    _start_logging(sys.stderr)
    react(_react_main, (options,))


if __name__ == "__main__":
    main()
