"""Decoding combined-stream frames (pure): a trade, a reply, a shutdown notice or a rejection.

The per-trade hot path decodes with msgspec straight into a typed struct holding only the
fields we use: about 0.36 us a frame against 1.7 us for ``json.loads`` (see the README).
Unknown extra fields are ignored, as Binance may add some. Anything that is not a trade falls
back to a generic decode to tell replies and notices from garbage.

>>> decode(b'{"stream":"btcusdt@trade","data":{"e":"trade","E":2,"s":"BTCUSDT","t":7,'
...        b'"p":"61837.63000000","q":"0.02","T":1,"m":true,"M":true}}')
TradeEvent(e='trade', E=2, s='BTCUSDT', t=7, p='61837.63000000', T=1)
>>> decode(b'{"result":null,"id":3}')
Reply(id=3, result=None, error=None)
>>> decode(b'{"stream":"x@trade","data":{')
Rejected(kind='malformed')

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

__all__ = ["Rejected", "Reply", "ServerShutdown", "TradeEvent", "decode"]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class TradeEvent(msgspec.Struct, gc=False):
    """The fields of a Binance trade event that medianserv uses (price left as text)."""

    e: str  # event type: "trade"
    E: NonNegative  # event time, ms
    s: str  # symbol
    t: NonNegative  # trade id
    p: str  # price, a decimal string
    T: NonNegative  # trade time, ms


class _TradeFrame(msgspec.Struct, gc=False):
    data: TradeEvent


class Reply(msgspec.Struct):
    """The answer to a SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS request."""

    id: Any
    result: Any = None
    error: Any = None


class ServerShutdown(msgspec.Struct):
    """Binance announces a planned disconnect: reconnect promptly."""

    time_ms: int


class Rejected(msgspec.Struct):
    """A frame we do not apply; ``kind`` names the counter it goes to."""

    kind: str  # malformed, invalid_fields (missing or mistyped), unexpected_event


_trade_decoder = msgspec.json.Decoder(_TradeFrame)
_any_decoder = msgspec.json.Decoder()

Message = TradeEvent | Reply | ServerShutdown | Rejected


def decode(frame: bytes | bytearray | memoryview | str) -> Message:
    """Classify one combined-stream frame. O(len(frame)).

    A trade comes back as a :class:`TradeEvent` whose ``e`` is ``"trade"``; the price is
    parsed by the caller (:func:`~medianserv.prices.parse_price`) so a bad price is counted
    against the right symbol.
    """
    try:
        event = _trade_decoder.decode(frame).data
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _slow_path(frame)
    if event.e != "trade":
        return Rejected("unexpected_event")
    return event


def _slow_path(frame: bytes | bytearray | memoryview | str) -> Message:
    try:
        obj = _any_decoder.decode(frame)
    except msgspec.DecodeError:
        return Rejected("malformed")
    if not isinstance(obj, dict):
        return Rejected("malformed")
    if "id" in obj and ("result" in obj or "error" in obj):
        return Reply(obj["id"], obj.get("result"), obj.get("error"))
    data = obj.get("data")
    if isinstance(data, dict):
        if data.get("e") == "serverShutdown":
            e_time = data.get("E")
            return ServerShutdown(e_time if isinstance(e_time, int) else 0)
        if data.get("e") == "trade":
            return Rejected("invalid_fields")
    return Rejected("unexpected_event")
