"""What a job asked beyond its SPECs, as the journal keeps it: its `JobOptions` (--delete,
--max-delete, --dry-run, filters), its --bwlimit and its links mode, so that a job resumed
after a restart runs as it was submitted.

Stored as the JSON object of the journal's ``options`` column (`mirror.mirror_server.journal`).
A record written before these options existed has ``{}``: the defaults of a job without
OPTION, FILTER, BWLIMIT or LINKS lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirror.filters import Rule
from mirror.job_options import JobOptions
from mirror.mirror_server.links import LINKS_MODES, LINKS_SAFE


@dataclass(frozen=True)
class JobRequest:
    """The options of a job as submitted (besides its SPECs)."""

    options: JobOptions = JobOptions()
    #: Bytes per second shared by the job's connections (0: no limit).
    bwlimit: int = 0
    links_mode: str = LINKS_SAFE

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready form kept in the journal."""
        o = self.options
        return {
            "delete": o.delete,
            "max_delete": o.max_delete,
            "dry_run": o.dry_run,
            "filters": [[r.include, r.pattern] for r in o.filters],
            "bwlimit": self.bwlimit,
            "links": self.links_mode,
        }

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> JobRequest:
        """Read `to_record`'s form back; raises `ValueError` for a value that is not one."""
        max_delete = raw.get("max_delete")
        if max_delete is not None and (not isinstance(max_delete, int) or max_delete < 0):
            raise ValueError(f"bad max_delete {max_delete!r}")
        filters = []
        for item in raw.get("filters", []):
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bool)
                    or not isinstance(item[1], str)):
                raise ValueError(f"bad filter {item!r}")
            filters.append(Rule(item[0], item[1]))
        bwlimit = raw.get("bwlimit", 0)
        if not isinstance(bwlimit, int) or bwlimit < 0:
            raise ValueError(f"bad bwlimit {bwlimit!r}")
        links_mode = raw.get("links", LINKS_SAFE)
        if links_mode not in LINKS_MODES:
            raise ValueError(f"bad links mode {links_mode!r}")
        options = JobOptions(bool(raw.get("delete", False)), max_delete,
                             bool(raw.get("dry_run", False)), tuple(filters))
        return cls(options, bwlimit, links_mode)


__all__ = ["JobRequest"]
