"""One SPEC's share of issue 12: filters, ``--delete``, ``--dry-run`` and their figures.

`SpecSync` is what `mirror.mirror_server.job.SourceRun` consults for each listed entry
(is it excluded? does it replace something?) and runs once the SPEC's transfers are done
(the deletion). Its blocking methods run in the disk threads, one call per listing batch.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence

from mirror import paths
from mirror.filters import FilterList
from mirror.job_options import JobOptions
from mirror.mirror_server.deletion import (
    DIR,
    DeletionStopped,
    MergeLost,
    Removal,
    TreeMerge,
    kind_of_mode,
    read_local_dir,
    remove_tree,
)
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, quick_check

#: `classify` verdicts for a listed file.
CURRENT = "current"
NEW = "new"
REPLACES = "replaces"
#: A directory is where the file goes: replaced first with --delete, else the file fails.
DIR_IN_THE_WAY = "dir"


def classify(store: MirrorStore | None, parts: paths.Parts, size: int, mtime_ns: int) -> str:
    """What placing the listed file ``parts`` would do: `CURRENT` (the quick check: a
    regular file of that size and mtime is there), `NEW`, `REPLACES` or `DIR_IN_THE_WAY`."""
    st = store.lstat(parts) if store is not None else None
    if st is None:
        return NEW
    if stat.S_ISDIR(st.st_mode):
        return DIR_IN_THE_WAY
    if quick_check(st, size, mtime_ns):
        return CURRENT
    return REPLACES


class SpecSync:
    """Filters, deletion and dry-run figures of one SPEC rooted at ``root`` (its path's
    components under the store's root)."""

    def __init__(self, options: JobOptions, root: paths.Parts) -> None:
        self.options = options
        self.root = root
        self.filters: FilterList = options.filter_list()
        #: Files replaced: a different version, or (with --delete) another type, was there.
        self.replaced = 0
        self.deleted = 0
        self.deleted_bytes = 0
        #: ``off``, ``done``, ``skipped`` or ``refused`` (control.DELETION_STATES).
        self.deletion = "done" if options.delete else "off"
        self._excluded_dir: paths.Parts | None = None
        self._root_is_dir = True
        self._merge: TreeMerge | None = None
        self._listing_clean = True
        self._planned: Removal | None = None
        self._candidates: list[tuple[paths.Parts, bool]] = []
        #: With --max-delete: entries the candidates so far would remove, counted as they
        #: are found; past the limit, candidates are no longer kept (the job will delete
        #: nothing), so that an origin listing an empty tree cannot fill the memory.
        self._counted = 0
        self.planned_exact = True
        self._store: MirrorStore | None = None

    # -- filters ---------------------------------------------------------------------------

    def _relative(self, parts: paths.Parts) -> paths.Parts:
        rel = parts[len(self.root):]
        return rel if rel else parts[-1:]

    def protected(self, parts: paths.Parts, is_dir: bool) -> bool:
        """A local path the filters exclude: never deleted."""
        return not self.filters.included(self._relative(parts), is_dir)

    def wanted(self, parts: paths.Parts, is_dir: bool) -> bool:
        """Whether a listed entry is mirrored: not excluded, and not below an excluded
        directory (which is not descended). Entries come in canonical order."""
        if parts == self.root:
            # The SPEC's path itself: a directory is never filtered (rsync's transfer
            # root); a file is filtered by its name.
            self._root_is_dir = is_dir
            return is_dir or self.filters.included(parts[-1:], False)
        excluded = self._excluded_dir
        if excluded is not None:
            if parts[: len(excluded)] == excluded:
                return False
            self._excluded_dir = None
        if self.filters.included(self._relative(parts), is_dir):
            return True
        if is_dir:
            self._excluded_dir = parts
        return False

    # -- the listing -----------------------------------------------------------------------

    def listing_failed(self) -> None:
        """The listing had an error: deletion is off for this SPEC, the merge dropped."""
        self._listing_clean = False
        self._merge = None

    @property
    def may_delete(self) -> bool:
        """--delete was asked and the listing so far had no error."""
        return self.options.delete and self._listing_clean

    def start(self, store: MirrorStore | None) -> None:
        """Before the first entry: the merge, if --delete (blocking: run in a thread)."""
        if not self.options.delete:
            return
        if store is None:  # a dry run where nothing is mirrored yet: nothing to compare
            self._merge = TreeMerge(self.root, lambda p: [], lambda p: None, self.protected)
            return
        self._store = store
        root_fd = store.root_fd

        def kind_of(parts: paths.Parts) -> str | None:
            st = store.lstat(parts)
            return None if st is None else kind_of_mode(st.st_mode)

        self._merge = TreeMerge(self.root, lambda p: read_local_dir(root_fd, p), kind_of,
                                self.protected, self._candidate)

    def _candidate(self, parts: paths.Parts, is_dir: bool) -> None:
        limit = self.options.max_delete
        if limit is None:
            self._candidates.append((parts, is_dir))
            return
        if not self.planned_exact:
            return  # over the limit already
        assert self._store is not None  # set with the merge
        self._counted += remove_tree(self._store.root_fd, parts, self.protected,
                                     count_only=True).entries
        self._candidates.append((parts, is_dir))
        if self._counted > limit:
            self.planned_exact = False
            self._candidates = []

    def take(self, store: MirrorStore | None,
             entries: Sequence[tuple[paths.Parts, bool]]) -> list[tuple[paths.Parts, str]]:
        """Feed the wanted entries of one batch, in order, to the merge; with --delete, a
        directory listed where a non-directory is, or the reverse, is replaced: removed now
        (counted as replaced), except in a dry run. Blocking. Returns problems."""
        merge = self._merge
        problems: list[tuple[paths.Parts, str]] = []
        if merge is None or not self.may_delete:
            return problems
        for parts, is_dir in entries:
            try:
                local = merge.entry(parts, is_dir)
            except MergeLost as e:
                problems.append((parts, str(e)))
                self.listing_failed()
                return problems
            if local is None or (local == DIR) == is_dir:
                continue
            self.replaced += 1
            if self.options.dry_run or store is None or not parts:
                continue
            try:
                removal = remove_tree(store.root_fd, parts, self.protected,
                                      removed=store.file_removed)
            except DeletionStopped as e:
                problems.append((parts, str(e)))
                continue
            problems += removal.problems
        return problems

    # -- after the transfers ---------------------------------------------------------------

    def plan(self, listing_complete: bool, store: MirrorStore | None) -> int:
        """The listing is over: how many entries the deletion would remove (0 if it will
        not run). Blocking."""
        merge, self._merge = self._merge, None
        if not self.options.delete:
            return 0
        if not (listing_complete and self._listing_clean) or merge is None:
            self.deletion = "skipped"
            return 0
        merge.finish()
        self._candidates += merge.candidates  # (those of a merge without a sink)
        planned = Removal()
        if not self.planned_exact:
            planned.entries = self._counted
        elif store is not None:
            for parts, _is_dir in self._candidates:
                planned.add(remove_tree(store.root_fd, parts, self.protected, count_only=True))
        planned.problems = []  # reported by the real run (a dry run changes nothing)
        self._planned = planned
        return planned.entries

    def delete(self, store: MirrorStore | None, allowed: bool) -> list[tuple[paths.Parts, str]]:
        """Remove the candidates (count them only in a dry run), deepest first; or record
        that --max-delete refused (``allowed`` False). Blocking. Returns problems."""
        planned = self._planned
        if planned is None:
            return []
        if not allowed:
            self.deletion = "refused"
            return []
        if self.options.dry_run or store is None:
            self.deleted, self.deleted_bytes = planned.entries, planned.bytes
            return []
        done = Removal()
        for parts, _is_dir in reversed(self._candidates):
            try:
                done.add(remove_tree(store.root_fd, parts, self.protected,
                                     removed=store.file_removed))
            except DeletionStopped as e:
                done.problems.append((parts, str(e)))
        self.deleted, self.deleted_bytes = done.entries, done.bytes
        self._candidates = []
        return done.problems


def open_existing_store(base_dir: str, top: str, budget: DescriptorBudget
                        ) -> MirrorStore | None:
    """The store of a dry run: never created; None if ``MIRROR_DIR/HOST_PORT`` is missing."""
    try:
        return MirrorStore(base_dir, top, budget, create=False)
    except FileNotFoundError:
        return None


__all__ = ["CURRENT", "DIR_IN_THE_WAY", "NEW", "REPLACES", "SpecSync", "classify",
           "open_existing_store"]
