"""What a job asks beyond its SPECs: deletion, dry run, filters (issue 12).

Carried from mirror-init to the mirror server as OPTION and FILTER lines of the control
protocol (doc/protocol.md); the defaults are what a job without those lines gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from mirror.filters import MAX_RULES, FilterList, PatternError, Rule
from mirror.wire.control import FilterRule, JobOption


class JobOptions(NamedTuple):
    """The options of one job, whatever its SPECs.

    (A named tuple, not a dataclass: mirror-init imports it, and making dataclasses and importing
    their module took about half of its start-up, bench/NOTES.md.)"""

    #: Remove what the listing of a SPEC no longer has (after its transfers; rsync's
    #: ``--delete-after``), and replace an entry whose type changed.
    delete: bool = False
    #: Refuse to delete more than this many entries in the job (None: no limit).
    max_delete: int | None = None
    #: List and compare only: report what would be done, change nothing.
    dry_run: bool = False
    #: ``--include`` / ``--exclude`` rules in command-line order.
    filters: tuple[Rule, ...] = ()
    #: Fetch big files from every holder at once (mirror-init ``--no-multi-source``: off).
    multi_source: bool = True

    def filter_list(self) -> FilterList:
        """The compiled rules (raises `mirror.filters.PatternError` for a bad pattern)."""
        return FilterList(self.filters)

    @property
    def reports_sync(self) -> bool:
        """Whether each SPEC's replaced/deleted figures are reported (SOURCE-SYNC)."""
        return self.delete or self.dry_run


def options_lines(options: JobOptions) -> list[JobOption | FilterRule]:
    """The OPTION and FILTER messages that carry ``options`` (none for the defaults)."""
    lines: list[JobOption | FilterRule] = []
    if options.delete:
        lines.append(JobOption("delete"))
    if options.max_delete is not None:
        lines.append(JobOption("max-delete", options.max_delete))
    if options.dry_run:
        lines.append(JobOption("dry-run"))
    lines += [FilterRule(r.include, r.pattern) for r in options.filters]
    if not options.multi_source:
        lines.append(JobOption("no-multi-source"))
    return lines


def options_from_lines(lines: Sequence[JobOption | FilterRule]) -> JobOptions:
    """The options of a job from its OPTION and FILTER messages, in the order received.

    Raises `mirror.filters.PatternError` beyond `mirror.filters.MAX_RULES` patterns.
    """
    delete = dry_run = False
    multi_source = True
    max_delete = None
    rules = []
    for line in lines:
        if isinstance(line, FilterRule):
            rules.append(Rule(line.include, line.pattern))
        elif line.name == "delete":
            delete = True
        elif line.name == "dry-run":
            dry_run = True
        elif line.name == "max-delete":
            max_delete = line.value
        elif line.name == "no-multi-source":
            multi_source = False
    if len(rules) > MAX_RULES:
        raise PatternError(f"more than {MAX_RULES} include/exclude patterns")
    return JobOptions(delete, max_delete, dry_run, tuple(rules), multi_source)
