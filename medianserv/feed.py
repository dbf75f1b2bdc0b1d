"""Which symbols changed when: the change feed behind ``GET /-/all?since=<version>`` (pure).

A dashboard that polls every symbol every 2 s moves the whole table each time (573 KB with
the 2,292 real symbols), whether anything changed or not. The feed lets it ask for what
changed since the version it holds instead.

:class:`ChangeFeed` keeps a sequence of *ticks*. Each :meth:`ChangeFeed.tick` is given every
symbol's *key* (anything that changes when what is served for it changes: its stats' version,
its rate, its history status) and records the symbols whose key differs from the last tick's.
A version is ``"<epoch>.<tick>"``: the epoch is this process's (a restart starts another), so
a version from another process, one older than the ticks kept, or one from before the listing
changed is answered with everything (``full``), never with a delta it cannot vouch for.

Runtime complexity: :meth:`tick` O(symbols); :meth:`since` O(changes after the version asked
for); memory O(symbols + changes in the ticks kept).

>>> feed = ChangeFeed("e", keep=3)
>>> feed.tick({"A": 1, "B": 1}, ("A", "B"))
'e.1'
>>> feed.tick({"A": 2, "B": 1}, ("A", "B"))
'e.2'
>>> sorted(feed.since("e.1")), feed.since("e.0"), feed.since("other.1")
(['A'], None, None)
>>> feed.tick({"A": 2, "B": 1}, ("A", "B")), feed.since("e.2")
('e.2', set())
>>> feed.since("e.\u00b2")
Traceback (most recent call last):
...
ValueError: not a version: expected 'none' or one from an earlier answer
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Hashable, Mapping

__all__ = ["ChangeFeed"]

#: A version as :attr:`ChangeFeed.version` writes it (ASCII only: ``re.ASCII``).
_VERSION = re.compile(r"([A-Za-z0-9_-]{1,64})\.([0-9]{1,18})", re.ASCII)


class ChangeFeed:
    """Ticks of changed symbols, the last ``keep`` of them (see the module docstring).
    Not thread-safe: its owner serialises :meth:`tick` and :meth:`since`."""

    def __init__(self, epoch: str, keep: int = 300) -> None:
        if "." in epoch or keep < 1:
            raise ValueError("an epoch without dots, and at least one tick kept")
        self.epoch = epoch
        self.keep = keep
        self._tick = 0
        self._keys: dict[str, Hashable] = {}  # each symbol's key at the last tick
        self._listing: tuple[str, ...] | None = None
        self._changes: deque[tuple[int, frozenset[str]]] = deque()  # (tick, changed), oldest first
        self._base = 0  # the oldest tick a delta can start from

    @property
    def version(self) -> str:
        """The current version, ``"<epoch>.<tick>"``. O(1)."""
        return f"{self.epoch}.{self._tick}"

    def tick(self, keys: Mapping[str, Hashable], listing: tuple[str, ...]) -> str:
        """Record what changed since the last tick: the symbols whose key differs. A new
        listing starts afresh (every version before it is answered in full). Returns the
        version, unchanged when nothing changed. O(symbols)."""
        if listing != self._listing:
            self._listing = listing
            self._keys = dict(keys)
            self._tick += 1
            self._changes.clear()
            self._base = self._tick
            return self.version
        old = self._keys
        changed = frozenset(s for s, k in keys.items() if old.get(s) != k)
        if changed:
            self._keys = dict(keys)
            self._tick += 1
            self._changes.append((self._tick, changed))
            while len(self._changes) > self.keep:
                self._base = self._changes.popleft()[0]
        return self.version

    def since(self, version: str) -> set[str] | None:
        """The symbols changed after ``version``, or None when that version cannot be
        answered with a delta (``"none"``, another epoch, too old, before the listing).
        ``ValueError`` for text that is no version at all: ``"<epoch>.<tick>"`` with ASCII
        letters, digits, ``-`` or ``_`` in the epoch and ASCII digits in the tick (not any
        Unicode digit: ``"e.²"`` is refused). O(changes since)."""
        if version == "none":
            return None
        match = _VERSION.fullmatch(version)
        if match is None:
            raise ValueError("not a version: expected 'none' or one from an earlier answer")
        epoch, tick_text = match.groups()
        if epoch != self.epoch:
            return None
        tick = int(tick_text)
        if tick < self._base or tick > self._tick:
            return None
        out: set[str] = set()
        for t, changed in reversed(self._changes):
            if t <= tick:
                break
            out |= changed
        return out
