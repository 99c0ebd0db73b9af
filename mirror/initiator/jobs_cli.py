"""mirror-init's job management options: ``--detach``, ``--attach ID``, ``--jobs``,
``--cancel ID`` (standard library only, as the rest of mirror-init).

`add_job_options` adds them to the parser, `check_job_options` checks them (they exclude each
other, and all but ``--detach`` take no SPEC), `run_request` runs ``--jobs`` and
``--cancel``; ``--attach`` and ``--detach`` follow (or leave) a job as `mirror.initiator.cli`
does.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable
from typing import IO

from mirror.initiator.client import ControlClientError, JobRefused, cancel_job, list_jobs
from mirror.initiator.report import format_bytes
from mirror.text import printable
from mirror.wire.control import ControlError, JobState, check_job_id

JOBS_HELP = """
Jobs survive a restart of the mirror server, which keeps them in its journal:
  --detach      submit the job and print its id alone on stdout (exit 0 once submitted);
  --attach ID   follow job ID (running or finished): progress, then its report, and the
                exit status as if it had been followed from the start. Ctrl-C only
                detaches (exit 130; the job goes on);
  --jobs        list the jobs the mirror server keeps (running, and finished for its
                --keep-jobs), oldest first;
  --cancel ID   cancel job ID (exit 1 if it is unknown or already finished).
Ctrl-C, SIGTERM or --timeout while following a job submitted by this mirror-init cancel
it: transfers in flight stop, nothing partial is left at a final name, and the report
says what was done. A lost connection never cancels a job.
"""


def add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detach", action="store_true",
                        help="Submit the job, print its id alone on stdout, and exit.")
    parser.add_argument("--attach", metavar="ID",
                        help="Follow the job ID (running or finished) instead of submitting "
                             "one; no SPEC.")
    parser.add_argument("--jobs", action="store_true",
                        help="List the jobs the mirror server keeps, with their state.")
    parser.add_argument("--cancel", metavar="ID", help="Cancel the job ID.")


def check_job_options(options: argparse.Namespace, usage_error: type[Exception]) -> bool:
    """Check the job options; True if one that takes no SPEC was given (``options.specs``
    is then empty)."""
    chosen = [name for name, given in (("--detach", options.detach),
                                       ("--attach", options.attach is not None),
                                       ("--jobs", options.jobs),
                                       ("--cancel", options.cancel is not None)) if given]
    if len(chosen) > 1:
        raise usage_error(f"{chosen[0]} and {chosen[1]} cannot be used together")
    for name in ("attach", "cancel"):
        value = getattr(options, name)
        if value is not None:
            try:
                check_job_id(value)
            except ControlError as e:
                raise usage_error(f"bad --{name} {value!r}: {e}") from None
    if chosen and chosen[0] != "--detach":
        if options.sources:
            raise usage_error(f"{chosen[0]} takes no SPEC (-s)")
        options.specs = []
        return True
    return False


def format_jobs(states: list[JobState]) -> str:
    """The answer to ``--jobs`` as a table, oldest first."""
    rows = [["ID", "STATE", "SUBMITTED", "FILES", "BYTES", "SPECS"]]
    for s in states:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.submitted))
        rows.append([printable(s.job_id), s.state, when, str(s.files_done),
                     format_bytes(s.bytes_done), printable(s.specs)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]])
             for r in rows]
    return "\n".join(lines) + "\n"


Opener = Callable[[str, int, "float | None"], socket.socket]


def run_request(options: argparse.Namespace, stdout: IO[str], stderr: IO[str],
                opener: Opener) -> int:
    """``--jobs`` or ``--cancel ID``; returns the exit status (0, or 1 with one line)."""
    try:
        if options.jobs:
            stdout.write(format_jobs(list_jobs(options.host, options.port, opener)))
        else:
            cancel_job(options.host, options.port, options.cancel, opener)
            stdout.write(f"job {printable(options.cancel)} cancelled\n")
    except JobRefused as e:
        what = "list the jobs" if options.jobs else f"cancel job {options.cancel}"
        stderr.write(f"mirror-init: cannot {printable(what)}: {printable(e.reason)}\n")
        stderr.flush()
        return 1
    except ControlClientError as e:
        stderr.write(f"mirror-init: {printable(str(e))}\n")
        stderr.flush()
        return 1
    stdout.flush()
    return 0
