"""Pure pacing helpers: reconnect backoff and a sliding-window limit.

Time is always passed in (``now``), never read, so tests drive them step by step.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

__all__ = ["SlidingWindow", "backoff"]


def backoff(
    initial: float = 0.5,
    maximum: float = 30.0,
    factor: float = 2.0,
    rnd: random.Random | None = None,
) -> Iterator[float]:
    """Endless capped exponential delays with full jitter: uniform in [d/2, d], d doubling.

    Never gives up: a reader reconnects forever. O(1) per delay.

    >>> delays = backoff(1, 8, rnd=random.Random(0))
    >>> [round(next(delays), 2) for _ in range(6)]
    [0.92, 1.76, 2.84, 5.04, 6.05, 5.62]
    """
    rnd = rnd or random.Random()
    delay = initial
    while True:
        yield delay / 2 + rnd.random() * delay / 2
        delay = min(maximum, delay * factor)


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds: Binance's connection-attempt limit
    and its 5-messages-per-second limit are both of this shape.

    Amortised O(1) per event; memory O(limit).

    >>> w = SlidingWindow(limit=2, window=10.0)
    >>> w.try_add(0.0), w.try_add(1.0), w.try_add(2.0), w.wait_time(2.0), w.try_add(10.5)
    (True, True, False, 8.0, True)
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.events: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self.events and self.events[0] <= now - self.window:
            self.events.popleft()

    def try_add(self, now: float) -> bool:
        self._expire(now)
        if len(self.events) >= self.limit:
            return False
        self.events.append(now)
        return True

    def wait_time(self, now: float) -> float:
        self._expire(now)
        if len(self.events) < self.limit:
            return 0.0
        return self.events[0] + self.window - now
