"""Where an identity lives: a directory holding ``key.pem`` (the private key, mode 0600) and
``cert.pem`` (its certificate). Checked the same way by the daemons, mirror-init and
mirror-admin (standard library only)."""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"


class IdentityError(Exception):
    """A missing or unsafe identity; the message names the file and what to do."""


class IdentityPaths(NamedTuple):
    """The files of an identity directory. (A named tuple: mirror-init imports it, see
    `mirror.wire.control`.)"""

    directory: str
    key: str
    cert: str


def identity_paths(directory: str) -> IdentityPaths:
    """The files of ``directory``, checked: both exist, and the key is a regular file that
    neither the group nor others may read (as ssh insists for its keys)."""
    paths = IdentityPaths(directory, os.path.join(directory, KEY_FILE),
                          os.path.join(directory, CERT_FILE))
    if not os.path.isdir(directory):
        raise IdentityError(f"{directory}: no such directory (create an identity with "
                            f"mirror-admin keygen {directory})")
    for path in (paths.key, paths.cert):
        try:
            st = os.stat(path)
        except OSError as e:
            raise IdentityError(f"{path}: {(e.strerror or str(e)).lower()} (create an "
                                f"identity with mirror-admin keygen DIR)") from None
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path}: not a regular file")
    mode = stat.S_IMODE(os.stat(paths.key).st_mode)
    if mode & 0o077:
        raise IdentityError(f"{paths.key}: the private key is accessible by others (mode "
                            f"{mode:04o}): chmod 600 {paths.key}")
    if not os.access(paths.key, os.R_OK):
        raise IdentityError(f"{paths.key}: not readable")
    return paths
