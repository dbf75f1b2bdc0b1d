"""The compiled twins (medianserv/_native.c, _median.c, _hotpath.c, _candles.c) under
AddressSanitizer and UndefinedBehaviorSanitizer, and fuzzed with bytes no server would send."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv import symbols
from medianserv.hotpath import CTradePath
from medianserv.median import CRunningMedian, PyRunningMedian
from medianserv.symbols import SymbolTable

from .support import run_under_sanitizers

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


_UNDER_SANITIZERS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("medianserv._native", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["medianserv._native"] = module  # what median.py and hotpath.py import
import pytest
tests = [f"{sys.argv[2]}/{name}" for name in ("test_median.py", "test_hotpath.py",
                                              "test_native.py", "test_candles.py")]
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
