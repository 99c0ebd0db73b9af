"""Users, groups and grants: the rules (prefixes, groups, anyone), the accounts database, and
their enforcement in the content server (LIST filtered, FETCH/FETCH_MANY/HASHES as if
missing), the mirror server's job check and the TLS gate's admission."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mirror.content_server.access import ReadAccess
from mirror.mirror_server.job_access import JobAccess
from mirror.security.accounts import AccountsError, AccountsStore, AccountsWatch
from mirror.security.audit import AuditLog
from mirror.security.hosts_access import FailureLimiter
from mirror.security.peer import PeerIdentity
from mirror.security.rights import ANYONE, MIRROR, READ, Grant, Rules, covers, normalize_prefix
from mirror.security.tls import PeerPolicy
from mirror.testing import InlineThreads
from mirror.wire import control, frames
from tests.unit.helpers import (
    bundle_result,
    connect_server,
    fetch_result,
    list_result,
    make_factory,
)

ALICE = "sha256:" + "a" * 64
BOB = "sha256:" + "b" * 64
EVE = "sha256:" + "e" * 64


def rules(*grants: Grant) -> Rules:
    return Rules({ALICE: "alice", BOB: "bob"}, {"alice": frozenset({"staff"})}, grants)


class RulesTests(SynchronousTestCase):
    def test_prefix_matches_whole_components(self) -> None:
        self.assertTrue(covers("pub", ("pub",)))
        self.assertTrue(covers("pub", ("pub", "x", "y")))
        self.assertFalse(covers("pub", ("public",)))
        self.assertFalse(covers("pub/a", ("pub",)))
        self.assertTrue(covers("", ("anything",)))

    def test_normalize_prefix(self) -> None:
        self.assertEqual(normalize_prefix("pub/"), "pub")
        self.assertEqual(normalize_prefix("/pub/x/"), "pub/x")
        self.assertEqual(normalize_prefix("."), "")
        self.assertRaises(ValueError, normalize_prefix, "pub/../private")

    def test_group_grant_applies_to_members_only(self) -> None:
        r = rules(Grant("@staff", READ, "pub"))
        self.assertTrue(r.reader("alice").may_read(("pub", "f")))
        self.assertFalse(r.reader("alice").may_read(("private", "f")))
        self.assertFalse(r.reader("bob").may_read(("pub", "f")))
        self.assertFalse(r.reader(None).may_read(("pub", "f")))

    def test_anyone_applies_to_everybody(self) -> None:
        r = rules(Grant(ANYONE, READ, "pub"))
        for user in ("alice", "bob", None):
            self.assertTrue(r.reader(user).may_read(("pub",)))
            self.assertFalse(r.reader(user).may_read(("private",)))
        self.assertTrue(r.anyone_may_read())
        self.assertFalse(rules(Grant("bob", READ, "pub")).anyone_may_read())

    def test_user_grant(self) -> None:
        r = rules(Grant("bob", READ, ""))
        self.assertTrue(r.reader("bob").may_read(("private", "x")))
        self.assertFalse(r.reader("alice").may_read(("private", "x")))

    def test_listing_shows_the_way_to_a_grant(self) -> None:
        reader = rules(Grant("alice", READ, "a/b")).reader("alice")
        self.assertTrue(reader.may_see((), True))
        self.assertTrue(reader.may_see(("a",), True))
        self.assertFalse(reader.may_see(("a",), False))  # a file named like the way is not
        self.assertFalse(reader.may_see(("a", "c"), True))
        self.assertTrue(reader.may_see(("a", "b", "c"), False))
        self.assertFalse(reader.may_read(("a",)))

    def test_mirror_right_per_server_and_prefix(self) -> None:
        r = rules(Grant("@staff", MIRROR, "pub", "h:9000"), Grant("bob", MIRROR, "", "*"))
        self.assertTrue(r.may_mirror("alice", "h:9000", ("pub", "x")))
        self.assertFalse(r.may_mirror("alice", "h:9001", ("pub", "x")))
        self.assertFalse(r.may_mirror("alice", "h:9000", ("private",)))
        self.assertFalse(r.may_mirror("alice", "h:9000", ()))
        self.assertTrue(r.may_mirror("bob", "other:1", ()))
        self.assertFalse(r.may_mirror(None, "h:9000", ("pub",)))
        # A READ grant is not a MIRROR grant.
        self.assertFalse(rules(Grant("alice", READ, "")).may_mirror("alice", "h:9000", ()))

    def test_admin_group(self) -> None:
        r = Rules({ALICE: "alice"}, {"alice": frozenset({"admin"})}, ())
        self.assertTrue(r.is_admin("alice"))
        self.assertFalse(r.is_admin("bob"))
        self.assertFalse(r.is_admin(None))


def make_store(case: SynchronousTestCase) -> AccountsStore:
    store = AccountsStore(os.path.join(case.mktemp() + ".sqlite"))
    case.addCleanup(store.close)
    return store


class AccountsStoreTests(SynchronousTestCase):
    def test_users_groups_grants_round_trip(self) -> None:
        store = make_store(self)
        self.assertEqual(os.stat(store.path).st_mode & 0o777, 0o600)
        store.add_user("alice", ALICE)
        store.add_group("staff")
        store.add_member("staff", "alice")
        store.grant("@staff", READ, "pub/")
        store.grant(ANYONE, READ, ".")
        store.grant("alice", MIRROR, "pub", "LOCALHOST:9000")
        _, r = store.rules()
        self.assertEqual(r.user(ALICE), "alice")
        self.assertEqual(r.groups_of["alice"], frozenset({"staff"}))
        self.assertIn(Grant("@staff", READ, "pub"), r.grants)
        self.assertIn(Grant(ANYONE, READ, ""), r.grants)
        self.assertIn(Grant("alice", MIRROR, "pub", "localhost:9000"), r.grants)
        self.assertEqual(store.describe()[0], f"user alice {ALICE} groups staff")

    def test_errors(self) -> None:
        store = make_store(self)
        store.add_user("alice", ALICE)
        self.assertRaises(AccountsError, store.add_user, "alice", BOB)
        self.assertRaises(AccountsError, store.add_user, "other", ALICE)
        self.assertRaises(AccountsError, store.add_user, "anyone", BOB)
        self.assertRaises(AccountsError, store.add_user, "a b", BOB)
        self.assertRaises(AccountsError, store.grant, "bob", READ, "x")
        self.assertRaises(AccountsError, store.grant, "@nogroup", READ, "x")
        self.assertRaises(AccountsError, store.grant, "alice", "write", "x")
        self.assertRaises(AccountsError, store.grant, "alice", MIRROR, "x", "noport")
        self.assertRaises(AccountsError, store.revoke, "alice", READ, "x")
        self.assertRaises(AccountsError, store.remove_user, "bob")
        self.assertRaises(AccountsError, store.add_member, "staff", "alice")

    def test_removing_a_user_removes_its_grants_and_memberships(self) -> None:
        store = make_store(self)
        store.add_user("alice", ALICE)
        store.add_group("staff")
        store.add_member("staff", "alice")
        store.grant("alice", READ, "pub")
        store.remove_user("alice")
        _, r = store.rules()
        self.assertEqual((r.users, r.groups_of, r.grants), ({}, {}, ()))

    def test_watch_sees_changes_by_another_connection(self) -> None:
        store = make_store(self)
        watch = AccountsWatch(AccountsStore(store.path, create=False), InlineThreads())
        self.addCleanup(watch.store.close)
        changes = []
        watch.on_change.append(lambda: changes.append(1))
        self.assertIsNone(self.successResultOf(watch.current()).user(ALICE))
        self.assertEqual(changes, [])
        store.add_user("alice", ALICE)
        self.assertEqual(self.successResultOf(watch.current()).user(ALICE), "alice")
        self.assertEqual(changes, [1])
        self.successResultOf(watch.current())
        self.assertEqual(changes, [1])  # nothing changed: no reload

    def test_missing_file_is_an_error_without_create(self) -> None:
        self.assertRaises(AccountsError, AccountsStore, self.mktemp(), create=False)


class ContentEnforcementTests(SynchronousTestCase):
    """The content server answers only what the peer may read."""

    def setUp(self) -> None:
        root = self.mktemp()
        for d in ("pub/sub", "private", "public"):
            os.makedirs(os.path.join(root, d))
        for name in ("pub/a", "pub/sub/b", "private/secret", "public/c", "top"):
            with open(os.path.join(root, name), "wb") as f:
                f.write(name.encode())
        self.store = make_store(self)
        self.store.add_user("alice", ALICE)
        self.store.add_user("bob", BOB)
        self.store.add_group("staff")
        self.store.add_member("staff", "alice")
        self.store.grant("@staff", READ, "pub")
        self.audit_path = self.mktemp()
        threads = InlineThreads()
        self.watch = AccountsWatch(self.store, threads)
        self.factory = make_factory(root)
        self.addCleanup(os.close, self.factory.root_fd)
        self.factory.access = ReadAccess(self.watch, AuditLog(self.audit_path, threads))
        self.addCleanup(self.factory.access.audit.close)

    def connect(self, identity: PeerIdentity | None):
        rig = connect_server(self.factory)
        rig.proto.peer_identity = identity
        return rig

    def test_listing_shows_only_what_may_be_read(self) -> None:
        rig = self.connect(PeerIdentity(ALICE, "alice"))
        rig.list(1, "")
        got = list_result(rig.log.take(), 1)
        self.assertEqual(got.names, ["pub", "pub/a", "pub/sub", "pub/sub/b"])
        self.assertEqual(got.end, (4, 0))  # nothing hidden is counted, even as skipped

    def test_forbidden_paths_answer_as_missing(self) -> None:
        rig = self.connect(PeerIdentity(ALICE, "alice"))
        rig.fetch(1, "private/secret")
        rig.fetch(2, "private/none")
        rig.list(3, "private")
        rig.send(frames.HASHES, 4, b"private/secret")
        got = rig.log.take()
        forbidden, missing = fetch_result(got, 1).error, fetch_result(got, 2).error
        self.assertEqual(forbidden[0], frames.E_NOT_FOUND)
        self.assertEqual(forbidden[1].replace("secret", "X"), missing[1].replace("none", "X"))
        self.assertEqual(list_result(got, 3).error[0], frames.E_NOT_FOUND)
        self.assertEqual(fetch_result(got, 4).error[0], frames.E_NOT_FOUND)
        rig.fetch(5, "pub/a")
        self.assertEqual(fetch_result(rig.log.take(), 5).data, b"pub/a")
        with open(self.audit_path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 4)  # a forbidden path is refused, missing or not
        self.assertIn(f"refused user alice ({ALICE}) from 127.0.0.1: FETCH private/secret",
                      lines[0])

    def test_fetch_many_items(self) -> None:
        rig = self.connect(PeerIdentity(ALICE, "alice"))
        rig.fetch_many(1, [("pub/a", 5), ("private/secret", 14)])
        items = bundle_result(rig.log.take(), 1).items
        self.assertEqual(bytes(items[0].data), b"pub/a")
        self.assertEqual(items[1].code, frames.E_NOT_FOUND)

    def test_user_without_grant_and_anonymous_see_nothing(self) -> None:
        for identity in (PeerIdentity(BOB, "bob"), PeerIdentity(None)):
            rig = self.connect(identity)
            rig.list(1, "")
            self.assertEqual(list_result(rig.log.take(), 1).error[0], frames.E_NOT_FOUND)
            rig.fetch(2, "pub/a")
            self.assertEqual(fetch_result(rig.log.take(), 2).error[0], frames.E_NOT_FOUND)

    def test_anyone_grant(self) -> None:
        self.store.grant(ANYONE, READ, "public")
        rig = self.connect(PeerIdentity(None))
        rig.list(1, "")
        self.assertEqual(list_result(rig.log.take(), 1).names, ["public", "public/c"])

    def test_revoked_grant_applies_from_the_next_request(self) -> None:
        rig = self.connect(PeerIdentity(ALICE, "alice"))
        rig.fetch(1, "pub/a")
        self.assertIsNone(fetch_result(rig.log.take(), 1).error)
        self.store.revoke("@staff", READ, "pub")
        rig.fetch(2, "pub/a")
        self.assertEqual(fetch_result(rig.log.take(), 2).error[0], frames.E_NOT_FOUND)
        self.store.grant("@staff", READ, "pub")
        self.store.remove_member("staff", "alice")
        rig.fetch(3, "pub/a")
        self.assertEqual(fetch_result(rig.log.take(), 3).error[0], frames.E_NOT_FOUND)

    def test_cursor_cannot_walk_a_hidden_directory(self) -> None:
        rig = self.connect(PeerIdentity(ALICE, "alice"))
        # After private/0 come private/secret (hidden) and pub (shown).
        rig.send(frames.LIST, 1, frames.encode_list("", "private/0"))
        self.assertEqual(list_result(rig.log.take(), 1).names,
                         ["pub", "pub/a", "pub/sub", "pub/sub/b"])


class JobAccessTests(SynchronousTestCase):
    def test_mirror_right_is_needed_for_each_spec(self) -> None:
        store = make_store(self)
        store.add_user("alice", ALICE)
        store.add_user("bob", BOB)
        store.grant("alice", MIRROR, "pub", "127.0.0.1:9000")
        access = JobAccess(AccountsWatch(store, InlineThreads()), None)

        def why(identity: PeerIdentity | None, *specs: tuple[str, int, str]) -> str | None:
            sources = [control.SourceRequest(h, p, path, 0.0) for h, p, path in specs]
            return self.successResultOf(access.refusal(identity, "127.0.0.1", sources))

        alice = PeerIdentity(ALICE, "alice")
        self.assertIsNone(why(alice, ("127.0.0.1", 9000, "pub/x")))
        self.assertEqual(why(alice, ("127.0.0.1", 9000, "pub"), ("127.0.0.1", 9000, "")),
                         "not allowed to mirror 127.0.0.1:9000:. (no mirror grant)")
        self.assertIsNotNone(why(alice, ("127.0.0.1", 9001, "pub")))
        self.assertIsNotNone(why(PeerIdentity(BOB, "bob"), ("127.0.0.1", 9000, "pub")))
        self.assertIsNotNone(why(None, ("127.0.0.1", 9000, "pub")))


class AdmissionTests(SynchronousTestCase):
    """`PeerPolicy` with --accounts: users in, anonymous only for `anyone`, removed users out."""

    def setUp(self) -> None:
        self.store = make_store(self)
        self.store.add_user("alice", ALICE)
        self.policy = PeerPolicy(None, InlineThreads(), FailureLimiter(lambda: 0.0),
                                 AccountsWatch(self.store, InlineThreads()))

    def admit(self, fingerprint: str | None) -> PeerIdentity | None:
        return self.successResultOf(self.policy.authenticate(fingerprint))

    def test_users_only(self) -> None:
        self.assertEqual(self.admit(ALICE), PeerIdentity(ALICE, "alice"))
        self.assertIsNone(self.admit(EVE))
        self.assertIsNone(self.admit(None))

    def test_anonymous_with_an_anyone_read_grant(self) -> None:
        self.store.grant(ANYONE, READ, "pub")
        self.assertEqual(self.admit(None), PeerIdentity(None))
        self.assertIsNone(self.admit(EVE))  # a key nobody knows is still refused

    def test_removed_user_is_dropped(self) -> None:
        identity = self.admit(ALICE)
        assert identity is not None
        dropped = []
        self.policy.on_change.append(lambda: dropped.append(self.policy.allows(identity)))
        self.store.remove_user("alice")
        self.successResultOf(self.policy.reload())
        self.assertEqual(dropped, [False])




class UnreadableAccountsTests(SynchronousTestCase):
    def test_an_unreadable_database_grants_nothing(self) -> None:
        store = make_store(self)
        store.add_user("alice", ALICE)
        store.grant("alice", READ, ".")
        watch = AccountsWatch(store, InlineThreads())
        self.assertEqual(self.successResultOf(watch.current()).user(ALICE), "alice")
        store.db.execute("DROP TABLE meta")
        rules = self.successResultOf(watch.current())
        self.assertIsNone(rules.user(ALICE))
        self.assertFalse(rules.reader("alice").may_read(("x",)))
