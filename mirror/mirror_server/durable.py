"""Durable commits: what makes a placed file survive a power loss or a kernel crash.

The atomic rename alone protects against a killed *process*; after a crash of the machine
the rename may have reached the disk before the file's data did (a final name holding an
empty or partial file), or not at all. So, as rsync's ``--fsync`` and every database do, the
store fsyncs a file before renaming it into place, and its directory after (which makes the
rename itself durable). For the small files of a bundle (`MirrorStore.write_many`) each
directory is synced once for all its files of the bundle, not once per file.

``--no-fsync`` (`Durability` with ``enabled=False``) skips both: faster on a disk, and a
crash of the machine may then leave files missing, empty or partial at their final names.
Everything here is blocking and runs in the disk threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable


class Durability:
    """How the store makes a commit durable: ``fsync`` (``os.fsync``; tests pass a recorder)
    of the file before its rename and of its directory after, or nothing if not ``enabled``.
    """

    def __init__(self, enabled: bool = True, fsync: Callable[[int], None] | None = None
                 ) -> None:
        self.enabled = enabled
        self._fsync = fsync

    def _sync(self, fd: int) -> None:
        # os.fsync looked up at each call, so that a test can record the real path's calls.
        (self._fsync or os.fsync)(fd)

    def file(self, fd: int) -> None:
        """The file's data and attributes are on disk (before it is renamed into place)."""
        if self.enabled:
            self._sync(fd)

    def directory(self, dir_fd: int) -> None:
        """The directory's entries (a rename into it) are on disk."""
        if self.enabled:
            self._sync(dir_fd)

