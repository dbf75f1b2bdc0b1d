"""RunningMedian against a brute-force oracle (statistics over exact integers), both twins:
the pure Python one and the compiled one, each held to the oracle and to the other, state for
state, with thresholds tiny enough that every bounded step (spill, refill, bulk move, chunk
split) happens all the time."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv.median import CRunningMedian, PyRunningMedian
from medianserv.prices import parse_price
from medianserv.recordings import read_trade_frames

#: Both twins: every test below runs on each.
TWINS = [
    pytest.param(PyRunningMedian, id="py"),
    pytest.param(CRunningMedian, id="C", marks=pytest.mark.skipif(
        CRunningMedian is None, reason="the compiled twin was not built at install")),
]  # fmt: skip

#: Thresholds that make every step frequent (the defaults are 2048 / 512 / 1024).
TINY: list[dict[str, int]] = [
    {"hot_max": 4, "refill": 2, "chunk": 3},
    {"hot_max": 2, "refill": 1, "chunk": 2},
    {"hot_max": 8, "refill": 8, "chunk": 4},
    {"hot_max": 5, "refill": 3, "chunk": 2},
]


@pytest.fixture(scope="module", params=TWINS)
def twin(request: pytest.FixtureRequest) -> Any:
    return request.param


def oracle_twice_median(values: list[int]) -> int:
    twice = 2 * statistics.median([Fraction(v) for v in values])  # exact: no float
    assert twice.denominator == 1
    return int(twice)


def twice_median_of(counter: Counter[int]) -> int:
    """Twice the median of a multiset given as value -> count, by walking it in order."""
    n = sum(counter.values())
    want, out, seen = [(n - 1) // 2, n // 2], [], 0
    for v in sorted(counter):
        while want and want[0] < seen + counter[v]:
            out.append(v)
            want.pop(0)
        seen += counter[v]
    return out[0] + out[1]


def run_and_check(cls: Any, values: list[int], **options: int) -> Any:
    m = cls(**options)
    for i, v in enumerate(values, 1):
        assert m.add(v) == values[:i].count(v)  # the level's count after
        m._check()
        assert m.count == i
        assert m.twice_median == oracle_twice_median(values[:i])
        assert m.multiplicity(v) == values[:i].count(v)
    return m


big = st.integers(min_value=0, max_value=2**64 - 1)
few_levels = st.integers(min_value=0, max_value=5)
value_lists = st.one_of(
    st.lists(big, max_size=60),
    st.lists(few_levels, max_size=120),  # heavy duplicates: levels split across both sides
    st.lists(st.sampled_from([0, 2**64 - 1]), max_size=60),  # alternating extremes
    st.lists(st.integers(min_value=0, max_value=100), max_size=200),
)


@given(value_lists)
def test_median_equals_oracle_after_every_add(twin: Any, values: list[int]) -> None:
    m = run_and_check(twin, values)
    assert m.levels == len(set(values))


@given(value_lists, st.sampled_from(TINY))
def test_median_equals_oracle_with_tiny_thresholds(
    twin: Any, values: list[int], options: dict[str, int]
) -> None:
    run_and_check(twin, values, **options)


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
def test_shapes(twin: Any, values: list[int]) -> None:
    run_and_check(twin, values)
    run_and_check(twin, values, **TINY[0])


def test_empty(twin: Any) -> None:
    m = twin()
    m._check()
    assert (m.count, m.twice_median, m.levels, m.to_state()) == (0, None, 0, [])
    with pytest.raises(IndexError):
        m.values_at([0])


@pytest.mark.parametrize("value", [-1, 2**64, 10**30])
def test_values_outside_64_bits_are_refused(twin: Any, value: int) -> None:
    m = twin()
    m.add(5)
    with pytest.raises(ValueError):
        m.add(value)
    with pytest.raises(ValueError):
        m.add_many([value], [1])
    m._check()
    assert (m.count, m.twice_median) == (1, 10)


def test_prices_past_2_to_the_53_are_exact(twin: Any) -> None:
    """Neighbouring prices of 2^53 units and more lie within one float step of each other: no
    float may touch a price. Each count, median and order statistic stays exact, in the heaps
    and in the cold stores (tiny thresholds send most levels cold), and so does a state
    dumped and loaded (what a snapshot stores and a restart reads)."""
    values = [base + d for base in (2**60, 2**63 + 2**60)  # float64 steps: 256 and 2048 units
              for d in (0, 1, 2, 3, 1, 257, 256, 2049, 2048, 1, 0, 3, 3)]  # fmt: skip
    m = run_and_check(twin, values, **TINY[1])
    for v in set(values):
        assert m.multiplicity(v) == values.count(v)
    assert m.values_at(range(len(values))) == sorted(values)
    back = twin.from_arrays(*m.to_arrays(), **TINY[1])
    back._check()
    assert back.to_state() == sorted(Counter(values).items())
    assert [back.multiplicity(v) for v in values] == [values.count(v) for v in values]


@given(value_lists)
def test_state_round_trip(twin: Any, values: list[int]) -> None:
    m = twin()
    for v in values:
        m.add(v)
    state = m.to_state()
    assert state == sorted((v, values.count(v)) for v in set(values))
    restored = twin.from_state(state)
    restored._check()
    assert (restored.count, restored.twice_median) == (m.count, m.twice_median)
    assert restored.to_state() == state
    # unsorted input restores too, and keeps working as new values arrive
    shuffled = twin.from_state(random.Random(len(values)).sample(state, len(state)))
    shuffled._check()
    for v in (0, 3, 10**6):
        restored.add(v)
        shuffled.add(v)
        restored._check()
        values.append(v)
        assert restored.twice_median == shuffled.twice_median == oracle_twice_median(values)


@pytest.mark.parametrize("state", [[(1, 0)], [(1, 2), (1, 3)], [(-1, 1)], [(2**64, 1)]])
def test_from_state_rejects_bad_states(twin: Any, state: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        twin.from_state(state)


def test_memory_does_not_grow_with_repeats(twin: Any) -> None:
    """Many trades over few levels: the structure holds levels, not trades."""
    rnd = random.Random(1)
    m = twin()
    for _ in range(200_000):
        m.add(rnd.randrange(1000))
    m._check()
    assert m.levels == 1000
    small = m.nbytes()
    for _ in range(200_000):
        m.add(rnd.randrange(1000))
    assert m.nbytes() <= small + 80 * m.levels  # (counts past 256: int objects of their own)


def test_replay_of_real_recordings(twin: Any, recordings: list[Path]) -> None:
    """Every real BTCUSDT/ETHUSDT trade, through the parser and the median, vs the oracle."""
    for path in recordings:
        prices: list[int] = []
        m = twin()
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


@given(batches, st.sampled_from([{}, *TINY]))
def test_bulk_add_equals_oracle_after_every_batch(
    twin: Any, ops: list[tuple[int, int]], options: dict[str, int]
) -> None:
    """add(value, times=k) is k single adds: same median, same levels, invariants hold."""
    bulk, single = twin(**options), twin(**options)
    values: list[int] = []
    for value, times in ops:
        assert bulk.add(value, times) == values.count(value) + times
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
def test_bulk_add_refuses_non_positive_times(twin: Any, times: int) -> None:
    m = twin()
    m.add(5)
    with pytest.raises(ValueError):
        m.add(7, times)
    m._check()
    assert (m.count, m.twice_median) == (1, 10)


@pytest.mark.parametrize("options", [{}, TINY[0]])
def test_bulk_add_moves_the_median_across_many_levels(twin: Any, options: dict[str, int]) -> None:
    """One huge batch at an extreme: the median crosses every level on its way (in bulk,
    a chunk at a time, when more must cross than a heap holds)."""
    m = twin(**options)
    for v in range(1, 1001):
        m.add(v)
    m.add(10**9, times=3000)
    m._check()
    assert m.twice_median == 2 * 10**9
    m.add(0, times=7000)
    m._check()
    assert m.twice_median == 0
    assert m.values_at([0, 6999, 7000, 7999, 8000, 10999]) == [0, 0, 1, 1000, 10**9, 10**9]


# -- every step, every operation: the oracle, and the twins against each other ------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60), st.integers(1, 3)),
        st.tuples(st.just("add"), st.sampled_from([0, 60, 2**64 - 1]), st.integers(1, 400)),
        st.tuples(
            st.just("many"),
            st.dictionaries(st.integers(0, 60), st.integers(1, 30), max_size=12),
            st.just(0),
        ),
        st.tuples(st.just("ranks"), st.lists(st.integers(0, 10**6), max_size=4), st.just(0)),
        st.tuples(st.just("take"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


def _sorted_pairs(pairs: dict[int, int]) -> tuple[list[int], list[int]]:
    keys = sorted(pairs)
    return keys, [pairs[k] for k in keys]


def _apply(m: Any, kind: str, arg: Any, times: int, values: Counter[int]) -> Any:
    if kind == "add":
        return m.add(arg, times)
    if kind == "many":
        prices, counts = _sorted_pairs(arg)
        return m.add_many(prices, counts)
    if kind == "take":
        return m.take_touched().to_dict()
    n = sum(values.values())
    return m.values_at([r % n for r in arg]) if n else None


@given(ops, st.sampled_from([{}, *TINY]))
@settings(max_examples=150)
def test_every_operation_equals_the_oracle(
    twin: Any, script: list[tuple[str, Any, int]], options: dict[str, int]
) -> None:
    """Single adds, batches, whole pieces of files (add_many) and order statistics, with levels
    going cold and coming back: every answer, the median, each multiplicity and the state
    match the oracle after every step."""
    m = twin(**options)
    values: Counter[int] = Counter()
    touched: set[int] = set()  # levels added to since the last take
    for kind, arg, times in script:
        got = _apply(m, kind, arg, times, values)
        if kind == "add":
            values[arg] += times
            touched.add(arg)
            assert got == values[arg]
        elif kind == "many":
            for p, c in arg.items():
                values[p] += c
            touched |= set(arg)
            assert got == [values[p] for p in sorted(arg)]
        elif kind == "take":  # each level added to since, at its count now
            assert got == {p: values[p] for p in touched}
            touched = set()
        elif got is not None:
            flat = sorted(values.elements())
            assert got == [flat[r % len(flat)] for r in arg]
        m._check()
        assert m.count == sum(values.values())
        assert m.twice_median == (twice_median_of(values) if values else None)
        probe = [*sorted(values)[:20], 61, 1000]
        assert m.multiplicities(probe) == [values[v] for v in probe]
    assert m.to_state() == sorted(values.items())
    assert m.levels == len(values)
    back = twin.from_arrays(*m.to_arrays(), **options)
    back._check()
    assert (back.count, back.twice_median) == (m.count, m.twice_median)


def assert_hands_over(m: Any, values: Counter[int]) -> None:
    """m's take_touched hands over exactly values: each level once, at its count, ascending
    in sorted_bytes."""
    touched = m.take_touched()
    assert touched.to_dict() == dict(values)
    got_prices, got_counts = touched.sorted_bytes()
    assert np.frombuffer(got_prices, np.uint64).tolist() == sorted(values)
    assert np.frombuffer(got_counts, np.int64).tolist() == [values[p] for p in sorted(values)]


@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=600),
    st.lists(st.integers(0, 2**64 - 1), max_size=3),
    st.sampled_from([{}, *TINY]),
)
@settings(max_examples=60)
def test_the_record_of_levels_touched_holds_each_level_once_at_its_newest_count(
    twin: Any, prices: list[int], extremes: list[int], options: dict[str, int]
) -> None:
    """Many levels, each added again long after its first add (the compiled record keeps a
    filled table as it is and puts a level added again in a newer one, so one level may sit
    in several tables): what take_touched hands over is every level added to once, at its
    count now, ascending in sorted_bytes; the next record holds only what came after."""
    m = twin(**options)
    values: Counter[int] = Counter()
    for p in [*extremes, *prices, *reversed(prices)]:  # each added again after the rest
        m.add(p)
        values[p] += 1
    assert_hands_over(m, values)
    assert m.take_touched().to_dict() == {}
    m.add(prices[0], 2)
    values[prices[0]] += 2
    assert m.take_touched().to_dict() == {prices[0]: values[prices[0]]}
    m._check()


@given(
    st.lists(st.integers(41, 2**64 - 1), max_size=20),
    st.lists(st.integers(0, 40), min_size=1, max_size=30),
    st.integers(1_000, 3_000),
    st.lists(st.integers(0, 2**64 - 1), max_size=60),
    st.sampled_from([{}, *TINY]),
)
@settings(max_examples=40)
def test_a_record_of_few_levels_traded_often_is_handed_over_whole(
    twin: Any,
    first: list[int],
    few: list[int],
    trades: int,
    later: list[int],
    options: dict[str, int],
) -> None:
    """A few levels once, many trades over few others, then new levels, then the few again
    (the compiled record logs puts until the log would outgrow twice the levels gained, then
    puts them in tables: a level may sit in the log alone, or in the log and in a table at two
    counts): what take_touched hands over is every level added to once, at its count now,
    and nothing of it is handed over again."""
    m = twin(**options)
    values: Counter[int] = Counter(first)
    for p in first:
        m.add(p)
    for i in range(trades):
        m.add(few[i % len(few)])
        values[few[i % len(few)]] += 1
    for p in [*later, *few]:
        m.add(p, 2)
        values[p] += 2
    assert_hands_over(m, values)
    m.add(few[0])
    assert m.take_touched().to_dict() == {few[0]: values[few[0]] + 1}
    m._check()


@pytest.mark.skipif(CRunningMedian is None, reason="the compiled twin was not built at install")
@given(ops, st.sampled_from([{}, *TINY]))
@settings(max_examples=150)
def test_the_twins_agree_state_for_state(
    script: list[tuple[str, Any, int]], options: dict[str, int]
) -> None:
    """The compiled twin is the same algorithm as the pure one: after the same operations both
    hold the same heaps (as sets of levels), cold stores (as levels in order), floor, ceiling
    and side counts, and answered the same."""
    py, c = PyRunningMedian(**options), CRunningMedian(**options)
    values: Counter[int] = Counter()
    for kind, arg, times in script:
        assert _apply(py, kind, arg, times, values) == _apply(c, kind, arg, times, values)
        if kind == "add":
            values[arg] += times
        elif kind == "many":
            values.update(arg)
        assert py._state() == c._state()  # the record of levels touched included
    assert py.to_state() == c.to_state()
    if values:
        prices, counts = py.to_arrays()
        assert PyRunningMedian.from_arrays(prices, counts, **options)._state() == \
            CRunningMedian.from_arrays(prices, counts, **options)._state()  # fmt: skip


def test_add_many_refuses_bad_pairs_before_adding_anything(twin: Any) -> None:
    m = twin(**TINY[0])
    m.add_many([1, 2, 3], [5, 5, 5])
    before = m._state()
    for prices, counts in (([3, 2], [1, 1]), ([2, 2], [1, 1]), ([2], [0]), ([2], [-1]),
                           ([1, 2], [1]), ([-1], [1])):  # fmt: skip
        with pytest.raises(ValueError):
            m.add_many(prices, counts)
        assert m._state() == before


def test_add_many_takes_numpy_arrays(twin: Any) -> None:
    m = twin(**TINY[0])
    got = m.add_many(np.array([1, 2, 2**64 - 1], np.uint64), np.array([5, 5, 1], np.int64))
    assert got == [5, 5, 1] and m.twice_median == 4
    m._check()


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=80))
def test_cold_storage_keeps_the_extremes_of_the_range(twin: Any, values: list[int]) -> None:
    m = twin(**TINY[0])
    for i, v in enumerate(values, 1):
        m.add(v)
        m._check()
        assert m.twice_median == oracle_twice_median(values[:i])


def test_heaps_stay_bounded_with_many_distinct_levels(twin: Any) -> None:
    """100,000 distinct levels in a random order: the heaps hold at most hot_max levels each,
    the rest is cold, and the median and every order statistic asked are still exact."""
    rnd = random.Random(7)
    values = list(range(100_000))
    rnd.shuffle(values)
    m = twin(hot_max=1024, refill=128, chunk=256)
    for v in values:
        m.add(v, 1 + v % 5)
    m._check()
    state = m._state()
    assert len(state[4]) <= 1024 and len(state[5]) <= 1024
    assert m.levels == 100_000
    levels = Counter({v: 1 + v % 5 for v in range(100_000)})
    assert m.count == sum(levels.values())
    assert m.twice_median == twice_median_of(levels)
    flat_rank = [0, 1, 12_345, m.count // 2, m.count - 1]
    cum, out = 0, {}
    for v in range(100_000):
        for r in flat_rank:
            if cum <= r < cum + levels[v]:
                out[r] = v
        cum += levels[v]
    assert m.values_at(flat_rank) == [out[r] for r in flat_rank]


def test_add_many_on_empty_and_on_far_sides(twin: Any) -> None:
    m = twin(**TINY[0])
    assert m.add_many([1, 2, 3], [5, 5, 5]) == [5, 5, 5]
    m._check()
    assert m.twice_median == 4
    m.add_many([100, 200], [100, 1])  # far above: the median crosses into the high cold store
    m._check()
    assert m.twice_median == 200
    m.add_many([0], [300])
    m._check()
    assert m.twice_median == 0
