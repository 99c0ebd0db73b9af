"""``mirror-admin`` on an accounts database: user, group, member, grant, revoke, list."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_admin import run_admin


class AccountsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def admin(self, *args: str) -> tuple[int, str, str]:
        return run_admin(*args)

    def test_manage_and_list(self) -> None:
        db = ["--accounts", os.path.join(self.dir, "a.sqlite")]
        key = self.admin("keygen", os.path.join(self.dir, "alice"))[1].split()[0]
        steps = [
            (["user", "add", "alice", os.path.join(self.dir, "alice")],
             f"user alice {key} added\n"),
            (["group", "add", "staff"], "group staff added\n"),
            (["member", "add", "staff", "alice"], "alice in group staff added\n"),
            (["grant", "@staff", "read", "pub/"], "granted: @staff read pub/\n"),
            (["grant", "anyone", "read", "."], "granted: anyone read .\n"),
            (["grant", "alice", "mirror", "pub", "--server", "Files.Example:9000"],
             "granted: alice mirror pub on Files.Example:9000\n"),
        ]
        for args, expected in steps:
            self.assertEqual(self.admin(*args, *db), (0, expected, ""))
        self.assertEqual(self.admin("list", *db)[1].splitlines(), [
            f"user alice {key} groups staff",
            "group staff",
            "grant @staff read pub",
            "grant alice mirror pub on files.example:9000",
            "grant anyone read .",
        ])
        self.assertEqual(self.admin("revoke", "@staff", "read", "pub", *db)[0], 0)
        self.assertEqual(self.admin("user", "remove", "alice", *db)[0], 0)
        self.assertEqual(self.admin("list", *db)[1].splitlines(),
                         ["group staff", "grant anyone read ."])

    def test_errors_are_one_line(self) -> None:
        db = ["--accounts", os.path.join(self.dir, "a.sqlite")]
        for args in (["user", "add", "bob", "sha256:nothex"], ["user", "add", "bob"],
                     ["grant", "nobody", "read", "x"], ["revoke", "anyone", "read", "x"],
                     ["grant", "anyone", "read", "a/../b"]):
            status, out, err = self.admin(*args, *db)
            self.assertEqual((status, out), (1, ""), args)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("mirror-admin: "), err)
        status, _, err = self.admin("list", "--accounts", os.path.join(self.dir, "none"))
        self.assertEqual(status, 1)
        self.assertIn("no such file", err)
        self.assertEqual(self.admin("grant", "anyone", "write", "x", *db)[0], 2)
        self.assertEqual(self.admin("who", "nohost", "--identity", "x", "--known-hosts",
                                    "y")[0], 2)
