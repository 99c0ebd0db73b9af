"""What the index did since it started, counted by its protocol (`IndexServerProtocol`) and
shown by its web site (``--web``): queries by kind, rows answered, registration requests by
kind, refusals by error code. Counters only: memory does not grow with the traffic."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: Request kinds a node sends, by opcode name (the labels of the metrics: a fixed set).
REQUEST_KINDS = ("hello", "renew", "begin", "files", "remove", "end", "withdraw")
#: WHERE by what it asks for.
QUERY_KINDS = ("path", "digest")


@dataclass
class IndexActivity:
    """Counters of one index daemon."""

    queries: Counter[str] = field(default_factory=Counter)
    rows_answered: int = 0
    #: Queries whose answer was cut at --max-answer.
    truncated: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    #: ERROR answers, by code.
    errors: Counter[int] = field(default_factory=Counter)
