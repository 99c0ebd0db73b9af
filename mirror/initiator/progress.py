"""Live progress of a job, fed with control-protocol events.

On a terminal: one status line redrawn in place with ``\\r`` (percentage, bytes and files
done of the totals, rate, ETA), at most every `TTY_INTERVAL` seconds. Elsewhere (a pipe, a
log file): a plain line at most every `PLAIN_INTERVAL` seconds, plus the final one. An update
held back by the throttle is drawn when its interval ends, so the display never stays stale:
the caller (`mirror.initiator.client.follow`) waits on the socket no longer than `wake_at`
and then calls `poll`. ERROR events are printed at once, on their own line, naming the source
and the path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO

from mirror.initiator.report import format_bytes, format_clock, format_rate
from mirror.initiator.spec import format_source
from mirror.text import printable
from mirror.wire.control import (
    Done,
    Progress,
    ServerEvent,
    SourceDone,
    SourceError,
    SourceRequest,
    Spec,
)

TTY_INTERVAL = 0.1
PLAIN_INTERVAL = 1.0
#: The rate is measured over the progress reports of the last RATE_WINDOW seconds.
RATE_WINDOW = 5.0
_BAR = 20


class ProgressDisplay:
    """Writes the progress of one job to ``out``; call it with each event, then `finish`."""

    def __init__(
        self,
        out: IO[str],
        sources: Sequence[SourceRequest],
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self._out = out
        self._sources = list(sources)
        self._clock = clock
        if tty is None:
            isatty = getattr(out, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self._interval = TTY_INTERVAL if tty else PLAIN_INTERVAL
        self._progress: Progress | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._last_draw: float | None = None
        #: When the held-back update is due (on ``clock``), or None.
        self._pending: float | None = None
        self._dirty = False
        self._shown = ""  # the status text now on the terminal line (tty only)
        self._finished = False

    # -- events --------------------------------------------------------------------------

    def __call__(self, event: ServerEvent) -> None:
        self.handle(event)

    def handle(self, event: ServerEvent) -> None:
        """Take one event from the mirror server."""
        if self._finished:
            return
        if isinstance(event, Progress):
            now = self._clock()
            self._progress = event
            self._samples.append((now, event.bytes_done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.popleft()
            self._dirty = True
            self._maybe_draw()
        elif isinstance(event, SourceError):
            self._print_line(self._error_text(event))
        elif isinstance(event, SourceDone) and not event.ok:
            self._print_line(f"failed: {self._source_name(event.index)}")
        elif isinstance(event, Done):
            self.finish()
        elif isinstance(event, Spec):
            self._sources.append(event.source)  # --attach: the job's SOURCEs come first

    def wake_at(self) -> float | None:
        """When `poll` should be called next (on the display's clock), or None."""
        return self._pending

    def poll(self) -> None:
        """Draw the held-back update if its time has come."""
        if self._pending is not None and self._clock() >= self._pending:
            self._pending = None
            if self._dirty and not self._finished:
                self._draw()

    def finish(self) -> None:
        """Draw the final state (if any progress was seen) and end the status line."""
        if self._finished:
            return
        self._finished = True
        self._cancel_pending()
        if self._progress is not None and self._dirty:
            self._draw()
        if self.tty and self._shown:
            self._out.write("\n")
            self._shown = ""
        self._out.flush()

    # -- text ----------------------------------------------------------------------------

    def _source_name(self, index: int) -> str:
        if index < len(self._sources):
            return printable(format_source(self._sources[index]))
        return f"source #{index}"

    def _error_text(self, event: SourceError) -> str:
        where = self._source_name(event.index)
        if event.path is not None:
            where += f": {printable(event.path) or '.'}"
        return f"error: {where}: {printable(event.message)}"

    def rate(self) -> float | None:
        """Bytes per second over the recent window, or None before two reports."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return max(0, b1 - b0) / (t1 - t0)

    def status_text(self) -> str:
        """The status line for the latest PROGRESS (without bar on a plain display)."""
        p = self._progress
        if p is None:
            return ""
        fraction: float | None = None
        if p.listing_done:
            if p.bytes_total:
                fraction = p.bytes_done / p.bytes_total
            elif p.files_total:
                fraction = p.files_done / p.files_total
            else:
                fraction = 1.0
            fraction = min(max(fraction, 0.0), 1.0)
        rate = self.rate()
        parts = []
        if fraction is None:
            parts.append("listing" if not self.tty else "[" + "listing".center(_BAR, ".") + "]")
        else:
            if self.tty:
                filled = int(fraction * _BAR)
                parts.append("[" + "#" * filled + "." * (_BAR - filled) + "]")
            parts.append(f"{int(fraction * 100):3d}%")
        more = "" if p.listing_done else "+"
        parts.append(f"{format_bytes(p.bytes_done)} / {format_bytes(p.bytes_total)}{more}")
        parts.append(f"{p.files_done}/{p.files_total}{more} files")
        parts.append(format_rate(rate) if rate is not None else "-- B/s")
        if fraction is not None and fraction < 1.0 and rate:
            eta = (p.bytes_total - p.bytes_done) / rate
            parts.append(f"ETA {format_clock(eta)}")
        elif fraction is not None and fraction >= 1.0:
            parts.append("done")
        text = "  ".join(parts)
        return text if self.tty else "progress: " + text

    # -- drawing -------------------------------------------------------------------------

    def _maybe_draw(self) -> None:
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= self._interval:
            self._draw()
        elif self._pending is None:
            self._pending = self._last_draw + self._interval

    def _cancel_pending(self) -> None:
        self._pending = None

    def _draw(self) -> None:
        self._cancel_pending()
        self._dirty = False
        self._last_draw = self._clock()
        text = self.status_text()
        if self.tty:
            # Pad over the previous text: a shorter line would leave its tail behind.
            pad = max(0, len(self._shown) - len(text))
            self._out.write("\r" + text + " " * pad)
            self._shown = text
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def _print_line(self, text: str) -> None:
        """Print a line of its own; on a terminal, above the status line."""
        if self.tty and self._shown:
            self._out.write("\r" + " " * len(self._shown) + "\r" + text + "\n")
            self._out.write(self._shown)
        else:
            self._out.write(text + "\n")
        self._out.flush()
