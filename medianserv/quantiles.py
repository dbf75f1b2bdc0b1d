"""Exact quantiles: the ``q`` of ``GET /{symbol}?q=0.01,0.99`` read as written, and the ranks
whose prices make each one (pure).

The q-quantile of the n prices counted is the mean of the prices at the 0-based ranks
``floor(q (n - 1))`` and ``ceil(q (n - 1))`` (numpy's "midpoint" method), in exact
arithmetic: ``q`` is the decimal it is written as, never a float, so ``q=0.5`` is exactly the
median and ``q=0.1`` is one tenth. Like the median it is kept as *twice* its value, an exact
integer of 1e-8 units (:func:`~medianserv.prices.format_median` prints it).

>>> qs = parse_quantiles("0.5,0.25,1")
>>> [(q.text, q.num, q.den) for q in qs]
[('0.5', 5, 10), ('0.25', 25, 100), ('1', 1, 1)]
>>> ranks(qs[0], 4), ranks(qs[1], 4), ranks(qs[2], 4)   # of 4 prices: ranks 0 1 2 3
((1, 2), (0, 1), (3, 3))
>>> parse_quantiles("0.5,2")
Traceback (most recent call last):
...
ValueError: q: '2' is not a decimal from 0 to 1

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_QUANTILES", "Quantile", "parse_quantiles", "ranks"]

#: Quantiles one request may ask for.
MAX_QUANTILES = 16
#: Digits a q may have after its point (more says nothing a price could tell apart).
MAX_DECIMALS = 18

_DECIMAL = re.compile(rf"(0|1)(?:\.([0-9]{{1,{MAX_DECIMALS}}}))?", re.ASCII)


class Quantile(NamedTuple):
    """One q as written, and its exact value ``num / den`` (den a power of ten)."""

    text: str
    num: int
    den: int


def parse_quantiles(text: str) -> list[Quantile]:
    """The comma-separated q's of ``text``, in order: each a plain decimal from 0 to 1 (``0``,
    ``1``, ``0.25``, ``1.0``; ASCII digits, a leading digit, at most 18 decimals), at most
    :data:`MAX_QUANTILES`. ``ValueError`` naming what is wrong otherwise. O(len(text))."""
    parts = text.split(",")
    if len(parts) > MAX_QUANTILES:
        raise ValueError(f"q: at most {MAX_QUANTILES} values, not {len(parts)}")
    out = []
    for part in parts:
        m = _DECIMAL.fullmatch(part)
        if m is None:
            raise ValueError(f"q: {part[:40]!r} is not a decimal from 0 to 1")
        whole, frac = m.group(1), m.group(2) or ""
        num, den = int(whole + frac), 10 ** len(frac)
        if num > den:
            raise ValueError(f"q: {part[:40]!r} is not a decimal from 0 to 1")
        out.append(Quantile(part, num, den))
    return out


def ranks(q: Quantile, n: int) -> tuple[int, int]:
    """The 0-based ranks among ``n`` prices (n > 0) whose mean is the q-quantile:
    ``floor(q (n - 1))`` and ``ceil(q (n - 1))``, in integers. O(1)."""
    lo, rem = divmod(q.num * (n - 1), q.den)
    return lo, lo + (1 if rem else 0)
