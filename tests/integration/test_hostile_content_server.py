"""A hostile or broken content server against a real mirror server (issue 4).

Each test scripts a `HostileServer` (tests/integration/hostile_server.py) to send one kind of
bad LIST entry or lying FETCH answer, runs a job on an in-process mirror server, and checks the
outcome the issue asks for, always the same:

- the job fails with a clear one-line error for that source (index 0) naming the entry;
- nothing is written outside ``MIRROR_DIR/HOST_PORT`` (everything else under the test's
  directory is snapshotted before and compared after);
- no partial or unverified file at a final name: a file that was there keeps its old content;
- no ``.mirror-tmp-*`` file left anywhere;
- the daemon is alive: a good job against a real content server runs right after, in the same
  test, and mirrors its tree exactly.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from mirror import paths
from mirror.hashing import digest_of
from mirror.mirror_server.receiver import SMALL_FILE
from mirror.wire import frames
from tests.integration.conftest import deep_scratch_dir, run_job, source
from tests.integration.hostile_server import (  # noqa: F401  (fixture)
    BUNDLE_LIES,
    MTIME_NS,
    Fetch,
    Gate,
    HostileServer,
    ListEntry,
    absurd_size,
    canonical,
    changed,
    d,
    drop,
    f,
    huge_frame,
    long,
    normal,
    short,
    stall,
    wrong_digest,
)
from tests.integration.waiting import wait_for
from tests.trees import assert_same_tree, make_sample_tree

pytestmark = pytest.mark.timeout(30)

#: The mirror server's stall_timeout where a test is about stalls, seconds: each stalled
#: file waits it out twice (it is retried once).
STALL = 0.3
#: Everywhere else: long enough that a loaded machine never looks like a stalled server.
NO_STALL = 20.0

SMALL = b"small new content\n"
BIG = digest_of(b"seed") * ((SMALL_FILE * 3) // 32)  # streamed via a temp file
OLD = b"the old content, which must survive\n"


# -- the harness ---------------------------------------------------------------------------


def snapshot(root: Path, exclude: set[Path]) -> dict[str, Any]:
    """Every name under ``root`` (links not followed) with its kind and content or target."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n not in exclude]
        for name in dirnames + filenames:
            p = here / name
            if p in exclude:
                continue
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
            else:
                out[rel] = ("other", st.st_mode)
    return out


def temporaries(root: Path) -> list[str]:
    """Every ``.mirror-tmp-*`` name under ``root`` (find(1) copes with any depth)."""
    out = subprocess.run(["find", str(root), "-name", paths.TEMP_PREFIX + "*", "-print0"],
                         check=True, capture_output=True).stdout
    return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]


class Harness:
    """One mirror server, one hostile content server, the checks every case ends with."""

    def __init__(self, tmp_path: Path, start_hostile: Any, start_content: Any,
                 start_mirror: Any, **settings: Any) -> None:
        self.tmp = tmp_path
        self.mirror = tmp_path / "mirror"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "sentinel").write_bytes(b"must not change\n")
        self._start_hostile = start_hostile
        self._start_content = start_content
        settings.setdefault("stall_timeout", NO_STALL)
        self.mport, self.service = start_mirror(str(self.mirror), **settings)
        self.script = HostileServer()
        self.port = self._start_hostile(self.script)
        self.top = self.mirror / f"127.0.0.1_{self.port}"
        self._before: dict[str, Any] | None = None

    def seed(self, rel: str, content: bytes = OLD) -> Path:
        """A file that exists in the mirror before the job (with a different mtime)."""
        p = self.top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        return p

    async def run(self, *entries: ListEntry, path: str = "", **fetch: Fetch) -> Any:
        self.script.entries = list(entries)
        self.script.fetch.update({k.replace("__", "/"): v for k, v in fetch.items()})
        self._before = snapshot(self.tmp, {self.top})
        return await run_job(self.mport, [source(self.port, path)], timeout=20)

    def check_safe(self, result: Any) -> None:
        """Nothing outside the top changed, no temporaries, every message one clean line."""
        assert snapshot(self.tmp, {self.top}) == self._before
        assert temporaries(self.tmp) == []
        for e in result.errors:
            assert e.index == 0
            assert "\n" not in e.message and "\r" not in e.message
            assert "Traceback" not in e.message and "internal error" not in e.message
            assert e.message.isprintable(), e.message

    async def check_alive(self) -> None:
        """The daemon still serves: a good job against a real content server mirrors exactly."""
        # Read by each new job: a short stall timeout of the test before is not for this one.
        self.service.settings = dataclasses.replace(self.service.settings,
                                                    stall_timeout=NO_STALL)
        src = make_sample_tree(self.tmp / "good-src", big_size=300_000)
        cport, _ = self._start_content(str(src))
        result = await run_job(self.mport, [source(cport)], timeout=20)
        assert result.ok, result.errors
        assert_same_tree(src, self.mirror / f"127.0.0.1_{cport}")
        assert temporaries(self.tmp) == []


@pytest.fixture
def harness(tmp_path: Path, start_hostile_server: Any, start_content_server: Any,
            start_mirror_server: Any) -> Callable[..., Harness]:
    def make(base: Path | None = None, **settings: Any) -> Harness:
        return Harness(base or tmp_path, start_hostile_server, start_content_server,
                       start_mirror_server, **settings)

    return make


def errors_for(result: Any, path: str | None) -> list[str]:
    return [e.message for e in result.errors if e.path == path]


# -- LIST: names that must never reach the disk -------------------------------------------

_OUTSIDE = "{outside}"  # replaced by the test's own directory outside the mirror

BAD_NAMES = [
    ("absolute", f"{_OUTSIDE}/pwned", "absolute"),
    ("absolute-root", "/pwned-by-mirror-test", "absolute"),
    ("dotdot", "../pwned", "'..'"),
    ("dotdot-deep", "../../outside/pwned", "'..'"),
    ("dotdot-inner", "docs/../../pwned", "'..'"),
    ("dotdot-alone", "..", "'..'"),
    ("dot", "docs/./x", "'.'"),
    ("backslash", "..\\pwned", "backslash"),
    ("nul", b"docs/x\x00.txt", "U+0000"),
    ("nul-alone", b"\x00", "U+0000"),
    ("newline", "docs/evil\nERROR 0 - fake", "U+000A"),
    ("carriage-return", "docs/evil\r", "U+000D"),
    ("escape", "docs/\x1b[2Jclear", "U+001B"),
    ("tab", "docs/a\tb", "U+0009"),
    ("delete", "docs/a\x7f", "U+007F"),
    ("c1-control", "docs/a\x85b", "U+0085"),
    ("invalid-utf8", b"docs/\xff\xfe", "UTF-8"),
    ("lone-surrogate", b"docs/\xed\xa0\x80", "UTF-8"),
    ("empty", b"", "empty"),
    ("empty-component", "docs//x", "empty path component"),
    ("trailing-slash", "docs/x/", "empty path component"),
    ("component-256", "x" * 256, "longer than 255"),
    ("component-256-multibyte", "é" * 128, "longer than 255"),
    ("path-4097", "/".join(["d" * 200] * 20) + "/" + "x" * 77, "longer than 4096"),
    ("temp-name", paths.TEMP_PREFIX + "0123456789abcdef", "reserved prefix"),
    ("temp-name-nested", "docs/" + paths.TEMP_PREFIX + "x", "reserved prefix"),
    ("temp-name-dir", paths.TEMP_PREFIX + "dir/x", "reserved prefix"),
]


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("case, name, why", BAD_NAMES, ids=[c[0] for c in BAD_NAMES])
@pytest_twisted.ensureDeferred
async def test_unsafe_list_name_refused(harness, case, name, why, kind):
    h = harness()
    if isinstance(name, str):
        name = name.replace(_OUTSIDE, str(h.outside))
    raw = name.encode("utf-8") if isinstance(name, str) else name
    if case == "path-4097":
        assert len(raw) == 4097
    bad = f(raw, b"pwned\n") if kind == "file" else d(raw)
    result = await h.run(d("docs"), bad, f("docs/good", SMALL))
    assert not result.ok
    shown = paths.display_name(raw)
    messages = errors_for(result, shown)
    assert len(messages) == 1, result.errors
    assert why in messages[0] and "refused" in messages[0]
    assert len(result.errors) == 1
    assert result.source_done[0].failed == 1
    # The bad name was never even asked for; the good file next to it arrived.
    assert h.script.fetched() == ["docs/good"]
    assert (h.top / "docs" / "good").read_bytes() == SMALL
    assert sorted(os.listdir(h.top)) == ["docs"]
    assert sorted(os.listdir(h.top / "docs")) == ["good"]
    assert not os.path.exists("/pwned-by-mirror-test")
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_unknown_entry_kind_is_a_protocol_error(harness):
    h = harness()
    result = await h.run(d("docs"), ListEntry(7, b"docs/weird", 5), f("docs/good", SMALL))
    assert not result.ok
    [message] = errors_for(result, None)
    assert "cannot list" in message and "unknown LIST entry kind 7" in message
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_a_flood_of_bad_names_is_reported_in_bounded_lines(harness, monkeypatch):
    from mirror.mirror_server import job as job_module

    monkeypatch.setattr(job_module, "MAX_REPORTED_ERRORS", 5)
    h = harness()
    bad = [f(f"../escape{i:03d}", SMALL) for i in range(40)]
    result = await h.run(d("docs"), *bad, f("docs/good", SMALL))
    assert not result.ok
    messages = [e.message for e in result.errors]
    assert len(messages) == 6
    assert messages[-1] == "35 more errors not shown"
    assert result.source_done[0].failed == 40
    assert (h.top / "docs" / "good").read_bytes() == SMALL
    h.check_safe(result)
    await h.check_alive()


# -- LIST: the same path twice, a parent that is a file, outside the request -------------


@pytest_twisted.ensureDeferred
async def test_dir_then_file_same_path(harness):
    h = harness()
    result = await h.run(d("x"), f("x", b"file"), f("x/inner", SMALL))
    assert not result.ok
    assert ["listed twice; refused"] == errors_for(result, "x")
    assert len(result.errors) == 1
    assert (h.top / "x").is_dir() and not (h.top / "x").is_symlink()
    assert (h.top / "x" / "inner").read_bytes() == SMALL
    assert h.script.fetched() == ["x/inner"]
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_file_then_dir_same_path(harness):
    h = harness()
    result = await h.run(f("x", b"file"), d("x"), f("x/inner", SMALL), d("x/sub"),
                         f("x/sub/deep", SMALL))
    assert not result.ok
    assert errors_for(result, "x") == ["listed twice; refused"]
    for child in ("x/inner", "x/sub", "x/sub/deep"):
        assert errors_for(result, child) == ["its parent was listed as a file; refused"]
    assert len(result.errors) == 4
    assert (h.top / "x").read_bytes() == b"file"
    assert h.script.fetched() == ["x"]
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_file_twice(harness):
    h = harness()
    result = await h.run(f("x", b"first"), f("x", b"second"))
    assert not result.ok
    assert errors_for(result, "x") == ["listed twice; refused"]
    assert h.script.fetched() == ["x"]
    assert (h.top / "x").read_bytes() == b"first"
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_dir_twice(harness):
    h = harness()
    result = await h.run(d("x"), d("x", mode=0o700), f("x/a", SMALL))
    assert not result.ok
    assert errors_for(result, "x") == ["listed twice; refused"]
    assert stat.S_IMODE((h.top / "x").stat().st_mode) == 0o755
    assert (h.top / "x" / "a").read_bytes() == SMALL
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_entry_whose_parent_was_listed_as_a_file(harness):
    h = harness()
    result = await h.run(f("p", b"plain file"), f("p/child", b"c"), f("p/q/r", b"r"))
    assert not result.ok
    assert errors_for(result, "p/child") == ["its parent was listed as a file; refused"]
    assert errors_for(result, "p/q/r") == ["its parent was listed as a file; refused"]
    assert (h.top / "p").read_bytes() == b"plain file"
    assert h.script.fetched() == ["p"]
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_file_listed_after_its_own_children(harness):
    """``a/b`` first (``a`` implied), then ``a`` as a file: refused at once. (Before, both were
    queued, and whichever worker finished first decided what ``a`` became.) A directory
    listed after its contents is out of canonical order too: refused (issue 9)."""
    h = harness()
    result = await h.run(f("a/b", SMALL), f("a", b"file"), f("c/d/e", SMALL), f("c/d", b"f"),
                         d("c"))
    assert not result.ok
    for name in ("a", "c/d"):
        assert errors_for(result, name) == [
            "listed as a file after entries inside it; refused"]
    assert errors_for(result, "c") == ["listed as a directory after entries inside it; refused"]
    assert len(result.errors) == 3
    assert sorted(h.script.fetched()) == ["a/b", "c/d/e"]
    assert (h.top / "a" / "b").read_bytes() == SMALL
    assert (h.top / "c" / "d" / "e").read_bytes() == SMALL
    # "c", refused, does not get the mode and mtime it announced.
    assert (h.top / "c").stat().st_mtime_ns != MTIME_NS
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_deep_names_do_not_freeze_the_daemon(harness):
    """Checking an entry used to cost O(depth²): a 4 KiB path of 2,048 components took 60 ms
    of reactor time, so a server listing such names froze every other job. The reactor must
    keep turning while 120 of them (480 KB of LIST) are taken in: two ENTRIES frames of 60,
    each of which took 3.6 s of reactor time before."""
    # Not under pytest's tmp_path: its clean-up recurses once per level and would crash on
    # 2,000 levels, in this session or (if this one is killed) in the next.
    base = Path(deep_scratch_dir("mirror-deep-"))
    h = harness(base, stall_timeout=30)
    entries = [f(("a/" * 2046) + f"b{i:03d}", b"") for i in range(120)]
    assert all(len(e.name) <= 4096 for e in entries)
    h.script.batch = 60  # about 240 KiB per ENTRIES frame, under the 256 KiB limit
    gaps = []
    last = [time.monotonic()]

    def tick() -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.start(0.02)
    try:
        result = await h.run(*entries)
        ticker.stop()
        assert [(e.path[-20:], e.message[-200:]) for e in result.errors[:3]] == []
        assert result.ok
        assert result.source_done[0].files == 120
        assert max(gaps) < 1.0, max(gaps)
        h.check_safe(result)
    finally:
        if ticker.running:
            ticker.stop()
        subprocess.run(["rm", "-rf", "--", str(base)], check=True)


@pytest_twisted.ensureDeferred
async def test_entries_outside_the_requested_path(harness):
    h = harness()
    result = await h.run(d("docs"), f("docs/a", SMALL), f("other/x", b"x"), d("docsx"),
                         f("doc", b"y"), f("a", b"z"), path="docs")
    assert not result.ok
    for name in ("other/x", "docsx", "doc", "a"):
        assert errors_for(result, name) == ["entry outside the requested path refused"]
    assert sorted(os.listdir(h.top)) == ["docs"]
    assert (h.top / "docs" / "a").read_bytes() == SMALL
    assert h.script.fetched() == ["docs/a"]
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_absurd_size_in_listing(harness):
    h = harness()
    result = await h.run(f("huge", b"", size=2**62), f("ok", SMALL))
    assert not result.ok
    [message] = errors_for(result, "huge")
    assert f"size {2**62} exceeds the limit" in message
    assert h.script.fetched() == ["ok"]
    h.check_safe(result)
    await h.check_alive()


# -- LIST: answers that never come -------------------------------------------------------


@pytest.mark.parametrize("mode, why", [
    ("silence", "stalled"),
    ("entries-then-silence", "stalled"),
    ("error", "listing failed"),
])
@pytest_twisted.ensureDeferred
async def test_list_that_fails(harness, mode, why):
    h = harness(stall_timeout=STALL)
    h.script.list_mode = mode
    result = await h.run(d("docs"), f("docs/a", SMALL))
    assert not result.ok
    [message] = errors_for(result, None)
    assert message.startswith("cannot list .:") and why in message
    h.check_safe(result)
    await h.check_alive()


# -- FETCH answers that lie ---------------------------------------------------------------

LIES: list[tuple[str, Callable[[bytes], Fetch], str]] = [
    ("short", short, "short transfer"),
    ("short-by-half", lambda c: Fetch(c, body=c[: len(c) // 2]), "short transfer"),
    ("long", long, "more bytes than the announced"),
    ("long-by-a-frame", lambda c: long(c, b"y" * 70_000), "more bytes than the announced"),
    ("wrong-digest", wrong_digest, "BLAKE3 mismatch"),
    ("bad-digest-length", lambda c: Fetch(c, digest=b"\x00" * 31),
     "protocol error: malformed digest"),
    ("long-digest", lambda c: Fetch(c, digest=b"\x00" * 33), "protocol error: malformed digest"),
    ("absurd-size", absurd_size, f"announced size {2**62} exceeds the limit"),
    # More than the listing announced: refused at the FILE header, before any byte.
    ("size-not-file-size", lambda c: Fetch(c, size=len(c) + 10, body=c + b"0" * 10),
     "file changed: listed with"),
    ("huge-data-frame", huge_frame, "exceeds the limit"),
    ("huge-data-frame-mid-file", lambda c: huge_frame(c, after=len(c) // 2),
     "exceeds the limit"),
    ("huge-control-frame", lambda c: huge_frame(c, opcode=frames.FILE_END, after=len(c)),
     "exceeds the limit"),
    ("huge-first-frame", lambda c: Fetch(c, header=False, ending="huge-frame", stop_after=0),
     "exceeds the limit"),
    ("data-before-file", lambda c: Fetch(c, header=False), "DATA before FILE"),
    ("stall-after-header", stall, "stalled"),
    ("stall-mid-file", lambda c: stall(c, after=len(c) // 2), "stalled"),
    ("stall-before-end", lambda c: stall(c, after=len(c)), "stalled"),
    ("stall-before-header", lambda c: Fetch(c, header=False, ending="silence", stop_after=0),
     "stalled"),
    ("drop-after-header", drop, "lost"),
    ("drop-mid-file", lambda c: drop(c, after=len(c) // 2), "lost"),
    ("reset-mid-file", lambda c: drop(c, after=len(c) // 2, abort=True), "lost"),
    ("changed-mid-file", lambda c: changed(c, after=len(c) // 2), "changed while being sent"),
    ("answer-to-unsent-request", lambda c: Fetch(c, ending="foreign-id"),
     "response for unknown request"),
    ("list-answer-to-fetch", lambda c: Fetch(c, ending="entries"), "unexpected response 0x81"),
    ("answer-for-id-zero", lambda c: Fetch(c, ending="id-zero"),
     "response for unknown request 0"),
    ("error-frame-too-short", lambda c: Fetch(c, ending="short-error", stop_after=len(c) // 2),
     "protocol error: bad ERROR frame"),
]


@pytest.mark.parametrize("size", ["small", "big"])
@pytest.mark.parametrize("case, lie, why", LIES, ids=[c[0] for c in LIES])
@pytest_twisted.ensureDeferred
async def test_fetch_lie(harness, case, lie, why, size):
    """The lying file fails with a clear error; its old version stays; its neighbours arrive;
    nothing is left behind. (FETCH only: lies in bundles are `test_bundle_lie`'s.)"""
    h = harness(stall_timeout=STALL if why == "stalled" else NO_STALL, bundle_files=0)
    content = SMALL if size == "small" else BIG
    old = h.seed("docs/victim")
    lies = {"docs/victim": lie(content), "docs/brand-new": lie(content)}
    # The honest file is received before any lie is told: a lie that breaks the connection
    # must not take it down before it is done (that would be a different test).
    honest_received = Gate()
    for how in lies.values():
        how.hold = honest_received
    h.script.fetch.update(lies)
    job = defer.Deferred.fromCoroutine(h.run(
        d("docs"), f("docs/brand-new", content), f("docs/fine", SMALL),
        f("docs/victim", content)))
    try:
        await wait_for(lambda: any(j.bytes_done >= len(SMALL) for j in h.service.jobs.values()),
                       what="the honest file to be received")
    finally:
        honest_received.open()
    result = await job
    assert not result.ok
    for name in ("docs/victim", "docs/brand-new"):
        [message] = errors_for(result, name)
        assert message.startswith(name + ":") and why in message, message
    assert len(result.errors) == 2, result.errors
    done = result.source_done[0]
    assert done.failed == 2 and done.files == 1 and done.bytes == len(SMALL)
    # Retried once, then reported.
    assert h.script.fetched().count("docs/victim") == 2
    assert old.read_bytes() == OLD
    assert not (h.top / "docs" / "brand-new").exists()
    assert (h.top / "docs" / "fine").read_bytes() == SMALL
    assert sorted(os.listdir(h.top / "docs")) == ["fine", "victim"]
    h.check_safe(result)
    await h.check_alive()


BUNDLE_NEIGHBOURS = ["docs/a", "docs/b", "docs/y", "docs/z"]


@pytest.mark.parametrize("lie", BUNDLE_LIES)
@pytest_twisted.ensureDeferred
async def test_bundle_lie(harness, lie):
    """A FETCH_MANY answer that lies about one file (or breaks the connection there): the
    lie is caught, nothing unverified lands, and every file it cost is fetched again on its
    own (from an honest FETCH here): the job completes, the daemon lives."""
    # A file left out at the end of a bundle is noticed as silence. Long enough that the
    # honest FETCHes that follow do not look stalled on a loaded machine.
    h = harness(stall_timeout=2.0 if lie in ("stall", "missing") else NO_STALL)
    h.seed("docs/victim")
    h.script.bundle_lies["docs/victim"] = lie
    entries = [f(name, name.encode() * 3) for name in BUNDLE_NEIGHBOURS]
    entries.insert(2, f("docs/victim", SMALL))
    result = await h.run(d("docs"), *entries)
    assert result.ok, result.errors
    assert "docs/victim" in h.script.bundled()
    # The victim went twice: in a bundle, then alone.
    assert h.script.fetched().count("docs/victim") == 2
    assert (h.top / "docs" / "victim").read_bytes() == SMALL
    for name in BUNDLE_NEIGHBOURS:
        assert (h.top / name).read_bytes() == name.encode() * 3
    h.check_safe(result)
    await h.check_alive()


@pytest.mark.parametrize("lie", ["digest", "size", "twice", "truncated"])
@pytest_twisted.ensureDeferred
async def test_bundle_lie_then_fetch_lie(harness, lie):
    """Lied about in the bundle and again when fetched alone: reported once, with the
    second reason; the old version stays; the others arrive."""
    h = harness()
    old = h.seed("docs/victim")
    h.script.bundle_lies["docs/victim"] = lie
    result = await h.run(d("docs"), f("docs/a", b"aaa"), f("docs/victim", SMALL),
                         f("docs/z", b"zzz"), docs__victim=wrong_digest(SMALL))
    assert not result.ok
    [message] = errors_for(result, "docs/victim")
    assert message.startswith("docs/victim:") and "BLAKE3 mismatch" in message, message
    assert len(result.errors) == 1, result.errors
    assert old.read_bytes() == OLD
    assert (h.top / "docs" / "a").read_bytes() == b"aaa"
    assert (h.top / "docs" / "z").read_bytes() == b"zzz"
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_error_frame_from_server(harness):
    h = harness()
    result = await h.run(f("a", SMALL), f("b", SMALL), a=Fetch(
        SMALL, header=False, stop_after=0, ending="error", error_code=frames.E_NOT_ALLOWED,
        error_message="a: not allowed\n\x1b[31mred"))
    assert not result.ok
    [message] = errors_for(result, "a")
    assert "not allowed" in message
    assert (h.top / "b").read_bytes() == SMALL
    assert not (h.top / "a").exists()
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_honest_slow_server_is_not_a_stall(harness):
    """Data that keeps coming, however slowly, is not a stall (the timer is per silence)."""
    h = harness(stall_timeout=STALL)
    content = BIG
    result = await h.run(f("slow", content),
                         slow=Fetch(content, chunk=len(content) // 6 + 1, interval=STALL / 2))
    assert result.ok, result.errors
    assert (h.top / "slow").read_bytes() == content
    h.check_safe(result)


@pytest_twisted.ensureDeferred
async def test_full_queue_is_not_a_listing_stall(harness):
    """While the work queue is full the mirror server stops reading the listing: that wait
    is ours, not the server's silence, and must not fail the LIST as stalled."""
    h = harness(queue_size=1, workers=1, stall_timeout=STALL)
    names = [f"f{i}" for i in range(8)]
    for name in names:
        h.script.fetch[name] = Fetch(name.encode(), wait=STALL / 2)
    result = await h.run(*[f(name, name.encode()) for name in names])
    assert result.ok, result.errors
    assert result.source_done[0].files == len(names)
    h.check_safe(result)


@pytest_twisted.ensureDeferred
async def test_hundreds_of_workers_on_one_source(harness):
    """600 workers (the limit is 1024) asking one source's connections at once. They used
    to queue on a DeferredLock that hands itself on synchronously, one stack level per
    waiter: RecursionError, a lock never released, a job that never ended."""
    h = harness(workers=600)
    result = await h.run(*[f(f"x{i:03d}", b"%d" % i) for i in range(600)])
    assert result.ok, result.errors[:3]
    assert result.source_done[0].files == 600
    assert (h.top / "x599").read_bytes() == b"599"
    h.check_safe(result)


# -- odd but legal names -----------------------------------------------------------------

ODD_NAMES = [
    "..foo", "...", "..", "-rf", "--help", "-", "name with spaces", " leading space",
    "trailing space ", "unicodé ☃", "日本語のファイル", "a:b", "C:x", "#hash", "~tilde",
    "$(echo pwned)", "`id`", "*", "?", "'quote'", '"dq"', "semi;colon", "%2e%2e", "ü" * 127,
    "x" * 255, ".hidden", ".mirror-tmp", "mirror-tmp-x", "..mirror-tmp-x",
]


@pytest_twisted.ensureDeferred
async def test_odd_but_legal_names_mirror(harness):
    h = harness()
    legal = [n for n in ODD_NAMES if n != ".."]
    entries = [d("odd", mode=0o750)]
    for i, name in enumerate(legal):
        entries.append(f(f"odd/{name}", f"content {i}\n".encode(), mode=0o640))
    entries += [d("-rf"), d("-rf/..foo"), f("-rf/..foo/x y", b"deep")]
    result = await h.run(*canonical(*entries))
    assert result.ok, result.errors
    for i, name in enumerate(legal):
        p = h.top / "odd" / name
        assert p.read_bytes() == f"content {i}\n".encode(), name
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        assert p.stat().st_mtime_ns == MTIME_NS
    assert sorted(os.listdir(h.top / "odd")) == sorted(legal)
    assert stat.S_IMODE((h.top / "odd").stat().st_mode) == 0o750
    assert (h.top / "-rf" / "..foo" / "x y").read_bytes() == b"deep"
    assert result.source_done[0].files == len(legal) + 1
    h.check_safe(result)


@pytest_twisted.ensureDeferred
async def test_longest_legal_path(harness):
    """A 4096-byte wire path (the limit) lands, though MIRROR_DIR/HOST_PORT/PATH exceeds
    PATH_MAX: every component is reached from its parent's descriptor."""
    h = harness()
    comps = ["c" * 249 + str(i % 10) for i in range(16)]
    name = "/".join(comps)
    name += "/" + "z" * (4096 - len(name) - 1)
    assert len(name.encode()) == 4096
    result = await h.run(f(name, b"far away"))
    assert result.ok, result.errors
    fd = os.open(h.top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for comp in name.split("/")[:-1]:
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open(name.split("/")[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            assert os.read(leaf, 100) == b"far away"
        finally:
            os.close(leaf)
    finally:
        os.close(fd)
    h.check_safe(result)


@pytest_twisted.ensureDeferred
async def test_extreme_metadata(harness):
    """Modes and mtimes at the ends of their ranges are applied (or clamped by the file
    system) without an error; a set-user-ID or set-group-ID bit on a file is dropped: a
    server we do not control must not plant setuid executables owned by the mirror's user
    (often root)."""
    h = harness()
    result = await h.run(*canonical(
        d("dirs", mode=0o7777, mtime_ns=2**63 - 1), d("dirs/none", mode=0),
        f("setuid", b"#!/bin/sh\n", mode=0o4755), f("setgid", b"x", mode=0o2755),
        f("all-bits", b"x", mode=0o7777), f("no-bits", b"x", mode=0),
        f("old", b"x", mtime_ns=-2**63), f("future", b"x", mtime_ns=2**63 - 1),
        f("dirs/none/inner", b"x")))
    assert result.ok, result.errors
    modes = {name: stat.S_IMODE((h.top / name).stat().st_mode)
             for name in ("setuid", "setgid", "all-bits", "no-bits")}
    assert modes == {"setuid": 0o755, "setgid": 0o755, "all-bits": 0o1777, "no-bits": 0}
    assert (h.top / "future").stat().st_mtime_ns == 2**63 - 1
    assert (h.top / "dirs" / "none" / "inner").read_bytes() == b"x"
    h.check_safe(result)


# -- the mirror directory itself holds a trap ----------------------------------------------


@pytest.mark.parametrize("listed_dir", [True, False], ids=["dir-listed", "dir-not-listed"])
@pytest_twisted.ensureDeferred
async def test_symlinked_directory_in_mirror_is_not_written_through(harness, listed_dir):
    h = harness()
    elsewhere = h.outside / "elsewhere"
    elsewhere.mkdir()
    h.top.mkdir(parents=True)
    (h.top / "docs").symlink_to(elsewhere)
    entries = ([d("docs")] if listed_dir else []) + [
        f("docs/a", SMALL), f("docs/big", BIG), f("docs/sub/c", SMALL), f("fine", SMALL)]
    result = await h.run(*entries)
    assert os.listdir(elsewhere) == []
    if listed_dir:
        # Listed as a directory: the link is replaced by one (removed as a link, never
        # followed), as rsync does, and the files land in it (issue 12).
        assert result.ok, result.errors
        assert (h.top / "docs").is_dir() and not (h.top / "docs").is_symlink()
        assert (h.top / "docs" / "big").read_bytes() == BIG
        assert (h.top / "docs" / "sub" / "c").read_bytes() == SMALL
        h.check_safe(result)
        return
    assert not result.ok
    assert (h.top / "docs").is_symlink()
    for name in ("docs/a", "docs/big", "docs/sub/c"):
        [message] = errors_for(result, name)
        assert message.startswith(name + ":") and "not a directory" in message, message
    assert (h.top / "fine").read_bytes() == SMALL
    assert result.source_done[0].failed == 3
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_symlink_at_final_name_is_replaced_not_followed(harness):
    h = harness()
    target = h.outside / "target"
    target.write_bytes(b"outside file\n")
    h.top.mkdir(parents=True)
    (h.top / "docs").mkdir()
    (h.top / "docs" / "a").symlink_to(target)
    (h.top / "docs" / "big").symlink_to(target)
    result = await h.run(d("docs"), f("docs/a", SMALL), f("docs/big", BIG))
    assert result.ok, result.errors
    assert target.read_bytes() == b"outside file\n"
    for name, content in (("a", SMALL), ("big", BIG)):
        p = h.top / "docs" / name
        assert not p.is_symlink() and p.read_bytes() == content
    h.check_safe(result)


@pytest_twisted.ensureDeferred
async def test_symlinked_top_directory_is_refused(harness):
    h = harness()
    h.mirror.mkdir(exist_ok=True)
    h.top.symlink_to(h.outside)
    result = await h.run(d("docs"), f("docs/a", SMALL))
    assert not result.ok
    [message] = errors_for(result, None)
    assert message.startswith(f"cannot use mirror directory 127.0.0.1_{h.port}")
    assert h.top.is_symlink() and sorted(os.listdir(h.outside)) == ["sentinel"]
    assert h.script.fetched() == []
    h.check_safe(result)
    await h.check_alive()


@pytest_twisted.ensureDeferred
async def test_planted_symlink_with_real_content_server(tmp_path, start_content_server,
                                                        start_mirror_server):
    """The issue's example: MIRROR/127.0.0.1_PORT/docs -> elsewhere, with a real server: the
    planted link is replaced by the directory the source has (removed as a link, never
    followed: issue 12); nothing lands in elsewhere/."""
    src = make_sample_tree(tmp_path / "src", big_size=600_000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    top = tmp_path / "mirror" / f"127.0.0.1_{cport}"
    top.mkdir(parents=True)
    (top / "docs").symlink_to(elsewhere)
    result = await run_job(mport, [source(cport)], timeout=20)
    assert result.ok, result.errors
    assert os.listdir(elsewhere) == []
    assert not (top / "docs").is_symlink()
    assert temporaries(tmp_path) == []
    assert_same_tree(src, top)
