"""Pure pacing helpers: reconnect backoff and a sliding-window limit.

Time is always passed in (``now``), never read, so tests drive them step by step.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

__all__ = ["SlidingWindow", "WeightBudget", "backoff"]


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


class WeightBudget:
    """Binance's REST weight in its fixed windows (one clock minute): the IP's weight as Binance
    last reported it (``X-MBX-USED-WEIGHT-1M``) plus the weight of our requests still in
    flight, which no report covers yet. Callers share one budget and each asks for room under
    its own ceiling, so a request is sent only if the IP stays under that ceiling even if every
    request in flight lands in this window. A 429 or 418 blocks every caller until its
    ``Retry-After`` has passed.

    Not thread-safe (its owner locks); O(1) per call. Time is passed in, never read.

    >>> b = WeightBudget(window=60.0)
    >>> b.try_acquire(4, ceiling=10, now=0.0), b.try_acquire(4, 10, 1.0), b.try_acquire(4, 10, 2.0)
    (True, True, False)
    >>> b.release(4, reported=4, now=3.0); b.used(3.0)
    8
    >>> b.wait_time(3.0), b.try_acquire(4, 10, 60.0), b.used(60.0)
    (57.0, True, 8)
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._index = -1  # the window `reported` belongs to
        self.reported = 0  # highest weight Binance reported in it
        self.in_flight = 0  # weight of requests sent and not yet answered
        self.blocked_until = 0.0  # after a 429/418: Retry-After

    def _roll(self, now: float) -> None:
        index = int(now // self.window)
        if index != self._index:
            self._index, self.reported = index, 0

    def used(self, now: float) -> int:
        """The IP's weight in the current window as far as we know. O(1)."""
        self._roll(now)
        return self.reported + self.in_flight

    def try_acquire(self, weight: int, ceiling: float, now: float) -> bool:
        """Reserve ``weight`` if the total stays within ``ceiling``; False otherwise. O(1)."""
        if now < self.blocked_until or self.used(now) + weight > ceiling:
            return False
        self.in_flight += weight
        return True

    def release(self, weight: int, reported: int | None, now: float) -> None:
        """A request of ``weight`` was answered; Binance said the IP has used ``reported``."""
        self.in_flight = max(0, self.in_flight - weight)
        self._roll(now)
        if reported is not None:
            self.reported = max(self.reported, reported)

    def block(self, until: float) -> None:
        """Binance said stop (429/418): nothing is sent before ``until``."""
        self.blocked_until = max(self.blocked_until, until)

    def wait_time(self, now: float) -> float:
        """Seconds until room may free up: the next window, or the end of a block. O(1)."""
        if now < self.blocked_until:
            return self.blocked_until - now
        return (int(now // self.window) + 1) * self.window - now
