"""Waiting on a condition, never on the clock: the one way integration tests synchronise.

A test that sleeps for a fixed time either wastes that time or, on a loaded machine, fails
because the thing it waited for was not done yet. These helpers poll the real condition
often and give up only at a generous deadline, which is a bound on failure, not a timing the
test depends on: a slow machine makes the test slower, never wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet import reactor, task

#: Seconds between two looks at the condition.
INTERVAL = 0.01


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0,
                   what: str = "the condition") -> None:
    """Let the reactor run until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, INTERVAL, lambda: None)


def poll(predicate: Callable[[], object], timeout: float = 10.0,
         what: str = "the condition") -> None:
    """Block until ``predicate()`` is true; fail after ``timeout`` seconds.

    Only where no reactor runs in this thread: subprocess tests, or a worker thread.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(INTERVAL)
