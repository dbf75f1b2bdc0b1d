"""The compiled twins (medianserv/_native.c, _median.c, _hotpath.c, _candles.c) under
AddressSanitizer and UndefinedBehaviorSanitizer, and fuzzed with bytes no server would send."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv import store, symbols
from medianserv.candles import CandleRow, CandleState, Delta
from medianserv.hotpath import CTradePath
from medianserv.median import CRunningMedian, PyRunningMedian
from medianserv.symbols import SymbolStats, SymbolTable

from .support import run_under_sanitizers

try:
    from medianserv._native import Period  # type: ignore[attr-defined]
except ImportError:
    Period = None

needs_c = pytest.mark.skipif(CTradePath is None, reason="the compiled twins were not built")
SOURCES = [Path(__file__).parents[1] / "medianserv" / f for f in
           ("_native.c", "_median.c", "_hotpath.c", "_candles.c")]  # fmt: skip


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 600), st.integers(0, 2**32))
def test_the_trade_path_takes_any_bytes(data: bytes, pos: int, seed: int) -> None:
    """Bytes of any kind from any position (frame headers with any length, cut anywhere;
    JSON cut or mangled anywhere): the compiled path never reads past them, never fails,
    and stops at a position between where it started and the end."""
    symbols.use_compiled(True)
    table = SymbolTable.build(["BTCUSDT", "ETHBTC"])
    for _, stats in table.items():
        stats.baseline(99, 0)
    path = CTradePath(max_size=1 << random.Random(seed).randrange(4, 21))
    path.index = table.index
    frame = b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":100,' \
            b'"p":"1.5","q":"1","T":1,"m":true,"M":true}}'  # fmt: skip
    rnd = random.Random(seed)
    head = bytes([0x81, 126]) + len(frame).to_bytes(2, "big") + frame
    cut = head[: rnd.randrange(len(head) + 1)]  # a real frame cut anywhere, then the bytes
    for blob in (data, cut + data, head + data, head * 3):
        start = min(pos, len(blob))
        end = path.consume(blob, start)
        assert start <= end <= len(blob)
    for _, stats in table.items():
        stats._check()


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1),
                         st.one_of(st.integers(-3, 3), st.integers(2**61, 2**62))),
                max_size=30))  # fmt: skip
def test_the_medians_refuse_counts_out_of_range(pairs: list[tuple[int, int]]) -> None:
    """A batch that is not positive, or that would take the count past a signed 64-bit
    integer, is refused by both twins alike, and leaves each as it was."""
    twins = [PyRunningMedian(hot_max=2, refill=1, chunk=2),
             CRunningMedian(hot_max=2, refill=1, chunk=2)]  # fmt: skip
    for value, times in pairs:
        refused = times <= 0 or times > 2**63 - 1 - twins[0].count
        outcomes = []
        for m in twins:
            try:
                outcomes.append(m.add(value, times))
            except ValueError:
                outcomes.append(None)
            m._check()
        assert outcomes[0] == outcomes[1]
        assert (outcomes[0] is None) == refused
        assert twins[0]._state() == twins[1]._state()


def _records_of_both(symbol: str, state: Any) -> tuple[Any, Any]:
    """(what the compiled ``candle_batch`` makes of a batch of ``symbol``'s harvest ``state``
    alone, or NotImplemented where it handed the state to its fallback; the Python twin's
    items, or the exception it raised)."""
    batch = [SimpleNamespace(symbol=symbol, candles=state)]
    handed: list[Any] = []

    def fallback(one: Any) -> Any:
        handed.append(one)
        return store.symbol_items(one)

    try:
        compiled = store._compiled_batch(batch, fallback)
    except Exception as exc:  # raised by the fallback, or a defect
        compiled = exc
    if handed:
        assert handed == batch
        compiled = NotImplemented
    try:
        return compiled, store.py_candle_items(batch)  # type: ignore[arg-type]
    except Exception as exc:  # what the Python twin raises is the answer
        return compiled, exc


def _harvests_encoded_by_both(steps: list[tuple[int, int, int, bool]], symbol: str) -> set[str]:
    """Trade ``symbol`` by ``steps`` (trades, price spread, ms they span, whether the first
    is a minute late), harvest after each, and assert both twins encode every harvest alike;
    the kinds of entry encoded."""
    symbols.use_compiled(True)
    symbols.expect_history(set())
    stats = SymbolStats(symbol)
    stats.baseline(999, 0)
    tid, now, kinds, taken = 999, 3_600_000_000, set(), []
    for trades, spread, step, late in steps:
        for i in range(trades):
            tid += 1
            now += max(1, step // trades)
            at = now - 70_000 if late and i == 0 else now  # a late trade: an earlier minute
            stats.apply(tid, 10**8 + (tid * 7919) % (spread + 1) * 1000, at)
        state = stats.harvest()
        if state is None or state.candles is None:
            continue
        compiled, python = _records_of_both(symbol, state.candles)
        assert compiled == python
        if isinstance(state.candles, bytes):  # a quiet harvest: the current minute's value
            kinds.add("quiet")
        else:
            kinds.update(type(p).__name__ if r is None else "row"
                         for entries in state.candles.periods for _, r, p in entries)  # fmt: skip
        taken += [state, replace(state, candles=None)]  # and one without candles
    stats._check()
    batch = store._compiled_batch(taken, store.symbol_items)
    assert batch == store.py_candle_items(taken)  # the harvests as one snapshot's batch
    return kinds


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.integers(0, 700), st.integers(-5_000, 90_000),
                          st.booleans()), min_size=1, max_size=40),
       st.sampled_from(["SOLUSDT", "X" * 200]))  # fmt: skip
def test_the_compiled_candle_batch_is_the_python_twins_bytes(
    steps: list[tuple[int, int, int, bool]], symbol: str
) -> None:
    """Every harvest of a symbol trading at random (minutes whole and turned to deltas, late
    trades, rolls, periods settled, hours and days folded) is encoded by the compiled twin
    into the very items, byte for byte, that the Python twin makes."""
    _harvests_encoded_by_both(steps, symbol)


@needs_c
def test_the_compiled_candle_batch_takes_every_kind_of_period() -> None:
    """A market that stores a minute whole, turns one to deltas, settles rows and folds
    hours and days: both twins encode every kind alike."""
    steps = [
        (40, 5, 20_000, False),
        (400, 700, 20_000, False),
        (50, 700, 10_000, False),
        (10, 3, 70_000, True),
        (10, 3, 3_700_000, False),
        (5, 3, 1_000, False),
    ]
    assert _harvests_encoded_by_both(steps, "SOLUSDT") >= {"bytes", "Delta", "row"}


@needs_c
def test_the_compiled_batch_hands_what_it_does_not_take_to_the_python_twin() -> None:
    """A batch's state the compiled ``candle_batch`` does not take (a bool, which msgspec
    writes as one) is encoded by the Python twin in its place, after what came before and
    none of its own half-made items left; a name that cannot be stored raises as the
    Python twin raises."""
    symbols.use_compiled(True)
    symbols.expect_history(set())
    stats = SymbolStats("SOLUSDT")
    stats.baseline(999, 0)
    stats.apply(1000, 10**8, 3_600_000_000)
    state = stats.harvest()
    assert state is not None and state.candles is not None
    odd = replace(state, symbol="BTCUSDT", candles=state.candles._replace(latest_ms=True))
    batch = [state, odd, replace(state, symbol="ETHUSDT")]
    handed: list[Any] = []

    def fallback(one: Any) -> Any:
        handed.append(one)
        return store.symbol_items(one)

    assert store._compiled_batch(batch, fallback) == store.py_candle_items(batch)
    assert handed == [odd]
    for name, error in (("X" * 256, store.StoreError), ("", store.StoreError),
                        ("\udc80", UnicodeEncodeError)):  # fmt: skip
        bad = [state, replace(state, symbol=name)]
        with pytest.raises(error):
            store.py_candle_items(bad)
        with pytest.raises(error):
            store._compiled_batch(bad, store.symbol_items)


@needs_c
def test_a_large_batch_is_encoded_a_slice_a_call_into_the_same_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``store.candle_items`` hands the compiled encoder a batch of more than
    ``BATCH_SLICE`` symbols a slice at a time (so that a snapshot's encoding lets other
    threads in between), and the items are those of the Python twin over the whole batch,
    in order: a state handed to the fallback in the middle included."""
    symbols.use_compiled(True)
    symbols.expect_history(set())
    batch = []
    for k in range(2 * store.BATCH_SLICE + 3):
        stats = SymbolStats(f"S{k}USDT")
        stats.baseline(999, 0)
        for i in range(1 + k % 5):
            stats.apply(1000 + i, 10**8 + (k * 7 + i) % 3 * 1000, 3_600_000_000 + 70_000 * i)
        state = stats.harvest()
        assert state is not None and state.candles is not None
        batch.append(state)
    odd = batch[store.BATCH_SLICE + 1]  # the compiled twin hands it to the Python twin
    batch[store.BATCH_SLICE + 1] = replace(odd, candles=odd.candles._replace(latest_ms=True))
    sizes: list[int] = []
    encode = store._compiled_batch

    def spy(part: list[Any], fallback: Any) -> Any:
        sizes.append(len(part))
        return encode(part, fallback)

    monkeypatch.setattr(store, "_compiled_batch", spy)
    assert store.candle_items(batch) == store.py_candle_items(batch)
    assert sizes == [store.BATCH_SLICE, store.BATCH_SLICE, 3]


_EDGES = [0, 1, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
          2**64 - 1, 2**64, -1, -32, -33, -128, -129, -(2**15), -(2**15) - 1, -(2**31),
          -(2**31) - 1, -(2**63), -(2**63) - 1]  # fmt: skip


@needs_c
@pytest.mark.parametrize("value", _EDGES)
def test_the_compiled_candle_batch_writes_every_int_as_msgspec(value: int) -> None:
    """Each edge of MessagePack's int forms, in a state's bounds, a row, a delta's fields and
    number and a period's start: the same bytes as msgspec (the Python twin), or, for what
    it cannot write (beyond 64 bits) or a key cannot hold, the state handed to the Python
    twin, which raises."""
    row = CandleRow(60_000, *[value] * 8)
    for state in (
        CandleState(value, value, value, value, ([], [], []), (None,) * 3, (value,) * 9, (),
                    (value, value), value),
        CandleState(0, 0, None, None, ([(60_000, row, None)], [], []), (None,) * 3, (0,) * 9,
                    (), (-1, -1)),
        CandleState(0, 0, None, None, ([(value, None, Delta((value,) * 7, 0, []))], [], []),
                    (None,) * 3, (0,) * 9, (), (-1, -1)),
        CandleState(0, 0, None, None, ([], [(0, None, Delta((1,) * 7, value, [(b"", b"")]))],
                    []), (None,) * 3, (0,) * 9, (), (-1, -1)),
    ):  # fmt: skip
        compiled, python = _records_of_both("A", state)
        if isinstance(python, Exception):
            assert compiled is NotImplemented
        else:
            assert compiled == python


_ODD = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([None, True, 1.5, "1", b"1"]),
                 st.integers(-40, 300), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64,
                                                         -(2**63), -(2**63) - 1]))  # fmt: skip


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.lists(_ODD, min_size=20, max_size=20), st.integers(0, 6), st.binary(max_size=40),
       st.integers(0, 3))  # fmt: skip
def test_the_compiled_candle_batch_takes_odd_values_as_the_python_twin(
    values: list[Any], shape: int, blob: bytes, cut: int
) -> None:
    """States no harvest makes (ints out of 64 bits, bools, floats, None, strings, wrong
    shapes, a live period where only its record goes): the compiled twin makes the Python
    twin's bytes, or hands the state to the Python twin (which then encodes or raises, as
    msgspec and struct do); never other bytes, never a crash. Where the Python twin
    raises, the compiled one never answers."""
    v = iter(values)
    row = CandleRow(*(next(v) for _ in range(9)))
    fields = tuple(next(v) for _ in range(7))
    seq, start = next(v), next(v)
    chunks: Any = [(blob, blob[::-1]), (blob[:cut], b"")]
    entry: Any = [(start, row, None), (start, None, Delta(fields, seq, chunks)),
                  (start, None, Delta(fields[:cut], seq, chunks)), (start, None, "a period"),
                  (start,), (start, None, Delta(fields, seq, [(blob, None)])),
                  (start, None, Period(60_000, 60_000))][shape]  # fmt: skip
    state = CandleState(next(v), next(v), None, 60_000, ([entry], [], []), (None,) * 3,
                        (0,) * 9, (), (-1, -1))  # fmt: skip
    compiled, python = _records_of_both("ABC", state)
    if compiled is not NotImplemented:
        assert compiled == python
    if shape == 6:  # no harvest hands a minute over as anything but its record
        assert compiled is NotImplemented and isinstance(python, Exception)
    for broken in (state[:8], state._replace(periods=[[]]), state._replace(counts=[0] * 9)):
        compiled, python = _records_of_both("ABC", broken)
        assert compiled is NotImplemented or compiled == python


_UNDER_SANITIZERS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("medianserv._native", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["medianserv._native"] = module  # what median.py and hotpath.py import
import pytest
tests = [f"{sys.argv[2]}/{name}" for name in ("test_median.py", "test_hotpath.py",
                                              "test_native.py", "test_candles.py",
                                              "test_store.py")]
# -s: a sanitizer's report goes to the process's stderr, not to pytest's capture
sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "-k", "not sanitizers", *tests]))
"""


@needs_c
def test_the_compiled_twins_under_address_and_undefined_behaviour_sanitizers(
    tmp_path: Path,
) -> None:
    """The compiled module built with AddressSanitizer and UndefinedBehaviorSanitizer runs the
    twins' tests (the property tests and the fuzzing above included) in a subprocess: any
    out-of-bounds access, use after free or undefined operation stops the run. Skipped
    without gcc and its sanitizer runtimes."""
    done = run_under_sanitizers(SOURCES, tmp_path / "_native_sanitized.so", _UNDER_SANITIZERS,
                                [str(Path(__file__).parent)], timeout=900)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert " passed" in done.stdout and "runtime error" not in done.stderr, done.stderr[-3000:]
