"""RunningMedian against a brute-force oracle: statistics.median over exact integers."""

from __future__ import annotations

import json
import random
import statistics
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medianserv.median import RunningMedian
from medianserv.prices import parse_price
from medianserv.recordings import read_trade_frames


def oracle_twice_median(values: list[int]) -> int:
    twice = 2 * statistics.median([Fraction(v) for v in values])  # exact: no float
    assert twice.denominator == 1
    return int(twice)


def run_and_check(values: list[int]) -> RunningMedian:
    m = RunningMedian()
    for i, v in enumerate(values, 1):
        m.add(v)
        m._check()
        assert m.count == i
        assert m.twice_median == oracle_twice_median(values[:i])
        assert m.multiplicity(v) == values[:i].count(v)
    return m


big = st.integers(min_value=0, max_value=10**19 - 1)
few_levels = st.integers(min_value=0, max_value=5)
value_lists = st.one_of(
    st.lists(big, max_size=60),
    st.lists(few_levels, max_size=120),  # heavy duplicates: levels split across both sides
    st.lists(st.sampled_from([0, 10**19 - 1]), max_size=60),  # alternating extremes
    st.lists(st.integers(min_value=0, max_value=100), max_size=200),
)


@given(value_lists)
def test_median_equals_oracle_after_every_add(values: list[int]) -> None:
    m = run_and_check(values)
    assert m.levels == len(set(values))


@pytest.mark.parametrize(
    "values",
    [
        [7],
        list(range(100)),
        list(range(100, 0, -1)),
        [5] * 50 + [6] * 50,
        [1, 10**19 - 1] * 40,
        [3] * 101,
    ],
    ids=["single", "ascending", "descending", "two-blocks", "alternating-extremes", "one-level"],
)
def test_shapes(values: list[int]) -> None:
    run_and_check(values)


def test_empty() -> None:
    m = RunningMedian()
    m._check()
    assert (m.count, m.twice_median, m.levels, m.to_state()) == (0, None, 0, [])


@given(value_lists)
def test_state_round_trip(values: list[int]) -> None:
    m = RunningMedian()
    for v in values:
        m.add(v)
    state = m.to_state()
    assert state == sorted((v, values.count(v)) for v in set(values))
    restored = RunningMedian.from_state(state)
    restored._check()
    assert (restored.count, restored.twice_median) == (m.count, m.twice_median)
    assert restored.to_state() == state
    # unsorted input restores too, and keeps working as new values arrive
    shuffled = RunningMedian.from_state(random.Random(len(values)).sample(state, len(state)))
    shuffled._check()
    for v in (0, 3, 10**6):
        restored.add(v)
        shuffled.add(v)
        restored._check()
        values.append(v)
        assert restored.twice_median == shuffled.twice_median == oracle_twice_median(values)


@pytest.mark.parametrize("state", [[(1, 0)], [(1, 2), (1, 3)], [(-1, 1)]])
def test_from_state_rejects_bad_states(state: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        RunningMedian.from_state(state)


def test_memory_does_not_grow_with_repeats() -> None:
    """Many trades over few levels: the structure holds levels, not trades."""
    rnd = random.Random(1)
    m = RunningMedian()
    for _ in range(200_000):
        m.add(rnd.randrange(1000))
    m._check()
    assert m.levels == 1000
    assert len(m._low) + len(m._high) <= 1001


def test_replay_of_real_recordings(recordings: list[Path]) -> None:
    """Every real BTCUSDT/ETHUSDT trade, through the parser and the median, vs the oracle."""
    for path in recordings:
        prices: list[int] = []
        m = RunningMedian()
        for i, (_, frame) in enumerate(read_trade_frames(path)):
            price = parse_price(json.loads(frame)["data"]["p"])
            prices.append(price)
            m.add(price)
            if i % 997 == 0:
                m._check()
                assert m.twice_median == oracle_twice_median(prices)
        assert prices, path
        m._check()
        assert m.count == len(prices)
        assert m.twice_median == oracle_twice_median(prices)


batches = st.lists(
    st.tuples(st.integers(min_value=0, max_value=30), st.integers(min_value=1, max_value=40)),
    max_size=60,
)


@given(batches)
def test_bulk_add_equals_oracle_after_every_batch(ops: list[tuple[int, int]]) -> None:
    """add(value, times=k) is k single adds: same median, same levels, invariants hold."""
    bulk, single = RunningMedian(), RunningMedian()
    values: list[int] = []
    for value, times in ops:
        bulk.add(value, times)
        for _ in range(times):
            single.add(value)
        values.extend([value] * times)
        bulk._check()
        assert bulk.count == len(values)
        assert bulk.twice_median == oracle_twice_median(values) == single.twice_median
        assert bulk.multiplicity(value) == values.count(value)
    assert bulk.to_state() == single.to_state()
    assert bulk.levels == len(set(values))


@pytest.mark.parametrize("times", [0, -1])
def test_bulk_add_refuses_non_positive_times(times: int) -> None:
    m = RunningMedian()
    m.add(5)
    with pytest.raises(ValueError):
        m.add(7, times)
    m._check()
    assert (m.count, m.twice_median) == (1, 10)


def test_bulk_add_moves_the_median_across_many_levels() -> None:
    """One huge batch at an extreme: the median crosses every level on its way."""
    m = RunningMedian()
    for v in range(1, 1001):
        m.add(v)
    m.add(10**9, times=3000)
    m._check()
    assert m.twice_median == 2 * 10**9
    m.add(0, times=7000)
    m._check()
    assert m.twice_median == 0


# -- cold storage: tiny thresholds so every path (spill, refill, bulk shift, merge) runs ----------

TINY = {"hot_max": 4, "refill": 2, "delta_max": 3}

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60), st.integers(1, 3)),
        st.tuples(
            st.just("many"),
            st.dictionaries(st.integers(0, 60), st.integers(1, 30), max_size=12),
            st.just(0),
        ),
    ),
    max_size=40,
)


def _sorted_pairs(pairs: dict[int, int]) -> tuple[list[int], list[int]]:
    keys = sorted(pairs)
    return keys, [pairs[k] for k in keys]


@given(ops, st.sampled_from([TINY, {"hot_max": 2, "refill": 1, "delta_max": 1},
                             {"hot_max": 8, "refill": 8, "delta_max": 50}]))  # fmt: skip
def test_cold_storage_equals_oracle_under_adds_and_batches(
    script: list[tuple[str, object, int]], options: dict[str, int]
) -> None:
    """Single adds, batches and whole files (add_many) with levels going cold and coming back:
    the median, every multiplicity and the state match the oracle after every step."""
    m = RunningMedian(**options)
    values: list[int] = []
    for kind, arg, times in script:
        if kind == "add":
            assert isinstance(arg, int)
            m.add(arg, times)
            values.extend([arg] * times)
        else:
            assert isinstance(arg, dict)
            prices, counts = _sorted_pairs(arg)
            m.add_many(prices, counts)
            for p, c in arg.items():
                values.extend([p] * c)
        m._check()
        assert m.count == len(values)
        assert m.twice_median == (oracle_twice_median(values) if values else None)
        probe = [*sorted(set(values))[:20], 61, 1000]
        assert m.multiplicities(probe) == [values.count(v) for v in probe]
        wanted = np.array(probe, dtype=np.uint64)  # the vectorised lookup of a file's levels
        assert m.counts_of(wanted).tolist() == [values.count(v) for v in probe]
        assert [m.multiplicity(v) for v in probe[:5]] == [values.count(v) for v in probe[:5]]
    assert m.to_state() == sorted((v, values.count(v)) for v in set(values))
    assert m.levels == len(set(values))
    prices_a, counts_a = m.to_arrays()
    back = RunningMedian.from_arrays(prices_a, counts_a, **options)
    back._check()
    assert (back.count, back.twice_median) == (m.count, m.twice_median)


@given(st.lists(st.integers(0, 10**19 - 1), min_size=1, max_size=80))
def test_cold_storage_keeps_the_extremes_of_the_price_range(values: list[int]) -> None:
    m = RunningMedian(**TINY)
    for i, v in enumerate(values, 1):
        m.add(v)
        m._check()
        assert m.twice_median == oracle_twice_median(values[:i])


def test_heaps_stay_small_with_many_distinct_levels() -> None:
    """100,000 distinct levels spread over the range: the heaps hold at most hot_max levels
    or a 32nd of the cold ones each, the rest is in the cold arrays, and the median is still
    exact."""
    rnd = random.Random(7)
    values = list(range(100_000))
    rnd.shuffle(values)
    m = RunningMedian(hot_max=1024, refill=128, delta_max=512)
    for v in values:
        m.add(v, 1 + v % 5)
    m._check()
    limit = max(1024, 100_000 >> 5)
    assert len(m._low) <= limit and len(m._high) <= limit
    assert len(m._cold_low.prices) + len(m._cold_high.prices) >= 100_000 - 2 * limit
    assert m.levels == 100_000
    total = sum(1 + v % 5 for v in values)
    assert m.count == total
    # the oracle over the multiset, by walking the sorted levels
    assert m.twice_median == _twice_median_of_levels([(v, 1 + v % 5) for v in range(100_000)])


def _twice_median_of_levels(levels: list[tuple[int, int]]) -> int:
    n = sum(c for _, c in levels)
    want = [(n - 1) // 2, n // 2]
    out, seen = [], 0
    for v, c in levels:
        while want and want[0] < seen + c:
            out.append(v)
            want.pop(0)
        seen += c
    return out[0] + out[1]


def test_add_many_on_empty_and_on_far_sides() -> None:
    m = RunningMedian(**TINY)
    m.add_many([1, 2, 3], [5, 5, 5])
    m._check()
    assert m.twice_median == 4
    m.add_many([100, 200], [100, 1])  # far above: the median crosses into the high cold store
    m._check()
    assert m.twice_median == 200
    m.add_many([0], [300])
    m._check()
    assert m.twice_median == 0
