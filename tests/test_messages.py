"""messages.decode against json.loads as the oracle; garbage never raises."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from medianserv.messages import Rejected, Reply, ServerShutdown, TradeEvent, decode
from medianserv.recordings import read_trade_frames

TRADE = {"e": "trade", "E": 5, "s": "BTCUSDT", "t": 9, "p": "1.50000000", "q": "2", "T": 4,
         "m": True, "M": True}  # fmt: skip


def frame(data: object, stream: str = "btcusdt@trade") -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()


def test_trade_fields() -> None:
    msg = decode(frame(TRADE))
    assert msg == TradeEvent("trade", 5, "BTCUSDT", 9, "1.50000000", 4)
    assert decode(frame(TRADE).decode()) == msg  # str frames too


def test_extra_fields_are_ignored_and_old_fields_accepted() -> None:
    assert isinstance(decode(frame({**TRADE, "b": 1, "a": 2, "new": [1]})), TradeEvent)


def test_classification() -> None:
    assert decode(b'{"result":null,"id":1}') == Reply(1, None, None)
    assert decode(b'{"result":["a@trade"],"id":"x"}') == Reply("x", ["a@trade"], None)
    err = {"code": 4, "msg": "Too many subscriptions"}
    assert decode(json.dumps({"error": err, "id": 2}).encode()) == Reply(2, None, err)
    shutdown = frame({"e": "serverShutdown", "E": 77}, "!serverShutdown")
    assert decode(shutdown) == ServerShutdown(77)
    assert decode(frame({"e": "depthUpdate", "s": "BTCUSDT"})) == Rejected("unexpected_event")
    assert decode(frame({**TRADE, "e": "aggTrade"})) == Rejected("unexpected_event")
    for broken in ({k: v for k, v in TRADE.items() if k != "p"}, {**TRADE, "t": -1},
                   {**TRADE, "p": 1.5}, {**TRADE, "t": "9"}):  # fmt: skip
        assert decode(frame(broken)) == Rejected("invalid_fields")
    for garbage in (b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"stream":1}', b"1e999"):
        assert isinstance(decode(garbage), Rejected)


@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode(data), TradeEvent | Reply | ServerShutdown | Rejected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["e", "E", "s", "t", "p", "T", "x"]), json_values))
def test_random_events_agree_with_json(data: dict[str, object]) -> None:
    msg = decode(frame(data))
    is_trade = (
        data.get("e") == "trade"
        and all(isinstance(data.get(k), str) for k in ("s", "p"))
        and all(type(data.get(k)) is int and data[k] >= 0 for k in ("E", "t", "T"))  # type: ignore[operator]
    )
    assert isinstance(msg, TradeEvent) == is_trade
    if is_trade:
        assert (msg.s, msg.t, msg.p, msg.T, msg.E) == tuple(data[k] for k in "stpTE")  # type: ignore[union-attr]


def test_every_real_frame_decodes_like_json(recordings: list[Path]) -> None:
    n = 0
    for path in recordings:
        for _, raw in read_trade_frames(path):
            oracle = json.loads(raw)["data"]
            msg = decode(raw)
            assert isinstance(msg, TradeEvent)
            assert (msg.s, msg.t, msg.p, msg.T, msg.E) == tuple(oracle[k] for k in "stpTE")
            n += 1
    assert n > 30_000
