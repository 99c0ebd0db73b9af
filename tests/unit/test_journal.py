"""The job journal (issue 12): commits batched on a clock, ids unique across restarts,
finished jobs pruned, everything loaded back as it was recorded."""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server import journal as jr
from mirror.testing import InlineThreads, StepThreads
from mirror.wire.control import SourceRequest

SOURCES = [SourceRequest("127.0.0.1", 9000, "a", 0.0), SourceRequest("::1", 9001, "", 1.5)]


class JournalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(self._remove)
        self.clock = Clock()
        self.journals: list[jr.Journal] = []

    def _remove(self) -> None:
        for j in self.journals:
            j.db.close()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def open(self, threads: object = None, id_block: int = jr.ID_BLOCK) -> jr.Journal:
        db = jr.JournalDB(os.path.join(self.dir, jr.JOURNAL_NAME))
        journal = jr.Journal(db, self.clock, threads or InlineThreads(),  # type: ignore[arg-type]
                             id_block=id_block)
        self.journals.append(journal)
        return journal

    def reopen(self) -> list[jr.JobRecord]:
        """What a restarted server finds (the old connection is simply dropped, as by a
        SIGKILL: only what was committed counts)."""
        return self.open().db.load()

    def submit(self, journal: jr.Journal) -> jr.JobRecord:
        record = jr.JobRecord(journal.new_job_id(), list(SOURCES), submitted=self.clock.seconds())
        journal.job_submitted(record)
        return record

    def test_file_is_private(self) -> None:
        journal = self.open()
        mode = os.stat(journal.db.path).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    def test_commits_are_batched_on_the_clock(self) -> None:
        journal = self.open()
        base = journal.db.commits  # the id reservation
        record = self.submit(journal)
        self.clock.advance(0)  # the first commit is due at once (none for half a second)
        self.assertEqual(journal.db.commits, base + 1)
        for i in range(1000):  # a thousand files' worth of figures and errors...
            journal.source_figures(record.id, 0, jr.SourceFigures(files=i, bytes=i))
            journal.job_error(record.id, jr.JobError(0, f"f{i}", "gone"))
            self.clock.advance(0.001)
        # ...a second's worth: at most one commit per half second, not one per file.
        self.assertLessEqual(journal.db.commits, base + 3)
        self.clock.advance(0.5)
        loaded = self.reopen()[0]
        figures = loaded.figures[0]
        assert figures is not None
        self.assertEqual((figures.files, figures.bytes), (999, 999))
        self.assertEqual(len(loaded.errors), 1000)
        self.assertIsNone(loaded.figures[1])

    def test_nothing_committed_before_the_interval(self) -> None:
        journal = self.open()
        record = self.submit(journal)
        self.clock.advance(0)
        journal.source_figures(record.id, 0, jr.SourceFigures(files=7))
        self.clock.advance(0.4)
        figures = self.reopen()[0].figures[0]
        self.assertIsNone(figures, "committed before its time")
        self.clock.advance(0.1)
        figures = self.reopen()[0].figures[0]
        assert figures is not None
        self.assertEqual(figures.files, 7)

    def test_changes_during_a_commit_wait_for_the_next(self) -> None:
        threads = StepThreads()
        journal = self.open(threads)
        record = self.submit(journal)
        self.clock.advance(0)  # the commit is in its thread, not done yet
        journal.source_figures(record.id, 0, jr.SourceFigures(files=1))
        self.assertTrue(threads.step())
        self.assertFalse(threads.step(), "a second commit started before its time")
        self.clock.advance(0.5)
        self.assertTrue(threads.step())
        figures = self.reopen()[0].figures[0]
        assert figures is not None
        self.assertEqual(figures.files, 1)

    def test_flush_commits_now(self) -> None:
        journal = self.open()
        record = self.submit(journal)
        self.clock.advance(0)
        journal.source_figures(record.id, 1, jr.SourceFigures(done=True, ok=False,
                                                              sum_sq=2**70))
        d = journal.flush()
        self.successResultOf(d)
        figures = self.reopen()[0].figures[1]
        assert figures is not None
        self.assertEqual((figures.done, figures.ok, figures.sum_sq), (True, False, 2**70))

    def test_ids_unique_across_restarts(self) -> None:
        first = self.open(id_block=4)
        ids = [first.new_job_id() for _ in range(3)]  # past half the block: more reserved
        self.clock.advance(0)
        ids += [first.new_job_id() for _ in range(2)]
        # Killed without another commit: a restart never hands these out again.
        second = self.open(id_block=4)
        ids += [second.new_job_id() for _ in range(3)]
        third = self.open(id_block=4)
        ids += [third.new_job_id()]
        self.assertEqual(len(set(ids)), len(ids), ids)
        self.assertEqual(ids[:3], ["1", "2", "3"])

    def test_ids_run_out_only_if_the_reservation_lags(self) -> None:
        threads = StepThreads()
        journal = self.open(threads, id_block=2)
        journal.new_job_id()
        journal.new_job_id()
        with self.assertRaises(jr.JournalFull):
            journal.new_job_id()  # the next block is not committed yet
        self.clock.advance(0)
        threads.run_all()
        journal.new_job_id()

    def test_states_and_pruning(self) -> None:
        journal = self.open()
        old, recent, running = (self.submit(journal) for _ in range(3))
        old.state, old.finished = jr.OK, 100.0
        recent.state, recent.finished = jr.CANCELLED, 5000.0
        journal.job_state(old)
        journal.job_state(recent)
        journal.job_error(old.id, jr.JobError(1, None, "unreachable"))
        self.clock.advance(0)
        records = {r.id: r for r in self.reopen()}
        self.assertEqual({r.state for r in records.values()}, {jr.OK, jr.CANCELLED, jr.RUNNING})
        self.assertEqual(records[old.id].errors, [jr.JobError(1, None, "unreachable")])
        self.assertEqual(records[running.id].sources, SOURCES)
        journal.prune(finished_before=1000.0)
        self.clock.advance(1)
        ids = [r.id for r in self.reopen()]
        self.assertEqual(ids, [recent.id, running.id], "only the old finished job goes")

    def test_resumed_job_forgets_the_errors_of_restarted_sources(self) -> None:
        journal = self.open()
        record = self.submit(journal)
        journal.job_error(record.id, jr.JobError(0, "x", "one"))
        journal.job_error(record.id, jr.JobError(1, "y", "two"))
        self.clock.advance(0)
        loaded = self.reopen()[0]
        again = self.open()
        loaded.resumed = 1
        again.job_resumed(loaded, [0])
        again.job_error(loaded.id, jr.JobError(0, "z", "three"))
        self.clock.advance(1)
        final = self.reopen()[0]
        self.assertEqual(final.resumed, 1)
        self.assertEqual([e.message for e in final.errors], ["two", "three"])

    def test_partials_recorded_and_forgotten(self) -> None:
        journal = self.open()
        record = self.submit(journal)
        part = jr.PartialRecord(0, "big.iso", "partial-1", 2**64 - 1, -123, 4 << 20, "ab" * 32)
        journal.partial_saved(record.id, part)
        self.clock.advance(0)
        self.assertEqual(self.reopen()[0].partials, [part])
        journal.partial_gone(record.id, 0, "big.iso")
        self.clock.advance(1)
        self.assertEqual(self.reopen()[0].partials, [])

    def test_a_failing_batch_is_retried_once_then_dropped(self) -> None:
        journal = self.open()
        # Errors of a job the journal never heard of: the commit fails (foreign key).
        journal.job_error("999", jr.JobError(0, None, "orphan"))
        self.clock.advance(0)
        record = self.submit(journal)
        self.clock.advance(0.5)  # the retry, with the job: fails again, dropped
        self.assertEqual(len(self.flushLoggedErrors()), 2)
        journal.source_figures(record.id, 0, jr.SourceFigures(files=3))
        journal.job_submitted(record)
        self.clock.advance(0.5)  # later changes are committed
        figures = self.reopen()[0].figures[0]
        assert figures is not None
        self.assertEqual(figures.files, 3)
