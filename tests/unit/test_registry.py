"""The job registry (issue 12) in memory: resuming a job found unfinished in the journal
counts each file once, cancelling stops a job and leaves nothing partial, finished jobs are
kept for --attach, then pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mirror.filters import Rule
from mirror.job_options import JobOptions
from mirror.mirror_server import journal as jr
from mirror.mirror_server.journal_options import JobRequest
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.testing import InlineThreads
from mirror.wire import control
from tests.trees import make_sample_tree
from tests.unit.test_mirror_job import JobTestCase, Observer, source


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.over = False

    def send_event(self, event: Any) -> None:
        self.events.append(event)

    def job_over(self) -> None:
        self.over = True


class RegistryTests(JobTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.state = self.base / "state"
        self.state.mkdir()
        self.journal = jr.open_journal(str(self.state), self.clock, InlineThreads())
        self.service = MirrorService(str(self.mirror), MirrorSettings(**self.settings),
                                     reactor=self.clock, threads=InlineThreads(),
                                     endpoints=self.network.endpoint, journal=self.journal)
        self.registry = self.service.registry
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def files(self, src: Path) -> list[Path]:
        return [p for p in src.rglob("*") if p.is_file()]

    def test_resumed_job_counts_each_file_once(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        files = self.files(src)
        # Everything is in place (as when the server was killed right at the end), but the
        # journal's last commit knew of only two transfers.
        self.run_job(source())
        sizes = [p.stat().st_size for p in files[:2]]
        record = jr.JobRecord("41", [source()], submitted=0.0)
        record.figures = [jr.SourceFigures(files=2, bytes=sum(sizes),
                                           sum_sq=sum(s * s for s in sizes), skipped=99,
                                           failed=5, elapsed=3.0)]
        self.registry.resume([record])
        feed = self.registry.feeds["41"]
        assert feed.job is not None
        self.network.run_until(feed.job.finished)
        self.assertEqual(feed.record.state, jr.OK)
        self.assertEqual(feed.record.resumed, 1)
        figures = feed.record.figures[0]
        assert figures is not None
        # Transfers stay counted; the rest counted as skipped, once; skipped and failed of
        # before the restart are counted again by the new listing, not added.
        self.assertEqual((figures.files, figures.bytes), (2, sum(sizes)))
        self.assertEqual(figures.skipped, len(files) - 2)
        self.assertEqual(figures.failed, 0)
        self.assertGreaterEqual(figures.elapsed, 3.0)
        sink = Sink()
        self.registry.attach("41", sink)
        self.assertTrue(sink.over)
        self.assertIn(control.Resumed(1), sink.events)
        self.assertEqual(sink.events[-1], control.Done(True))

    def test_source_done_before_the_restart_is_not_run_again(self) -> None:
        record = jr.JobRecord("7", [source(), source("docs")], submitted=0.0)
        record.figures = [jr.SourceFigures(done=True, ok=False, files=1, bytes=10, sum_sq=100,
                                           failed=1), None]
        record.errors = [jr.JobError(0, "x", "broken"), jr.JobError(1, "y", "again")]
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        self.registry.resume([record])
        feed = self.registry.feeds["7"]
        assert feed.job is not None
        self.network.run_until(feed.job.finished)
        self.assertEqual(feed.record.state, jr.FAILED)
        first = feed.record.figures[0]
        assert first is not None
        self.assertEqual((first.files, first.failed, first.ok), (1, 1, False))
        self.assertEqual([e.message for e in feed.record.errors], ["broken"])
        # Only the second source ran: the first (the whole tree) was not mirrored again.
        self.assertEqual([p.name for p in (self.mirror / "10.0.0.1_7000").iterdir()], ["docs"])

    def test_cancel_stops_the_job(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        observer = Observer()
        job = self.service.submit([source()], observer)
        self.assertIsNone(self.registry.cancel(job.id))
        self.network.run_until(job.finished)
        self.assertEqual(observer.finished, [False])
        self.assertIn((0, None, "job cancelled"), observer.errors)
        self.assertEqual(self.registry.feeds[job.id].record.state, jr.CANCELLED)
        self.assertEqual(observer.done[0].stats.count, 0)
        self.assertEqual(list(self.mirror.rglob(".mirror-tmp-*")), [])
        self.assertEqual(self.registry.cancel(job.id),
                         f"job {job.id} is already finished (cancelled)")
        self.assertEqual(self.registry.cancel("nope"), "no job nope")

    def test_finished_jobs_kept_then_pruned(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        job_id = self.run_job(source()).started[0]
        self.assertEqual([s.state for s in self.registry.states()], ["ok"])
        self.clock.advance(self.registry.keep - 1)
        self.registry.prune()
        self.assertIn(job_id, self.registry.feeds)
        self.clock.advance(2)
        self.registry.prune()
        self.assertEqual(self.registry.states(), [])
        self.clock.advance(1)
        self.assertEqual(self.journal.db.load(), [])

    def test_attach_to_a_running_job_catches_up(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        observer = Observer()
        job = self.service.submit([source()], observer)
        sink = Sink()
        self.registry.attach(job.id, sink)
        self.assertEqual(sink.events[:2], [control.JobAccepted(job.id),
                                           control.Spec(0, source())])
        self.network.run_until(job.finished)
        self.assertTrue(sink.over)
        done = [e for e in sink.events if isinstance(e, control.SourceDone)]
        self.assertEqual(len(done), 1)
        self.assertEqual(done[0].files, len(self.files(src)))
        self.assertEqual(sink.events[-1], control.Done(True))

    def sync_tree(self) -> Path:
        """A source with a file to fetch, one to exclude and a safe link; a mirror with an
        entry the source no longer has."""
        src = self.base / "src"
        src.mkdir()
        (src / "keep.txt").write_bytes(b"kept")
        (src / "skip.log").write_bytes(b"excluded")
        (src / "ln").symlink_to("keep.txt")
        self.serve(src)
        (self.mirror / "10.0.0.1_7000").mkdir()
        (self.mirror / "10.0.0.1_7000" / "old.txt").write_bytes(b"gone at the source")
        return self.mirror / "10.0.0.1_7000"

    SYNC = JobRequest(JobOptions(delete=True, filters=(Rule(False, "*.log"),)),
                      bwlimit=10**9, links_mode="skip")

    def test_submitted_options_are_journaled(self) -> None:
        self.sync_tree()
        job = self.service.submit([source()], Observer(), self.SYNC.options,
                                  self.SYNC.bwlimit, self.SYNC.links_mode)
        self.network.run_until(job.finished)
        self.successResultOf(self.journal.flush())
        [record] = self.journal.db.load()
        self.assertEqual(JobRequest.from_record(record.options), self.SYNC)
        # An older record has none: the defaults.
        self.assertEqual(JobRequest.from_record({}), JobRequest())

    def test_resumed_job_runs_with_its_options(self) -> None:
        mirrored = self.sync_tree()
        record = jr.JobRecord("41", [source()], submitted=0.0,
                              options=self.SYNC.to_record())
        self.registry.resume([record])
        feed = self.registry.feeds["41"]
        job = feed.job
        assert job is not None
        self.assertEqual(job.options, self.SYNC.options)
        assert job.throttle is not None
        self.assertEqual(job.throttle.rate, 10**9)
        self.assertEqual(job.sources[0].links.mode, "skip")
        self.assertEqual(list(self.service.subtree_locks.held()), ["41"])
        # The web status page hears of a resumed job too.
        self.assertIsNotNone(self.service.history.get("41"))
        self.network.run_until(job.finished)
        self.assertEqual(feed.record.state, jr.OK)
        self.assertEqual(sorted(p.name for p in mirrored.iterdir()), ["keep.txt"])
        self.assertEqual(self.service.subtree_locks.held(), {})
        shown = self.service.history.get("41")
        assert shown is not None
        self.assertFalse(shown.running)

    def test_resumed_delete_job_whose_subtree_is_taken_fails(self) -> None:
        self.sync_tree()
        # A --delete job submitted after the start, before the journal was read.
        running = self.service.submit([source()], Observer(), self.SYNC.options)
        record = jr.JobRecord("41", [source("docs")], submitted=0.0,
                              options=self.SYNC.to_record())
        self.journal.job_submitted(record)  # as the journal had it before the restart
        self.successResultOf(self.journal.flush())
        self.registry.resume([record])
        feed = self.registry.feeds["41"]
        self.assertIsNone(feed.job)
        self.assertEqual(feed.record.state, jr.FAILED)
        [error] = feed.record.errors
        self.assertIn("not resumed after the restart", error.message)
        self.assertIn("--delete", error.message)
        self.network.run_until(running.finished)
        self.successResultOf(self.journal.flush())
        [loaded] = [r for r in self.journal.db.load() if r.id == "41"]
        self.assertEqual((loaded.state, [e.message for e in loaded.errors]),
                         (jr.FAILED, [error.message]))

    def test_resumed_delete_job_with_a_spec_done_before_still_deletes(self) -> None:
        # The SPEC done before the restart says it deletes nothing more: --max-delete's
        # gate does not wait for it forever.
        mirrored = self.sync_tree() / "b"
        for name in "ab":
            (self.base / "src" / name).mkdir()
        mirrored.mkdir()
        (mirrored / "old.txt").write_bytes(b"gone at the source")
        options = JobRequest(JobOptions(delete=True, max_delete=5)).to_record()
        record = jr.JobRecord("41", [source("a"), source("b")], submitted=0.0,
                              options=options)
        record.figures = [jr.SourceFigures(done=True), None]
        self.journal.job_submitted(record)
        self.successResultOf(self.journal.flush())
        self.registry.resume([record])
        job = self.registry.feeds["41"].job
        assert job is not None
        self.network.run_until(job.finished)
        self.assertEqual(self.registry.feeds["41"].record.errors, [])
        self.assertEqual(self.registry.feeds["41"].record.state, jr.OK)
        self.assertNotIn("old.txt", [p.name for p in mirrored.iterdir()])

    def test_attacher_hears_links_and_sync(self) -> None:
        self.sync_tree()
        job = self.service.submit([source()], Observer(),
                                  JobOptions(delete=True, dry_run=True))
        sink = Sink()
        self.registry.attach(job.id, sink)
        self.network.run_until(job.finished)
        kinds = [type(e).__name__ for e in sink.events]
        self.assertIn("SourceSync", kinds)
        self.assertLess(kinds.index("LinksDone"), kinds.index("SourceDone"))

    def test_a_stopping_server_leaves_its_jobs_to_resume(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        job = self.service.submit([source()], Observer())
        self.network.pump()  # under way
        # The server stops: what ends its jobs now (here a cancel, in a daemon its transfers
        # cut) does not finish them in the journal.
        self.registry.stop()
        job.cancel()
        self.network.run_until(job.finished)
        self.successResultOf(self.journal.flush())
        records = self.journal.db.load()
        self.assertEqual([r.state for r in records], [jr.RUNNING])
        figures = records[0].figures[0]
        self.assertTrue(figures is None or not figures.done, "a source cut short is not done")
