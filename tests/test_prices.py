"""prices: exact parsing and formatting, checked against Decimal and Fraction."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medianserv.errors import PriceError
from medianserv.prices import MAX_UNITS, SCALE, format_median, format_price, parse_price

units = st.integers(min_value=0, max_value=MAX_UNITS)


@st.composite
def price_strings(draw: st.DrawFn) -> str:
    whole = draw(st.text("0123456789", min_size=1, max_size=11))
    frac = draw(st.text("0123456789", min_size=0, max_size=8))
    return f"{whole}.{frac}" if frac else whole


@given(price_strings())
def test_parse_agrees_with_decimal(text: str) -> None:
    assert parse_price(text) == int(Decimal(text) * SCALE)


@given(units)
def test_format_then_parse_is_identity(value: int) -> None:
    assert parse_price(format_price(value)) == value


@given(units)
def test_format_price_is_exact(value: int) -> None:
    assert Fraction(format_price(value)) == Fraction(value, SCALE)


@given(units, units)
def test_format_median_is_the_exact_mean(a: int, b: int) -> None:
    text = format_median(a + b)
    assert Fraction(text) == Fraction(a + b, 2 * SCALE)
    assert len(text.partition(".")[2]) <= 9
    assert not text.endswith(".") and (text == "0" or "." not in text or text[-1] != "0")


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "abc",
        "1e5",
        "1E5",
        "-1",
        "+1",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "1.123456789",
        " 1",
        "1 ",
        "1.",
        ".5",
        "1..2",
        "1.2.3",
        "1_000",
        "0x10",
        "\uff11",
        "²",
        "٣",
        "1,5",
        "123456789012",
        "9" * 4000,
        "1." + "0" * 4000,
    ],
)
def test_rejects_anything_but_a_plain_decimal(text: str) -> None:
    with pytest.raises(PriceError):
        parse_price(text)


@given(st.text(max_size=30))
def test_any_text_either_parses_exactly_or_raises_price_error(text: str) -> None:
    try:
        value = parse_price(text)
    except PriceError:
        return
    assert Fraction(text) == Fraction(value, SCALE)
    assert 0 <= value <= MAX_UNITS


def test_real_binance_shapes() -> None:
    assert parse_price("61837.63000000") == 6_183_763_000_000
    assert parse_price("0.00001234") == 1234
    assert parse_price("1.00") == SCALE
    assert parse_price("9999998955.00000000") == 9_999_998_955 * SCALE
    assert format_price(parse_price("0.10000000")) == "0.1"
