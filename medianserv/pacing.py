"""Pure pacing helpers: reconnect backoff, a token bucket and a sliding-window limit.

Time is always passed in (``now``), never read, so tests drive them step by step.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

__all__ = ["SlidingWindow", "TokenBucket", "backoff"]


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


class TokenBucket:
    """At most ``rate`` events per second on average, bursts up to ``burst``. O(1).

    >>> b = TokenBucket(rate=2, burst=2, now=0.0)
    >>> b.try_take(0.0), b.try_take(0.0), b.try_take(0.0), b.try_take(0.5)
    (True, True, False, True)
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds (Binance's connection-attempt limit).

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
