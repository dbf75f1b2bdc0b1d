"""Exact quantiles (GET /{symbol}?q=...) against a brute-force oracle: the sorted prices and
the definition, in exact fractions."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import falcon.testing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv import symbols
from medianserv.api import create_app
from medianserv.median import CRunningMedian
from medianserv.prices import format_median
from medianserv.quantiles import MAX_QUANTILES, parse_quantiles
from medianserv.symbols import Row, SymbolTable

from .test_api import State

TWINS = [False] + ([True] if CRunningMedian is not None else [])


@pytest.fixture(autouse=True)
def _compiled_by_default() -> Any:
    yield
    symbols.use_compiled(CRunningMedian is not None)


def oracle(prices: list[int], q: str) -> str | None:
    """The q-quantile as defined (midpoint of ranks floor/ceil of q(n-1)), exactly."""
    if not prices:
        return None
    s, n = sorted(prices), len(prices)
    r = Fraction(q) * (n - 1)
    return format_median(s[math.floor(r)] + s[math.ceil(r)])


qs_text = st.lists(
    st.one_of(st.sampled_from(["0", "1", "0.5", "0.0", "1.0", "1.000", "0.99", "0.01", "0.25"]),
              st.builds(lambda d: f"0.{d}", st.integers(0, 10**18 - 1).map(str))),
    min_size=1, max_size=MAX_QUANTILES,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 10**19 - 1) | st.integers(1, 50), max_size=120),
    st.lists(st.tuples(st.integers(1, 40), st.integers(1, 9)), max_size=8),
    qs_text, st.sampled_from(TWINS), st.booleans(),
)  # fmt: skip
def test_quantiles_equal_the_definition(
    prices: list[int], rows: list[tuple[int, int]], asked: list[str], compiled: bool, tiny: bool
) -> None:
    """Trades one at a time and in aggregates (tiny thresholds send levels cold and back),
    any q's: each quantile equals the definition over every price counted, keyed as asked;
    q=0.5 is the median and the median key is unchanged."""
    symbols.use_compiled(compiled)
    state = State()
    stats = state.table().get("QUIETUSDT")
    assert stats is not None
    if tiny:
        stats.median = type(stats.median)(hot_max=2, refill=1, chunk=2)
    stats.baseline(0, 0)  # the range starts at id 1: rows below a first trade count too
    counted: list[int] = []
    tid = 1
    for p in prices:
        stats.apply(tid, p, tid)
        counted.append(p)
        tid += 1
    for price, k in rows:  # aggregates filling a gap the stream left
        stats.apply(tid + k, 7, tid)
        stats.apply_rows([Row(tid, tid + k - 1, price, tid)])
        counted += [7] + [price] * k
        tid += k + 1
    client = falcon.testing.TestClient(create_app(state))
    r = client.simulate_get("/QUIETUSDT", params={"q": ",".join(asked)})
    assert r.status_code == 200, r.text
    assert r.json["quantiles"] == {q: oracle(counted, q) for q in asked}
    plain = client.simulate_get("/QUIETUSDT").json
    assert {k: v for k, v in r.json.items() if k != "quantiles"} == plain
    half = client.simulate_get("/QUIETUSDT", params={"q": "0.5"}).json["quantiles"]["0.5"]
    assert half == plain["median"]


@pytest.mark.parametrize("compiled", TWINS)
def test_one_trade_and_none(compiled: bool) -> None:
    symbols.use_compiled(compiled)
    state = State()
    client = falcon.testing.TestClient(create_app(state))
    none = client.simulate_get("/ETHBTC", params={"q": "0,0.5,1"}).json
    assert none["quantiles"] == {"0": None, "0.5": None, "1": None} and none["median"] is None
    eth = state.table().get("ETHBTC")
    assert eth is not None
    eth.apply(5, 123456789, 1)
    one = client.simulate_get("/ETHBTC", params={"q": "0,0.5,1,0.123"}).json
    assert one["quantiles"] == dict.fromkeys(("0", "0.5", "1", "0.123"), "1.23456789")


@pytest.mark.parametrize("bad", [
    "", "2", "1.1", "1.0000000000000000001", "-0.1", "0.5,", ",0.5", ".5", "0.", "0,5,1",
    "0.5e0", "NaN", " 0.5", "0.5 ", "\u00bd", "0.\u0665", ",".join(["0.1"] * 17), "0.1;0.2",
    "0." + "1" * 19,
])  # fmt: skip
def test_a_bad_q_is_a_json_400(bad: str) -> None:
    client = falcon.testing.TestClient(create_app(State()))
    r = client.simulate_get("/BTCUSDT", query_string="q=" + bad.replace(" ", "%20"))
    assert r.status_code == 400 and r.json["title"] == "Bad q", (bad, r.text)
    with pytest.raises(ValueError):
        parse_quantiles(bad)


def test_q_given_twice_is_a_400_and_an_unknown_symbol_a_404() -> None:
    client = falcon.testing.TestClient(create_app(State()))
    assert client.simulate_get("/BTCUSDT", query_string="q=0.1&q=0.2").status_code == 400
    assert client.simulate_get("/NOPE", params={"q": "0.5"}).status_code == 404


def test_keys_are_kept_as_written_and_answers_carry_an_etag() -> None:
    client = falcon.testing.TestClient(create_app(State()))
    r = client.simulate_get("/BTCUSDT", params={"q": "0.50,1.000,0.5"})
    assert list(r.json["quantiles"]) == ["0.50", "1.000", "0.5"]
    assert r.json["quantiles"]["0.50"] == r.json["quantiles"]["0.5"] == r.json["median"]
    again = client.simulate_get("/BTCUSDT", params={"q": "0.50,1.000,0.5"},
                                headers={"If-None-Match": r.headers["ETag"]})  # fmt: skip
    assert again.status_code == 304


def test_quantiles_of_a_large_random_market() -> None:
    """Many levels, most of them cold, read in one call at many ranks."""
    rnd = random.Random(3)
    for compiled in TWINS:
        symbols.use_compiled(compiled)
        table = SymbolTable.build(["X"])
        stats = table.get("X")
        assert stats is not None
        prices = [rnd.randrange(1, 10**6) * 100 for _ in range(20_000)]
        for tid, p in enumerate(prices, 1):
            stats.apply(tid, p, tid)
        asked = parse_quantiles("0,0.001,0.01,0.1,0.25,0.333,0.5,0.75,0.9,0.99,0.999,1")
        _, twice = stats.quantiles(asked)
        assert [format_median(t) for t in twice if t is not None] == [
            oracle(prices, q.text) for q in asked]  # fmt: skip
