"""``--audit-log FILE``: one line per refusal (who, from where, what, why), appended.

Lines are written with one ``os.write`` on a descriptor opened ``O_APPEND``: a line is never
interleaved with another, whichever thread writes it. Daemons write from their disk threads
(`AuditLog.refused` schedules it), the FETCH_MANY reader from the thread it runs in
(`AuditLog.write`).
"""

from __future__ import annotations

import os
import time

from twisted.logger import Logger

from mirror.text import printable
from mirror.threads import Threads


class AuditLog:
    """The open audit log of a daemon."""

    log = Logger()

    def __init__(self, path: str, threads: Threads) -> None:
        self.path = os.path.abspath(path)
        self.threads = threads
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o600)

    def line(self, peer: str, what: str, why: str) -> bytes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return f"{stamp} refused {peer}: {printable(what)}: {why}\n".encode()

    def write(self, peer: str, what: str, why: str) -> None:
        """Append one line now (blocking: from a thread)."""
        os.write(self._fd, self.line(peer, what, why))

    def refused(self, peer: str, what: str, why: str) -> None:
        """Append one line, in a disk thread (from the reactor)."""
        self.threads.run(self.write, peer, what, why).addErrback(
            lambda f: self.log.error("cannot write --audit-log {path}: {e}", path=self.path,
                                     e=f.getErrorMessage()))

    def close(self) -> None:
        os.close(self._fd)
