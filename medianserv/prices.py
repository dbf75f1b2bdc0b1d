"""Exact prices: decimal strings <-> integer units of 1e-8.

Binance sends prices as plain decimal strings with up to 8 decimals (``"61837.63000000"``).
We keep them as ``int`` numbers of 1e-8 units, so every comparison and sum is exact and no
float ever enters the statistics path. A median of an even count is the mean of two prices and
may need a 9th decimal; it is carried as *twice* the median in units (always an integer) and
formatted exactly by :func:`format_median`.

>>> parse_price("61837.63000000")
6183763000000
>>> format_price(6183763000000)
'61837.63'
>>> format_median(parse_price("0.00000001") + parse_price("0.00000002"))
'0.000000015'

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from .errors import PriceError

__all__ = [
    "DECIMALS",
    "MAX_UNITS",
    "MAX_WHOLE_DIGITS",
    "SCALE",
    "PriceCache",
    "format_median",
    "format_price",
    "parse_price",
]

DECIMALS = 8
SCALE = 10**DECIMALS
#: At most 11 integer digits: every price fits in an unsigned 64-bit integer of units
#: (Binance's largest maxPrice in the 2023 exchangeInfo is 9,999,998,955, 10 digits).
MAX_WHOLE_DIGITS = 11
MAX_UNITS = 10 ** (MAX_WHOLE_DIGITS + DECIMALS) - 1

# _PAD[k] turns k decimals into exactly 8: one concatenation instead of a multiplication.
_PAD = tuple("0" * (DECIMALS - k) for k in range(DECIMALS + 1))


def parse_price(text: str) -> int:
    """Parse a plain non-negative decimal string into integer units of 1e-8.

    Accepts ``D+`` or ``D+.D{1,8}`` with ASCII digits only, at most 11 integer digits.
    Rejects, with :class:`PriceError`, everything else: empty strings, signs, exponents,
    ``NaN``, spaces, underscores, non-ASCII digits, a bare ``"1."`` or ``".5"`` and more
    than 8 decimals (rounding would make the statistic inexact).

    Cost: O(len(text)), a handful of C-level string operations and one ``int()``: faster than
    ``int(Decimal(text) * 10**8)``, which would also accept ``"1e5"``, ``"NaN"`` or ``" 1"``
    and so need this validation on top (see ``medianserv bench core``).

    >>> parse_price("1.00")
    100000000
    >>> parse_price("1e5")
    Traceback (most recent call last):
    ...
    medianserv.errors.PriceError: not a price: '1e5'
    """
    if len(text) > DECIMALS + 1 and text[-DECIMALS - 1] == ".":
        # Fast path for the 8-decimal form Binance sends: drop the dot, validate, convert.
        digits = text.replace(".", "", 1)
        if len(digits) <= MAX_WHOLE_DIGITS + DECIMALS and digits.isdigit() and digits.isascii():
            return int(digits)
    whole, dot, frac = text.partition(".")
    if 0 < len(whole) <= MAX_WHOLE_DIGITS and len(frac) <= DECIMALS and (frac or not dot):
        digits = whole + frac
        # isascii() first: str.isdigit() alone accepts e.g. superscripts and Arabic digits.
        if digits.isascii() and digits.isdigit():
            return int(digits + _PAD[len(frac)])
    raise PriceError(f"not a price: {text[:40]!r}")


class PriceCache:
    """:func:`parse_price` behind a dict of the texts already parsed: trades repeat a few
    price levels, and a dict hit is a fraction of a parse. Exact (the key is the text
    itself); bounded: past ``size`` texts (about 100 bytes each) it starts over. One per
    thread. O(len(text)), O(1) for a text seen."""

    __slots__ = ("_known", "size")

    def __init__(self, size: int = 1 << 16) -> None:
        self.size = size
        self._known: dict[str, int] = {}

    def units(self, text: str) -> int:
        """``parse_price(text)``; :class:`PriceError` as it raises it."""
        known = self._known.get(text)
        if known is None:
            known = parse_price(text)
            if len(self._known) >= self.size:
                self._known.clear()
            self._known[text] = known
        return known


def _format_fixed(value: int, decimals: int) -> str:
    """Exact decimal string of ``value * 10**-decimals``, trailing zeros dropped."""
    if value < 0:
        raise ValueError("negative value")
    whole, frac = divmod(value, 10**decimals)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{decimals}d}".rstrip("0")


def format_price(units: int) -> str:
    """Exact decimal string of a price in 1e-8 units, without trailing zeros. O(digits).

    >>> format_price(100000000), format_price(1), format_price(0)
    ('1', '0.00000001', '0')
    """
    return _format_fixed(units, DECIMALS)


def format_median(twice_units: int) -> str:
    """Exact decimal string of a median given as *twice* its value in 1e-8 units. O(digits).

    Half a unit is 5e-9, so the result has at most 9 decimals and is never rounded.

    >>> format_median(3)
    '0.000000015'
    >>> format_median(2 * 6183763500000)
    '61837.635'
    """
    return _format_fixed(twice_units * 5, DECIMALS + 1)
