"""Samples of every symbol's numbers over the last hour, for the dashboard's charts (pure).

One sample every ``interval`` seconds, the last ``capacity`` of them in a ring of ``array``s:
40 bytes a sample, allocated only for symbols that trade. Memory is bounded whatever the run
length: 360 samples (an hour at 10 s) x 2,292 symbols is at most 33 MB.

Besides the count, each sample keeps the *live* count (trades counted but for those imported
from the symbol's history), so that the trade rate says how fast the market trades, not how
fast the history import runs.

>>> r = Ring(3)
>>> for t in range(5):
...     r.append(t, t * 10, 2 * t, t)
>>> [s[0] for s in r.samples()]
[2, 3, 4]
"""

from __future__ import annotations

from array import array

__all__ = ["Ring", "SampleBook"]

NONE = -1  # stands for "no value" (no trade yet) in the int arrays


class Ring:
    """Fixed-capacity ring of (time_ms, count, twice_median, last_price) samples, each with its
    live count (for :meth:`rate`).

    Runtime complexity: :meth:`append` and :meth:`rate` O(1); :meth:`samples` O(capacity);
    memory O(capacity).
    Not thread-safe: one writer; readers copy with :meth:`samples` under the owner's lock.
    """

    __slots__ = ("_cols", "_next", "_size", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._cols = [array("q", bytes(8 * capacity)) for _ in range(5)]
        self._next = 0  # where the next sample goes
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(
        self,
        time_ms: int,
        count: int,
        twice_median: int | None,
        last_price: int | None,
        live: int | None = None,
    ) -> None:
        """One sample; ``live`` (default: ``count``) is what :meth:`rate` counts."""
        i = self._next
        t, c, m, p, lv = self._cols
        t[i], c[i] = time_ms, count
        lv[i] = count if live is None else live
        m[i] = NONE if twice_median is None else twice_median
        p[i] = NONE if last_price is None else last_price
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def samples(self) -> list[tuple[int, int, int | None, int | None]]:
        """Oldest first."""
        start = (self._next - self._size) % self.capacity
        t, c, m, p, _ = self._cols
        out = []
        for k in range(self._size):
            i = (start + k) % self.capacity
            out.append((t[i], c[i], None if m[i] == NONE else m[i], None if p[i] == NONE else p[i]))
        return out

    def rate(self, now_ms: int, window_ms: int = 60_000) -> float:
        """Live trades per second over about the last ``window_ms`` (0 with fewer than 2
        samples). Samples are taken at a steady interval, so the one about ``window_ms``
        before the last is found by arithmetic: O(1)."""
        n = self._size
        if n < 2:
            return 0.0
        t, _, _, _, live = self._cols
        cap = self.capacity
        last = (self._next - 1) % cap
        step = t[last] - t[(last - 1) % cap]
        back = n - 1 if step <= 0 else max(1, min(n - 1, round(window_ms / step)))
        first = (last - back) % cap
        if t[last] <= t[first]:
            return 0.0
        return (live[last] - live[first]) * 1000 / (t[last] - t[first])


class SampleBook:
    """A :class:`Ring` per symbol that trades. ``lock`` guards the dict and the rings.

    Runtime complexity: :meth:`sample` O(symbols); :meth:`samples` O(capacity); memory
    O(trading symbols x capacity).
    """

    def __init__(self, capacity: int) -> None:
        import threading

        self.capacity = capacity
        self.lock = threading.Lock()  # guards rings (written by the sampler, read by the API)
        self.rings: dict[str, Ring] = {}

    def sample(
        self, views: list[tuple[str, int, int | None, int | None, int]], now_ms: int
    ) -> None:
        """Record (symbol, count, twice_median, last_price, live count) for every symbol that
        has traded."""
        with self.lock:
            for symbol, count, twice, last, live in views:
                if count == 0:
                    continue
                ring = self.rings.get(symbol)
                if ring is None:
                    ring = self.rings[symbol] = Ring(self.capacity)
                ring.append(now_ms, count, twice, last, live)

    def samples(self, symbol: str) -> list[tuple[int, int, int | None, int | None]]:
        with self.lock:
            ring = self.rings.get(symbol)
            return ring.samples() if ring is not None else []

    def rates(self, now_ms: int) -> dict[str, float]:
        """Live trades per second over the last minute, per symbol that traded."""
        with self.lock:
            return {s: r.rate(now_ms) for s, r in self.rings.items()}
