"""``mirror-admin``: keygen, renew, fingerprint; failures are one line and exit 1, bad
arguments one line and exit 2."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from mirror.admin.cli import run


def run_admin(*args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``mirror-admin ARGS``, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = run(list(args))
        except SystemExit as e:
            status = int(e.code or 0)
    return status, out.getvalue(), err.getvalue()


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="test-admin-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def admin(self, *args: str) -> tuple[int, str, str]:
        return run_admin(*args)

    def test_keygen_renew_fingerprint(self) -> None:
        directory = os.path.join(self.dir, "id")
        status, out, err = self.admin("keygen", directory, "--name", "cs1", "--days", "10")
        self.assertEqual((status, err), (0, ""))
        fingerprint = out.split()[0]
        self.assertRegex(fingerprint, "^sha256:[0-9a-f]{64}$")
        self.assertIn("name cs1", out)
        self.assertEqual(self.admin("fingerprint", directory)[1], fingerprint + "\n")
        cert = os.path.join(directory, "cert.pem")
        self.assertEqual(self.admin("fingerprint", cert)[1], fingerprint + "\n")
        status, out, _ = self.admin("renew", directory)
        self.assertEqual((status, out.split()[0]), (0, fingerprint))

    def test_failures_are_one_line(self) -> None:
        directory = os.path.join(self.dir, "id")
        self.admin("keygen", directory)
        status, _, err = self.admin("keygen", directory)
        self.assertEqual(status, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("already exists", err)
        status, _, err = self.admin("renew", os.path.join(self.dir, "none"))
        self.assertEqual(status, 1)
        self.assertIn("mirror-admin keygen", err)
        status, _, err = self.admin("fingerprint", os.path.join(self.dir, "none.pem"))
        self.assertEqual(status, 1)
        self.assertIn("no such file", err)

    def test_bad_arguments(self) -> None:
        for args in ((), ("keygen",), ("keygen", "d", "--days", "0"), ("frobnicate",)):
            status, _, err = self.admin(*args)
            self.assertEqual(status, 2, args)
            self.assertTrue(err.startswith("mirror-admin: error: "), err)
