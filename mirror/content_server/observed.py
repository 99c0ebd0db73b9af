"""What a content server has served, for its web status page and /metrics.

Counted by the protocol as it sends (`ServingStats.sent`) and as it answers a request with an
ERROR (`ServingStats.error`); read by mirror.web.content_site. Bounded: at most `MAX_CLIENTS`
client addresses are counted one by one, the bytes of any further ones under ``"other"``.
"""

from __future__ import annotations

from collections import Counter

from mirror.wire import frames

MAX_CLIENTS = 256
OTHER = "other"
#: The label of each ERROR code in /metrics and on the page.
ERROR_NAMES = {
    frames.E_NOT_FOUND: "not_found", frames.E_NOT_ALLOWED: "not_allowed",
    frames.E_BAD_REQUEST: "bad_request", frames.E_CHANGED: "changed", frames.E_IO: "io",
    frames.E_BUSY: "busy",
}


class ServingStats:
    """Bytes sent per client address and in all, requests answered, errors by code."""

    def __init__(self) -> None:
        self.bytes_total = 0
        self.bytes_by_client: dict[str, int] = {}
        self.requests = 0
        self.errors: Counter[str] = Counter()

    def sent(self, client: str, n: int) -> None:
        self.bytes_total += n
        if client not in self.bytes_by_client and len(self.bytes_by_client) >= MAX_CLIENTS:
            client = OTHER
        self.bytes_by_client[client] = self.bytes_by_client.get(client, 0) + n

    def error(self, code: int) -> None:
        self.errors[ERROR_NAMES.get(code, "other")] += 1
