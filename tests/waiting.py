"""The tests' one way to wait: ask again until the answer comes, and say what never came.

Workers, fork servers, torchrun ranks and web servers run in other processes, so a test cannot
know when they are done; it asks, again and again, until the answer comes or a generous time is
up. ``from waiting import wait_for`` (the tests folder is on the import path, as for
``pictures``).
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

Answer = TypeVar("Answer")

DEFAULT_TIMEOUT = 60.0  # seconds; generous, as the two cores are shared with other test suites


def wait_for(condition: Callable[[], Answer], what: str | Callable[[], str] = "the condition", *,
             timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05) -> Answer:
    """Call ``condition()`` every ``interval`` seconds until it returns something true; return that.

    After ``timeout`` seconds raise ``AssertionError`` saying what was awaited: ``what``, or what the
    function ``what`` returns then (to describe what was seen instead).
    """
    deadline = time.monotonic() + timeout
    while True:
        answer = condition()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up waiting for {what() if callable(what) else what} after {timeout:g} s")
        time.sleep(interval)
