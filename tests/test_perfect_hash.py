"""PerfectHash against a dict: every key its own slot, every other key rejected."""

from __future__ import annotations

import random
import string
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv.errors import PerfectHashError, SymbolError
from medianserv.perfect_hash import PerfectHash


def check_against_dict(keys: list[str], probes: list[str]) -> PerfectHash:
    ph = PerfectHash.build(keys)
    ph._check()
    oracle = {k: ph.slot(k) for k in keys}
    assert len(set(oracle.values())) == len(keys), "two keys share a slot"
    assert all(0 <= s < ph.size for s in oracle.values())  # type: ignore[operator]
    if len(keys) >= 200:
        assert len(keys) / ph.size >= 0.99, "load factor"
    for p in probes:
        assert (ph.slot(p) is not None) == (p in oracle), p
        if p in oracle:
            assert ph.keys[ph.slot(p)] == p  # type: ignore[index]
    return ph


def near_misses(keys: list[str]) -> list[str]:
    out: list[str] = []
    for k in keys:
        out += [k.lower(), k[:-1], k[1:], k + "T", "X" + k, k + k, k.swapcase(), k + "\x00"]
    return out


def random_strings(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    alphabet = string.ascii_uppercase + string.digits
    out = ("".join(rnd.choices(alphabet, k=rnd.randint(1, 14))) for _ in range(n))
    return list(dict.fromkeys(out))  # distinct, in a deterministic order


def test_real_symbols(real_symbols: list[str]) -> None:
    assert len(real_symbols) == 2292
    ph = check_against_dict(real_symbols, near_misses(real_symbols) + random_strings(10_000, 3))
    assert len(ph) == 2292


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 100_000])
def test_generated_sets(n: int) -> None:
    keys = random_strings(n, n)
    probes = random_strings(10_000, n + 1) + near_misses(keys[:500])
    check_against_dict(keys, probes)


def test_near_duplicates_and_unicode() -> None:
    keys = [
        "1000SATSUSDT",
        "1000SATSFDUSD",
        "BTCUSDT",
        "BTCUSD",
        "BTCUSDC",
        "USDTBTC",
        "币安人生USDT",
        "ÉTHÉ",
        "ETHE",
        "\uff22\uff34\uff23",
        "A",
        "AB",
        "BA",
        "😀USDT",
    ]
    ph = check_against_dict(keys, [*near_misses(keys), "btcusdt", "", "币安", "1000SATS"])
    assert ph.slot("BTCUSDT") != ph.slot("BTCUSD")


def test_empty_set_rejects_everything() -> None:
    ph = PerfectHash.build([])
    ph._check()
    assert len(ph) == 0
    assert ph.slot("BTCUSDT") is None and ph.slot("") is None


def test_empty_string_key() -> None:
    check_against_dict(["", "A"], ["B", "AA"])


def test_crc_collision_switches_to_wide_mode() -> None:
    a, b = "TDLFEJPW", "DDDMZNBX"  # equal length, equal crc32: every seed maps them together
    assert zlib.crc32(a.encode()) == zlib.crc32(b.encode())
    ph = check_against_dict([a, b, *random_strings(500, 9)], [a.lower(), b[:-1], "TDLFEJPX"])
    assert ph._wide
    assert ph.slot(a) != ph.slot(b)


def test_duplicates_and_bad_unicode_are_refused() -> None:
    with pytest.raises(PerfectHashError):
        PerfectHash.build(["A", "B", "A"])
    with pytest.raises(SymbolError):
        PerfectHash.build(["A", "\ud800"])


def test_lookup_of_unencodable_key_is_none() -> None:
    assert PerfectHash.build(["A"]).slot("\ud800") is None


def test_deterministic_across_builds() -> None:
    keys = random_strings(3000, 5)
    assert PerfectHash.build(keys).keys == PerfectHash.build(list(keys)).keys


@settings(max_examples=200)
@given(st.sets(st.text(max_size=12), max_size=300), st.lists(st.text(max_size=12), max_size=50))
def test_any_set_any_probe(keys: set[str], probes: list[str]) -> None:
    keys = {k for k in keys if not any(0xD800 <= ord(c) <= 0xDFFF for c in k)}
    check_against_dict(sorted(keys), probes)
