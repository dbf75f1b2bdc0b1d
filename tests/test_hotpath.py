"""The per-trade path: both twins (pure and compiled) against the general path alone, effect
for effect, through a real reader over a real socket, for any chunking of any sequence of
frames (hostile ones included); and the compiled perfect hash, checksums and lock against
their Python twins."""

from __future__ import annotations

import random
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, SERVER
from websockets.uri import parse_uri

from medianserv import symbols
from medianserv.candles import PyPeriod, period_key, state_key
from medianserv.config import Config
from medianserv.hotpath import CTradePath
from medianserv.link import Link
from medianserv.perfect_hash import PerfectHash
from medianserv.streams import AttemptGate, Reader, _Connection
from medianserv.symbols import APPLIED, SymbolStats, SymbolTable

from .support import wait_for

needs_c = pytest.mark.skipif(CTradePath is None, reason="the compiled twins were not built")

SYMBOLS = ["BTCUSDT", "ETHBTC", "BNBUSDT", "币安人生USDT", "XRPEUR"]
BASE = 1_000  # the first trade id of every symbol
MAX_SIZE = 2_000  # frames beyond it fail the connection (a small max_size makes it reachable)
KINDS = ["general", "py"] + (["C"] if CTradePath is not None else [])


@pytest.fixture(autouse=True)
def _compiled_by_default() -> Iterator[None]:
    yield
    symbols.use_compiled(CTradePath is not None)


# -- frames ----------------------------------------------------------------------------------

PRICES = ["100.5", "100.50000000", "0.00000001", "99999999999.99999999", "7", "100.5"]
BAD_PRICES = ["1e5", "-1", "1.123456789", "", " 1", "\u0661", "1.", ".5", "123456789012"]
STYLES = ["plain"] * 8 + [
    "spaced", "reordered", "escaped", "extra", "dupkey", "float", "leading0", "not_trade",
    "missing", "bigint", "negative", "unicode", "binary", "fragmented", "bad_price",
    "unknown", "nul",
]  # fmt: skip


def trade_json(symbol: str, tid: int, price: str, style: str, ms: int) -> bytes:
    stream = symbol.lower() + "@trade"
    fields = [("e", '"trade"'), ("E", str(ms + 1)), ("s", f'"{symbol}"'), ("t", str(tid)),
              ("p", f'"{price}"'), ("q", '"1.00000000"'), ("T", str(ms)), ("m", "true"),
              ("M", "false")]  # fmt: skip
    if style == "escaped":
        fields[2] = ("s", '"\\u0042' + symbol[1:] + '"') if symbol == "BTCUSDT" else fields[2]
    elif style == "extra":
        fields.append(("x", '{"y":[1,2.5,null]}'))
    elif style == "dupkey":
        fields.append(("t", str(tid + 1)))
    elif style == "float":
        fields[1] = ("E", "1.5")
    elif style == "leading0":
        fields[3] = ("t", "0" + str(tid))
    elif style == "not_trade":
        fields[0] = ("e", '"aggTrade"')
    elif style == "missing":
        del fields[4]
    elif style == "bigint":
        fields[3] = ("t", "123456789012345678901234567890")
    elif style == "negative":
        fields[3] = ("t", "-" + str(tid))
    elif style == "unicode":
        fields[5] = ("q", '"1.0\u00e9"')
    elif style == "nul":
        fields[5] = ("q", '"1\\u0000"')
    if style == "reordered":
        fields.reverse()
    sep, colon = (" ,\n", " : ") if style == "spaced" else (",", ":")
    data = "{" + sep.join(f'"{k}"{colon}{v}' for k, v in fields) + "}"
    if style == "reordered":
        return f'{{"data":{data},"stream":"{stream}","extra":0}}'.encode()
    return f'{{"stream"{colon}"{stream}"{sep}"data"{colon}{data}}}'.encode()


def frame(payload: bytes, opcode: Opcode = Opcode.TEXT) -> list[bytes]:
    return [Frame(opcode, payload).serialize(mask=False)]


MOVES = [0] * 12 + [-1, -2, -3, -4, 1, 2, 3, 5, 40]  # next trade, back (repeat or gap), skip
OTHERS = ["reply", "shutdown", "ping", "garbage", "mutated"]


def event(pick: int, seed: int) -> tuple[str, int, int, int, str]:
    """One event of a script: 4 in 5 a trade (its symbol, id move, price and style drawn
    from ``seed``), else another frame."""
    rnd = random.Random(seed)
    if pick < 80:
        return ("trade", rnd.randrange(len(SYMBOLS)), rnd.choice(MOVES),
                rnd.randrange(len(PRICES)), rnd.choice(STYLES))  # fmt: skip
    kind = OTHERS[pick % len(OTHERS)]
    a = {"reply": rnd.choice([1, 2, 3, 99]), "garbage": seed, "mutated": seed % len(SYMBOLS)}
    return (kind, a.get(kind, 0), seed, 0, "")


#: Scripts of up to 100 events, mostly trades (the stream's own mix), every style common.
events = st.lists(
    st.builds(event, st.integers(0, 99), st.integers(0, 2**32)), min_size=1, max_size=100
)


def wire_of(script: list[tuple[str, int, int, int, str]], fatal: str | None) -> bytes:
    """The server's bytes for a script of events (ids follow each symbol's own sequence)."""
    next_id = dict.fromkeys(SYMBOLS, BASE)
    out: list[bytes] = []
    for k, (kind, a, b, c, style) in enumerate(script):
        ms = 1_700_000_000_000 + k
        if kind == "trade":
            symbol = SYMBOLS[a] if style != "unknown" else "NOPEUSDT"
            tid = max(BASE, next_id.get(symbol, BASE) + b)
            next_id[symbol] = max(next_id.get(symbol, BASE), tid + 1)
            price = PRICES[c] if style != "bad_price" else BAD_PRICES[c % len(BAD_PRICES)]
            payload = trade_json(symbol, tid, price, style, ms)
            if style == "binary":
                out += frame(payload, Opcode.BINARY)
            elif style == "fragmented":
                half = len(payload) // 2
                out.append(Frame(Opcode.TEXT, payload[:half], fin=False).serialize(mask=False))
                out.append(Frame(Opcode.CONT, payload[half:]).serialize(mask=False))
            else:
                out += frame(payload)
        elif kind == "reply":
            result = '["btcusdt@trade"]' if a == 2 else "null"
            out += frame(f'{{"result":{result},"id":{a}}}'.encode())
        elif kind == "shutdown":
            out += frame(b'{"stream":"!x","data":{"e":"serverShutdown","E":5}}')
        elif kind == "ping":
            out += frame(b"p%d" % k, Opcode.PING)
        elif kind == "garbage":
            out += frame(random.Random(a).randbytes(a % 60))
        else:  # a plain trade with bytes changed: hostile, whatever it decodes to
            rnd = random.Random(b)
            payload = bytearray(trade_json(SYMBOLS[a], next_id[SYMBOLS[a]], "100.5", "plain", ms))
            for _ in range(1 + b % 4):
                payload[rnd.randrange(len(payload))] = rnd.choice(b'0123456789",:{}[]e\\ \xff.')
            out += frame(bytes(payload))
    if fatal == "masked":  # a server must not mask: the protocol fails the connection
        out.append(Frame(Opcode.TEXT, b'{"a":1}').serialize(mask=True))
    elif fatal == "too_big":
        out += frame(b" " * (MAX_SIZE + 1))
    if fatal:
        out += frame(trade_json(SYMBOLS[0], next_id[SYMBOLS[0]], "1", "plain", 0))
    return b"".join(out)


# -- a reader over a socket, as the service runs it ------------------------------------------


class Owner:
    """What a reader needs from its owner (the Ingest): the table, and where gaps go."""

    def __init__(self, table: SymbolTable) -> None:
        self.table = table
        self.gaps: list[str] = []

    def gap_found(self, symbol: str) -> None:
        self.gaps.append(symbol)

    def resubscribed(self, streams: frozenset[str]) -> None:
        pass


class Pipeline:
    """One reader of one kind (``general``: no trade path; ``py``, ``C``: the twins) with its
    own table, reading a socket we write to."""

    def __init__(self, kind: str, baselined: dict[str, bool]) -> None:
        symbols.use_compiled(kind == "C")
        self.table = SymbolTable.build(SYMBOLS)
        for symbol, stats in self.table.items():
            if symbol in baselined:  # True: quiet (every streamed trade is ours, below too)
                stats.baseline(-1 if baselined[symbol] else BASE - 1, 0)
        self.owner = Owner(self.table)
        config = Config(trade_path="C" if kind == "C" else "python")
        self.reader = Reader(0, self.owner, config, AttemptGate(100, 1.0))
        if kind == "general":
            self.reader.path = None
        assert kind != "C" or isinstance(self.reader.path, CTradePath)
        self.ours, self.theirs = socket.socketpair()
        protocol = ClientProtocol(parse_uri("ws://x/stream"), state=OPEN, max_size=MAX_SIZE)
        link = Link(self.ours, protocol, close_timeout=0.01)
        link.max_size = MAX_SIZE
        conn = self.conn = _Connection(link, 0.0, 1e18, 5.0)
        conn.handle = lambda payloads: self.reader._handle_all(payloads, conn)
        conn.pending = {1: ("SUBSCRIBE", ["btcusdt@trade"]), 2: ("LIST_SUBSCRIPTIONS", [])}

    def drive(self, wire: bytes, cuts: list[int]) -> None:
        """Write the wire in chunks, reading each in full before the next (the socket may cut
        a chunk further)."""
        pos = 0
        link = self.conn.link
        for cut in [*cuts, len(wire)]:
            chunk = wire[pos : pos + max(1, cut)]
            pos += len(chunk)
            self.theirs.sendall(chunk)
            got = 0
            while got < len(chunk):
                link.last_read = 0
                try:
                    self.reader._read(self.conn, 5.0)
                except ConnectionClosed:
                    return
                got += link.last_read
            if pos >= len(wire):
                return

    def effects(self) -> Any:
        per_symbol = {}
        for symbol, stats in self.table.items():
            full = stats.full_state()
            candles = None if stats.candles is None else stats.candles.canonical()
            harvest = stats.harvest()
            levels = None if harvest is None else harvest.levels.final()  # type: ignore[union-attr]
            stored = None if harvest is None else state_key(harvest.candles)
            per_symbol[symbol] = (full, stats.view(), stats.version, candles, levels, stored)
            stats._check()
        s = self.reader.stats
        counters = (s.frames, s.applied, s.duplicates, s.filled, s.gaps, dict(s.rejected),
                    s.shutdown_notices, self.reader._rotate_now)  # fmt: skip
        self.theirs.setblocking(False)
        sent = b""
        try:
            while chunk := self.theirs.recv(1 << 16):
                sent += chunk
        except BlockingIOError:
            pass
        p = ClientProtocol(parse_uri("ws://x/stream"), state=OPEN)
        p.side = SERVER  # our frames are masked at random: read them as the server would
        p.receive_data(sent)
        frames = [(f.opcode, bytes(f.data)) for f in p.events_received() if isinstance(f, Frame)]
        return (per_symbol, counters, self.owner.gaps, sorted(self.conn.subscribed),
                sorted(self.conn.pending), frames, self.conn.link.protocol.state)  # fmt: skip

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@settings(max_examples=300, deadline=None)
@given(
    events,
    st.lists(st.integers(1, 400), max_size=20),
    st.dictionaries(st.sampled_from(SYMBOLS), st.booleans()),
    st.sampled_from([None] * 8 + ["masked", "too_big"]),
)
def test_both_trade_paths_equal_the_general_path(
    script: list[tuple[str, int, int, int, str]], cuts: list[int], baselined: dict[str, bool],
    fatal: str | None,
) -> None:  # fmt: skip
    """Whatever the frames (trades next, repeated, skipping ahead or back into a gap; JSON
    the compiled path leaves to the general one; bad prices, unknown symbols, garbage, bytes
    changed at random; replies, notices, pings, fragments, binary frames; a frame that fails
    the connection) and however the bytes are cut: each symbol's count, levels, median, trade
    ids, gaps, last trade, version and snapshot log, the reader's counters and rejections,
    the gaps reported, the replies taken and the pongs sent are the same with either trade
    path as with the general path alone."""
    wire = wire_of(script, fatal)
    results = []
    for kind in KINDS:
        pipeline = Pipeline(kind, baselined)
        try:
            pipeline.drive(wire, cuts)
            results.append((kind, pipeline.effects()))
        finally:
            pipeline.close()
    reference = results[0][1]
    for kind, got in results[1:]:
        assert got[0] == reference[0], f"{kind}: statistics differ"
        assert got[1:] == reference[1:], f"{kind}: counters, replies or frames sent differ"


def test_the_trade_path_takes_the_common_frames() -> None:
    """The twins do take the common case (so the property test above is not vacuous): once
    a symbol's current minute has begun (its first trade, through the general path), a run
    of next trades and repeats in that minute is consumed whole, and what follows it (a
    reply) is where each stops; a trade of a later minute is taken too (the minute before
    queued for the book to retire), a late one (before the current minute) is not."""
    for kind in KINDS[1:]:
        pipeline = Pipeline(kind, dict.fromkeys(SYMBOLS, False))
        path = pipeline.reader.path
        path.index = pipeline.table.index if kind == "C" else pipeline.table.get
        stats = pipeline.table.get("BTCUSDT")
        assert stats is not None
        stats.apply(BASE, 150_000_000, 0)  # the minute's first trade: Candles.add's general case
        trades = b"".join(frame(trade_json("BTCUSDT", BASE + i, "1.5", "plain", i))[0]
                          for i in [1, 2, 1, 3])  # fmt: skip
        reply = frame(b'{"result":null,"id":1}')[0]
        data = trades + reply + trades
        assert path.consume(data, 0) == len(trades), kind
        assert path.take_counts() == (4, 3, 1, 0, 3 + 1), kind
        assert path.consume(data, len(trades)) == len(trades), kind  # the reply: general path
        assert stats.view().count == 4 and stats.version == 1 + 4  # baseline
        later = frame(trade_json("BTCUSDT", BASE + 4, "1.5", "plain", 60_000))[0]
        assert path.consume(later, 0) == len(later), kind  # a new minute: rolled
        candles = stats.candles
        assert candles is not None and candles.minute.count == 1
        assert [m.count for m in candles.retiring] == [4], kind  # retired by the book's next use
        assert stats.minute is candles.minute
        late = frame(trade_json("BTCUSDT", BASE + 5, "1.5", "plain", 59_999))[0]
        assert path.consume(late, 0) == 0, kind  # before the current minute: the general path
        stats._check()
        assert not candles.retiring and candles.open[0][0].count == 4
        pipeline.close()


@pytest.mark.parametrize("kind", KINDS[1:])
def test_a_trade_whose_symbol_is_busy_waits_on_the_general_path(kind: str) -> None:
    """While another thread holds a symbol's lock (a snapshot, an import), the twins leave
    its frame to the general path, which waits for the lock and applies it: nothing lost or
    counted twice, and the wait counted (``busy``, the reader's ``waited``, which /metrics
    reports as ``trades_waited_total``)."""
    pipeline = Pipeline(kind, dict.fromkeys(SYMBOLS, False))
    path, reader = pipeline.reader.path, pipeline.reader
    stats = pipeline.table.get("BTCUSDT")
    assert stats is not None
    stats.apply(BASE, 150_000_000, 0)
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with stats.lock:
            held.set()
            release.wait(60)

    def read() -> None:
        reader._read(pipeline.conn, 5.0)
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(60)
    pipeline.theirs.sendall(
        b"".join(frame(trade_json("BTCUSDT", BASE + i, "1.5", "plain", i))[0] for i in (1, 2))
    )
    worker = threading.Thread(target=read)
    worker.start()
    try:
        wait_for(lambda: path.busy == 1, timeout=60)  # stopped at the first frame
        assert not done.is_set() and stats.median.count == 1  # waiting on the general path
    finally:
        release.set()
        holder.join(60)
        worker.join(60)
    assert done.is_set()
    while stats.view().count < 3:  # the second frame, if the first read did not bring it
        reader._read(pipeline.conn, 5.0)
    assert stats.view().count == 3 and reader.stats.applied == 2
    assert reader.stats.waited == 1 and path.busy == 0  # taken by the reader
    stats._check()
    pipeline.close()


READS = ["count", "fields", "copy", "median", "levels", "fold", "keep", "gains", "set", "times"]

try:  # the live trades a compiled minute holds back at most before it applies them
    from medianserv._native import PERIOD_PENDING  # type: ignore[attr-defined]
except ImportError:
    PERIOD_PENDING = 64


@needs_c
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=3 * PERIOD_PENDING),
    st.lists(st.integers(1, PERIOD_PENDING + 8), max_size=12),
    st.lists(st.sampled_from(READS), min_size=1, max_size=12),
)
@example(list(range(2 * PERIOD_PENDING + 1)), [PERIOD_PENDING, PERIOD_PENDING + 1], ["levels"])
@example([7] * (PERIOD_PENDING + 1), [PERIOD_PENDING - 1, 1, 1], ["count", "keep", "gains"])
@example([*range(41), *[20, 3, 20, 37] * 20], [41, 80], ["set", "fields"])  # within extremes
@example([0, 40, *range(1, 7), 10, 11, 12], [8], ["fields"])  # a map filled to half by a sum
@example(list(range(5)), [5], ["copy"])  # an odd count: a price the gate still holds, copied
def test_a_minute_read_between_live_trades_holds_every_one(
    prices: list[int], cuts: list[int], reads: list[str]
) -> None:
    """The compiled minute holds live trades back (its pending list, applied when full or
    when the minute is read): read in any way between any runs of them (shorter and longer
    than the list) (its count, its
    fields, a copy, its median, its levels, folded into an hour, told to keep its gains from
    then on, its gains taken, fields written), it holds exactly the trades taken, and gains
    exactly those taken since it was told, as its pure twin given the same trades one by
    one."""
    from medianserv import _native  # type: ignore[attr-defined]

    symbols.use_compiled(True)
    table = SymbolTable.build(["BTCUSDT"])
    stats = table.get("BTCUSDT")
    assert stats is not None
    stats.apply(BASE, 100_000_000_000, 0)  # the minute's first trade: the general path
    twin = PyPeriod(0, 60_000)
    twin.add_in(BASE, 100_000_000_000, 0)
    path = CTradePath()
    path.index = table.index
    runs, at = [], 0
    for cut in [*cuts, len(prices)]:
        if at < len(prices):
            runs.append(list(range(at, min(len(prices), at + cut))))
            at += cut
    written = False  # fields written: the periods' own invariants no longer hold
    for k, run in enumerate(runs):
        data = b"".join(frame(trade_json("BTCUSDT", BASE + 1 + i, str(1000 + prices[i] - 20),
                                         "plain", i))[0] for i in run)  # fmt: skip
        assert path.consume(data, 0) == len(data)
        for i in run:
            twin.add_in(BASE + 1 + i, (1000 + prices[i] - 20) * 10**8, i)
        minute = stats.minute
        assert isinstance(minute, _native.Period)
        read = reads[k % len(reads)]
        if read == "count":
            assert minute.count == twin.count
        elif read == "fields":
            fields = ("open_id", "close_id", "open_price", "close_price", "high", "low", "count")
            assert [getattr(minute, f) for f in fields] == [getattr(twin, f) for f in fields]
        elif read == "copy":
            assert period_key(minute.copy()) == period_key(twin.copy())
        elif read == "median":
            assert minute.twice_median() == twin.twice_median()
        elif read == "levels":
            assert minute.levels == twin.levels
        elif read == "fold":
            hour, twin_hour = _native.Period(0, 3_600_000), PyPeriod(0, 3_600_000)
            hour.fold(minute)
            twin_hour.fold(twin)
            assert period_key(hour) == period_key(twin_hour)
        elif read == "keep":  # a minute turning to deltas: its gains begin here
            minute.keep_gains()
            twin.keep_gains()
        elif read == "gains":
            assert minute.take_gains() == twin.take_gains()
        elif read == "times":  # kept in the lock's gate while the minute is current
            assert (minute.lo_ms, minute.last_ms) == (twin.lo_ms, twin.last_ms)
        elif k % 2:  # a field written, not read first: the trades held back applied before
            minute.high = twin.high = 0
            written = True
        else:  # the bounds of its ids, so that the next trades are its open and close
            minute.close_id = twin.close_id = -1
            minute.open_id = twin.open_id = 2**62
            written = True
        if not written and read not in ("count", "times"):  # (reads that settle the list
            minute._check()  # anyway): the map's load and probes, the edges, the gains
            twin._check()
    assert period_key(stats.minute) == period_key(twin)
    assert stats.minute.take_gains() == twin.take_gains()
    stats._check(periods=not written)


@needs_c
@pytest.mark.parametrize("where", ["late", "outside"])
def test_a_next_trade_counted_beside_the_minute_ends_its_pending_list(where: str) -> None:
    """The compiled minute's pending trades carry one id, the rest following it, as the
    compiled path takes only the next id. A next id the general path counts elsewhere (a
    late trade, of an earlier minute; one outside the candles, its time past candles.LIMIT)
    breaks that run: the minute's open and close ids stay those of its own trades."""
    from medianserv.candles import LIMIT

    symbols.use_compiled(True)
    table = SymbolTable.build(["BTCUSDT"])
    stats = table.get("BTCUSDT")
    assert stats is not None
    at = 60_000
    stats.apply(BASE, 100 * 10**8, at)  # the minute's first trade: the general path
    twin = PyPeriod(at, 60_000)
    twin.add_in(BASE, 100 * 10**8, at)
    path = CTradePath()
    path.index = table.index

    def live(ids: range) -> None:
        data = b"".join(frame(trade_json("BTCUSDT", i, str(90 + i % 7), "plain", at + i - BASE))[0]
                        for i in ids)  # fmt: skip
        assert path.consume(data, 0) == len(data)
        for i in ids:
            twin.add_in(i, (90 + i % 7) * 10**8, at + i - BASE)

    live(range(BASE + 1, BASE + 4))
    assert stats.apply(BASE + 4, 80 * 10**8, 0 if where == "late" else LIMIT) is APPLIED
    live(range(BASE + 5, BASE + 7))
    assert path.applied == 5
    assert period_key(stats.minute) == period_key(twin)
    stats._check()


MINUTE0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


#: Steps of a symbol's life: trades (next, skipping ahead, into a gap, a repeat) at times
#: that move on within a minute or to a later one (or back), and reads and writes between.
gate_steps = st.lists(
    st.tuples(
        st.sampled_from(["next"] * 6 + ["skip", "fill", "repeat", "harvest", "read", "lo_ms"]),
        st.integers(0, 30),
        st.sampled_from([0, 0, 0, 1, 7, 999, 59_000, 60_000, 61_000, 150_000, -60_000]),
    ),
    min_size=1,
    max_size=80 + PERIOD_PENDING,
)


@needs_c
@settings(max_examples=200, deadline=None)
@given(gate_steps)
@example([("next", 0, 0), ("lo_ms", 1, 0), ("next", 0, 999), ("next", 0, 1)])
@example([("next", 0, 0), ("lo_ms", 10, 0), ("next", 0, 7), ("read", 0, 0)])
@example([("next", i % 5, i % 2) for i in range(PERIOD_PENDING + 2)] + [("harvest", 0, 0)])
@example([("next", 0, 0), ("next", 0, -60_000), ("next", 0, 60_000)])  # a late next id
def test_the_minute_the_lock_gates_is_the_minute_the_general_path_keeps(
    steps: list[tuple[str, int, int]],
) -> None:
    """While a minute is current, the compiled path keeps its bounds, its latest time and its
    pending count in the symbol's lock, and gives them back to the minute when another takes
    its place (a later minute, rolled by either path). Whatever the trades (next ones taken by
    the compiled path, rolling minutes; gaps, fills, late and repeated ones left to the
    general path), and whatever is read or written between them (the minute's lower bound,
    count and the book's latest time read, the lower bound set, a harvest), the symbol's
    candles, harvests and counts are those of the same trades given to the general path
    alone; and a lock dropped with its minute still held elsewhere leaves the minute whole."""
    symbols.use_compiled(True)
    sides = [SymbolTable.build(["BTCUSDT"]) for _ in range(2)]
    subject, reference = (t.get("BTCUSDT") for t in sides)
    assert subject is not None and reference is not None
    path = CTradePath()
    path.index = sides[0].index
    clock, highest, taken = MINUTE0, BASE, 0
    for stats in (subject, reference):
        stats.apply(BASE, 100_000_000_000, clock)  # the first trade: the general path
    for kind, a, move in steps:
        if kind in ("next", "skip", "fill", "repeat"):
            clock = max(0, clock + move)
            if kind == "next":
                tid = highest + 1
            elif kind == "skip":
                tid = highest + 2 + a % 3
            else:  # into a gap (or below the range), or a trade already counted
                tid = max(0, highest - a)
            highest = max(highest, tid)
            units = (1000 + a - 15) * 10**8
            data = frame(trade_json("BTCUSDT", tid, str(1000 + a - 15), "plain", clock))[0]
            takes = subject.candles.takes(tid, clock)  # type: ignore[union-attr]
            if path.consume(data, 0) == len(data):
                taken += 1
                assert kind != "next" or takes, "a trade the book does not take: taken"
            else:
                assert kind != "next" or not takes, "a next trade the book takes: left"
                subject.apply(tid, units, clock)
            reference.apply(tid, units, clock)
        elif kind == "harvest":
            got = [stats.harvest() for stats in (subject, reference)]
            keys = [None if h is None else state_key(h.candles) for h in got]
            assert keys[0] == keys[1]
        elif kind == "read":
            times = [(s.minute.lo_ms, s.minute.count, s.candles.latest)  # type: ignore[union-attr]
                     for s in (subject, reference)]  # fmt: skip
            assert times[0] == times[1]
        else:  # the minute's lower bound written while the lock gates it: the gate follows
            for stats in (subject, reference):
                stats.minute.lo_ms = stats.minute.start + a * 1_000
        assert subject.view() == reference.view()
    if steps[0][0] == "next" and steps[0][2] >= 0:  # the compiled path's own case: taken
        assert taken
    held = subject.lock
    subject.lock = symbols._Lock()  # another lock: it takes the minute from the one before
    clock += 1
    for stats in (subject, reference):
        data = frame(trade_json("BTCUSDT", highest + 1, "1000", "plain", clock))[0]
        if stats is reference or path.consume(data, 0) < len(data):
            stats.apply(highest + 1, 1000 * 10**8, clock)
    assert subject.view() == reference.view()
    assert subject.candles.canonical() == reference.candles.canonical()  # type: ignore[union-attr]
    subject._check()
    del held
    minute, book = subject.minute, subject.candles
    want = (minute.count, minute.last_ms, period_key(minute.copy()))
    subject.lock = symbols._Lock()  # the lock that gated the minute dropped: it gives it back
    assert (minute.count, minute.last_ms, period_key(minute.copy())) == want
    assert book is not None and book.canonical() == reference.candles.canonical()  # type: ignore[union-attr]


def test_a_trade_below_the_range_goes_the_general_way() -> None:
    """Every streamed trade of a quiet symbol is ours, one below the range too (a rotating
    connection's late frames): neither twin calls it a duplicate, the general path counts it
    and opens the gap between. Below a baselined symbol's range, it is a duplicate."""
    for kind in KINDS[1:]:
        pipeline = Pipeline(kind, {"BTCUSDT": True, "ETHBTC": False})
        path = pipeline.reader.path
        path.index = pipeline.table.index if kind == "C" else pipeline.table.get
        for symbol, tid in (("BTCUSDT", BASE + 2), ("ETHBTC", BASE - 3)):
            stats = pipeline.table.get(symbol)
            assert stats is not None
            stats.apply(BASE + 5, 150_000_000, 0)  # the first trade seen
            payload = trade_json(symbol, tid, "1.5", "plain", 0)
            assert path.consume(frame(payload)[0], 0) == 0, kind
            pipeline.reader._handle_all([payload], pipeline.conn)
            if symbol == "BTCUSDT":
                assert stats.view().count == 2 and stats.ids.lowest == BASE + 2
                assert [(g.lo, g.hi) for g in stats.ids.gaps] == [(BASE + 3, BASE + 4)]
            else:
                assert stats.view().count == 1 and stats.ids.lowest == BASE
            stats._check()
        assert pipeline.reader.stats.duplicates == 1 and pipeline.owner.gaps == ["BTCUSDT"]
        pipeline.close()


@needs_c
def test_a_busy_symbol_lock_sends_the_frame_to_the_general_path() -> None:
    """The compiled path never waits for a symbol's lock: held elsewhere, the frame is left
    to the general path (which waits for it), and nothing is applied."""
    pipeline = Pipeline("C", dict.fromkeys(SYMBOLS, False))
    path = pipeline.reader.path
    path.index = pipeline.table.index
    stats = pipeline.table.get("ETHBTC")
    assert stats is not None
    stats.apply(BASE, 150_000_000, 0)  # the minute begun (see above)
    data = frame(trade_json("ETHBTC", BASE + 1, "1.5", "plain", 0))[0]
    with stats.lock:
        assert path.consume(data, 0) == 0
    assert stats.view().count == 1
    assert path.consume(data, 0) == len(data) and stats.view().count == 2
    pipeline.close()


@needs_c
def test_the_compiled_path_refuses_classes_it_was_not_made_for() -> None:
    class NoSlots:
        pass

    with pytest.raises((TypeError, AttributeError)):
        CTradePath.__base__(NoSlots, NoSlots)
    path = CTradePath()
    with pytest.raises(TypeError):
        path.index = {}
    assert path.consume(b"\x81\x02{}", 0) == 0  # no index yet: nothing taken


# -- the compiled perfect hash, checksums and lock against their Python twins -----------------


@needs_c
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32_and_adler32_are_zlibs(data: bytes, start: int) -> None:
    from medianserv import _native  # type: ignore[attr-defined]

    assert _native.crc32(data, start) == zlib.crc32(data, start)
    assert _native.adler32(data) == zlib.adler32(data)


def _crc_twins() -> list[str]:
    """Two keys of equal length and equal CRC-32 (a birthday search): they force the perfect
    hash into its wide mode."""
    seen: dict[int, str] = {}
    rnd = random.Random(1)
    for _ in range(1 << 20):
        key = "".join(rnd.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=10))
        other = seen.setdefault(zlib.crc32(key.encode()), key)
        if other != key:
            return [other, key]
    raise AssertionError("no CRC collision found")


@needs_c
@given(st.lists(st.text(min_size=1, max_size=12), max_size=60, unique=True),
       st.lists(st.text(max_size=12), max_size=30), st.booleans())  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_index_is_the_perfect_hash(keys: list[str], probes: list[str], wide: bool) -> None:
    """The compiled lookup equals PerfectHash's for every key and for keys outside the set
    (lone surrogates included), in fast mode and in wide mode (a CRC collision in the set)."""
    keys = [k for k in keys if not any(0xD800 <= ord(c) < 0xE000 for c in k)]
    if wide:
        keys = [k for k in keys if k not in TWINS] + TWINS
    phash = PerfectHash.build(keys)
    values: list[str | None] = [None if k is None else k + "!" for k in phash.keys]
    get, index = phash.lookup_in(values), phash.compiled_lookup_in(values)
    assert phash._wide == (wide and len(keys) >= 2)
    for probe in [*keys, *probes, "\ud800", "", "BTCUSDT"]:
        assert index.get(probe) == get(probe), probe


TWINS = _crc_twins() if CTradePath is not None else []


@needs_c
def test_the_lock_is_a_lock() -> None:
    """The compiled path's lock has threading.Lock's semantics: exclusive, non-reentrant,
    with timeouts, released by any thread, an error to release unlocked, usable in with."""
    from medianserv import _native  # type: ignore[attr-defined]

    lock = _native.Lock()
    assert not lock.locked() and lock.acquire() and lock.locked()
    assert not lock.acquire(False) and not lock.acquire(timeout=0.01)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=30)))
    waiter.start()
    lock.release()  # the waiter gets it (released by this thread, held by that one)
    waiter.join(30)
    assert got == [True] and lock.locked()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(ValueError):
        lock.acquire(False, 1.0)
    stats = SymbolStats("X")
    assert isinstance(stats.lock, _native.Lock)


@needs_c
def test_the_lock_excludes_under_contention_and_wakes_every_waiter() -> None:
    """Many threads taking the compiled lock, each holding it across a switch of the
    interpreter (where another finds it taken and sleeps): every increment lands, nobody
    is left asleep. Waiters that give up at their timeout get False; and a release that
    finds a waiter whose time ran out while it waited for the interpreter hands it the lock
    all the same (it was still queued), leaving nothing behind for the next waiter."""
    import sys

    from medianserv import _native  # type: ignore[attr-defined]

    lock = _native.Lock()
    counter = [0]
    assert lock.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=1.0)))
    waiter.start()
    deadline = time.monotonic() + 60
    while lock.waiters != 1 and time.monotonic() < deadline:  # it counts itself and sleeps
        time.sleep(0.01)
    assert lock.waiters == 1
    switch = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:  # this thread keeps the interpreter past the waiter's timeout, then releases
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            pass
        lock.release()  # a waiter queued: the lock handed to it, its wait already over
    finally:
        sys.setswitchinterval(switch)
    waiter.join(60)
    assert got == [True] and lock.waiters == 0 and lock.locked()  # handed over
    lock.release()
    assert lock.acquire()
    late = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.3)))
    late.start()  # nothing left behind to wake it: it sleeps till its time is up
    late.join(60)
    assert got == [True, False] and lock.locked()
    lock.release()

    def work() -> None:
        for _ in range(300):
            with lock:
                value = counter[0]
                time.sleep(0)  # the interpreter switches while the lock is held
                counter[0] = value + 1

    def timed_out(got: list[bool]) -> None:
        got.append(lock.acquire(timeout=0.05))

    assert lock.acquire()
    late_ones: list[bool] = []
    waiters = [threading.Thread(target=timed_out, args=(late_ones,)) for _ in range(3)]
    for thread in waiters:
        thread.start()
    for thread in waiters:
        thread.join(60)
    assert late_ones == [False] * 3  # each gave up while the lock was held
    lock.release()
    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)
    assert counter[0] == 6 * 300 and not lock.locked() and lock.waiters == 0
    assert lock.acquire(False)
    lock.release()


@needs_c
def test_the_lock_goes_to_the_thread_asleep_waiting_for_it() -> None:
    """A thread that gives the compiled lock and takes it again at once, holding the
    interpreter, never starves one asleep waiting for it: the release hands the lock to the
    waiter, so it is taken within one of the busy thread's holds, however often the busy
    thread's holds span a switch of the interpreter (a quantile query against a symbol's
    general path, which holds the lock in Python)."""
    from medianserv import _native  # type: ignore[attr-defined]

    lock = _native.Lock()
    holds = [0]
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            with lock:
                holds[0] += 1
                sum(range(50))  # some work under the lock, as the general path does

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        wait_for(lambda: holds[0] > 1000)
        for _ in range(200):
            start = holds[0]
            with lock:
                taken = holds[0]
            assert taken - start <= 1  # the hold going on when it asked, at most
            time.sleep(0)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and not lock.locked() and lock.waiters == 0


def test_apply_common_is_apply_for_the_common_outcomes() -> None:
    """SymbolStats.apply_common (what the trade path applies) has apply's effects for the
    next trade and a repeat above every gap, and leaves everything else alone."""
    for compiled in {False, CTradePath is not None}:
        symbols.use_compiled(compiled)
        a, b = SymbolStats("X"), SymbolStats("X")
        assert b.apply_common(5, 100, 1) is None  # a first trade: not common
        for s in (a, b):
            s.apply(5, 100, 1)
        rnd = random.Random(1)
        tid = 6
        for _ in range(300):
            t = tid + rnd.choice([0, 0, 0, -1, -2, 1, 3])
            price, ms = rnd.randrange(90, 110), rnd.randrange(10**9)
            before, version = b.full_state(), b.version
            assert b.candles is not None and a.candles is not None
            candles = b.candles.canonical()
            outcome = b.apply_common(t, price, ms)
            if outcome is None:  # left alone: the general path applies it
                assert b.full_state() == before and b.version == version
                assert b.candles.canonical() == candles
                b.apply(t, price, ms)
            expected = a.apply(t, price, ms)
            assert outcome is None or outcome == expected
            tid = max(tid, t + 1)
            assert a.full_state() == b.full_state() and a.version == b.version
            assert a.candles.canonical() == b.candles.canonical()
            ha, hb = a.harvest(), b.harvest()
            assert (ha is None) == (hb is None)
            if ha is not None and hb is not None:
                assert ha.levels.final() == hb.levels.final()  # type: ignore[union-attr]
                ha.levels = hb.levels = []
                assert state_key(ha.candles) == state_key(hb.candles)
                ha.candles = hb.candles = None
                assert ha == hb
            b._check()
