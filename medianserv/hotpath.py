"""The per-trade path: a chunk's trade frames applied, as far as each is the common case.

Theory of operation
-------------------
Almost every frame a reader gets is a trade of a listed symbol, with a valid price, whose id
is the next of its symbol (or one already counted, on a second connection during a
rotation). :meth:`TradePath.consume` takes the bytes of a chunk from a position where a frame
starts and applies such frames one after another, straight from the bytes: the WebSocket
header (a complete, unmasked, unfragmented text frame, under ``max_size``), the trade's fields,
the symbol looked up in the perfect hash, the price parsed, and the update of
:meth:`~medianserv.symbols.SymbolStats.apply_common` under the symbol's lock. It stops at the
first frame that is anything else, and returns where that frame starts: the caller hands it
to the general path (:class:`~medianserv.link.Link`'s protocol for control frames,
:meth:`~medianserv.streams.Reader` for everything else: replies, a first trade, a jump in ids,
a trade inside a gap, an unknown symbol, a bad price, malformed JSON), whole and in order, and
calls :meth:`TradePath.consume` again after it. So nothing is ever dropped or reordered, and
the common case never passes through the interpreter per frame in the compiled twin.

Two twins: :class:`PyTradePath` here, and :class:`CTradePath` in C (``medianserv/_hotpath.c``,
built at install where a C compiler is; None where not), which scans the frame's JSON itself
(strictly: it leaves to the general path anything unusual that the general path's decoder
would still read, an escape in a string, a non-ASCII byte, a nested value beside the fields,
a number that is not a plain integer; never the other way round). Both report what they
applied in the same counters, and the tests hold them to the general path alone, effect for
effect, for any chunking of any sequence of frames.

Pure: no I/O, no clock, no logging; the only lock taken is each symbol's, as
:meth:`SymbolStats.apply` takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .errors import PriceError
from .link import frame_header
from .messages import TradeEvent, _TradeFrame
from .prices import PriceCache
from .symbols import APPLIED, BUSY, SymbolStats, TradeIds

__all__ = ["CTradePath", "PyTradePath", "TradePath"]

_decode = msgspec.json.Decoder(_TradeFrame).decode
_Errors = (msgspec.ValidationError, msgspec.DecodeError)


class PyTradePath:
    """The pure twin (see the module docstring). One per reader; not thread-safe.

    ``index`` is the lookup of the current table (``SymbolTable.get`` here, its
    ``SymbolTable.index`` for the compiled twin), set by the reader before each chunk.
    Counters, since the last :meth:`take_counts`: ``frames`` consumed, trades ``applied``,
    ``duplicates``, ``busy`` (frames it stopped at because another thread held their
    symbol's lock: the general path waits for it), and ``last_event_ms`` (the event time of
    the last trade applied, -1 if none).

    Runtime complexity: :meth:`consume` O(bytes consumed) plus O(log d) per trade.
    """

    __slots__ = ("_prices", "applied", "busy", "duplicates", "frames", "index",
                 "last_event_ms", "max_size")  # fmt: skip

    def __init__(self, max_size: int = 2**20) -> None:
        self.max_size = max_size
        self.index: Callable[[str], SymbolStats | None] | None = None
        self.frames = self.applied = self.duplicates = self.busy = 0
        self.last_event_ms = -1
        self._prices = PriceCache()

    def consume(self, data: bytes, pos: int) -> int:
        """Apply the common trade frames of ``data`` from ``pos`` on (see the module); the
        position of the first frame left to the general path, of an incomplete frame, or
        ``len(data)``."""
        get = self.index
        if get is None:
            return pos
        prices = self._prices
        end, max_size = len(data), self.max_size
        frames = applied = duplicates = 0
        event_ms = -1
        while True:
            header = frame_header(data, pos)
            if header is None:
                break
            head, start, size = header
            stop = start + size
            if head != 0x81 or data[pos + 1] > 127 or size > max_size or stop > end:
                break  # not a complete, unmasked, final text frame: the general path's
            try:
                event: TradeEvent = _decode(data[start:stop]).data
            except _Errors:
                break
            if event.e != "trade":
                break
            stats = get(event.s)
            if stats is None:
                break
            try:
                price = prices.units(event.p)
            except PriceError:
                break
            outcome = stats.apply_common(event.t, price, event.T)
            if outcome is None:
                break
            if outcome is BUSY:
                self.busy += 1
                break
            frames += 1
            if outcome is APPLIED:
                applied += 1
                event_ms = event.E
            else:
                duplicates += 1
            pos = stop
        self.frames += frames
        self.applied += applied
        self.duplicates += duplicates
        if event_ms >= 0:
            self.last_event_ms = event_ms
        return pos

    def take_counts(self) -> tuple[int, int, int, int, int]:
        """``(frames, applied, duplicates, busy, last_event_ms)`` since the last call, reset.
        O(1)."""
        out = (self.frames, self.applied, self.duplicates, self.busy, self.last_event_ms)
        self.frames = self.applied = self.duplicates = self.busy = 0
        self.last_event_ms = -1
        return out


def _compiled() -> Any:
    """The compiled twin's class, or None where it was not built at install. It reads and
    writes the slots of :class:`SymbolStats` and :class:`TradeIds` directly, so it is made
    for these two classes (and checks, once, that their slots are what it expects)."""
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError:
        return None

    class CTradePath(_native.TradePath):  # type: ignore[misc]
        """:class:`PyTradePath` in C (``medianserv/_hotpath.c``)."""

        __slots__ = ()

        def __new__(cls, max_size: int = 2**20) -> Any:
            return super().__new__(cls, SymbolStats, TradeIds, max_size)

    return CTradePath


#: The compiled twin (None where no C compiler was at install).
CTradePath: Any = _compiled()
#: The per-trade path the service uses: the compiled twin where it was built.
TradePath: Any = CTradePath or PyTradePath
