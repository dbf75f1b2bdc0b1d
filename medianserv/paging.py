"""Paging through REST trade pages for a range of trade ids: what to ask, what to accept.

Both the gap backfill (:mod:`medianserv.backfill`) and the history import's REST tail
(:mod:`medianserv.importer`) fetch trades Binance publishes over REST for a known range of
trade ids (a :class:`~medianserv.tradeids.Gap`), and both must apply only pages that pass the
same checks. So the paging and checking live here, pure, and both go down to them:

* :func:`plan`: the next call for a gap (``aggTrades`` by time for its first page, then from
  a :class:`Cursor`; ``historicalTrades`` where aggregates cannot serve);
* :func:`check_page` / :func:`check_trades`: why a page cannot be applied, or None;
* :func:`next_hint`: how to continue after a good page;
* :func:`fetch_page`: the one thin I/O step, a call made and its answer checked.

*Why aggregates first.* ``GET /api/v3/aggTrades`` (weight 4, up to 1,000 rows): each row is
one price for the consecutive trade ids ``f..l``, so the prices of any range of ids are known
exactly from the rows that cover it, for a sixth of the weight of ``historicalTrades`` per
call and about 1.8 trades a row on the real market. The first page of a gap is asked by time
(the window ``after_ms .. before_ms`` starts with the trade just before it; Binance has put
no limit on that span since 2022-12-05). Each later page starts from the last aggregate of
the page before, fetched again and compared: a page that does not begin with the row we
already have is refused, so every page is checked against the one before it.

Pure but for :func:`fetch_page`: no threads, no clock, no logging.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .exchange import AggTrade, HistoricalTrade, RestClient
from .tradeids import Gap, Row

__all__ = [
    "Cursor", "Hint", "Locate", "Page", "Request", "check_page", "check_trades", "fetch_page",
    "next_hint", "plan", "trades_to_rows",
]  # fmt: skip


class Cursor(NamedTuple):
    """Continue the gap starting at ``lo`` from ``row``, the last aggregate of the page before
    (applied, or still below the gap): the next page is asked from ``row``'s aggregate id and
    must start with ``row`` itself."""

    lo: int
    row: AggTrade


class Locate(NamedTuple):
    """Fetch the gap starting at ``lo`` with historicalTrades (aggregates cannot serve it)."""

    lo: int


Hint = Cursor | Locate


class Request(NamedTuple):
    """One REST call to make for a gap."""

    endpoint: str  # "aggTrades" or "historicalTrades"
    from_id: int | None = None  # aggregate id (aggTrades) or trade id (historicalTrades)
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int = 1000


def plan(gap: Gap, hint: Hint | None, endpoint: str = "aggTrades") -> Request:
    """The next call for ``gap``. Pure, O(1).

    The first page of a gap is asked by time, from ``after_ms`` (the time of the trade just
    before it) to ``before_ms`` when known: since 2022-12-05 Binance puts no limit on that
    span. Later pages follow a :class:`Cursor`. historicalTrades serves a gap with no lower
    time bound, a :class:`Locate` hint, and the ``historicalTrades`` endpoint setting.

    >>> plan(Gap(10, 20, after_ms=5_000, before_ms=9_000), None)
    Request(endpoint='aggTrades', from_id=None, start_ms=5000, end_ms=9000, limit=1000)
    >>> plan(Gap(10, 20), None).endpoint
    'historicalTrades'
    >>> row = AggTrade(7, 8, 9, 100, 5_000)
    >>> plan(Gap(10, 20, after_ms=5_000), Cursor(10, row)).from_id
    7
    """
    if hint is not None and hint.lo != gap.lo:
        hint = None  # the gap moved (a live trade filled its start): the hint is stale
    historical = Request("historicalTrades", gap.lo, limit=min(1000, gap.hi - gap.lo + 1))
    if endpoint == "historicalTrades" or isinstance(hint, Locate):
        return historical
    if isinstance(hint, Cursor):
        return Request("aggTrades", from_id=hint.row.agg_id)
    if gap.after_ms is None:
        return historical
    end = gap.before_ms if gap.before_ms is None or gap.before_ms >= gap.after_ms else None
    return Request("aggTrades", start_ms=gap.after_ms, end_ms=end)


def check_page(rows: Sequence[AggTrade], gap: Gap, hint: Hint | None = None) -> str | None:
    """Why a page of aggregates cannot be applied to ``gap``, or None when it can. Pure, O(n).

    ``overlap`` / ``skip``: rows that do not tile the trade ids (or aggregate ids that are not
    consecutive); ``disorder``: times going back; ``contradict``: a row that disagrees with a
    trade we have (the trade on either side of the gap, or the row a cursor continues from);
    ``late``: the page starts after the gap (not bad data: the gap needs historicalTrades);
    ``empty``: no rows.
    """
    if not rows:
        return "empty"
    for a, b in itertools.pairwise(rows):
        if b.first_id <= a.last_id:
            return "overlap"
        if b.first_id != a.last_id + 1 or b.agg_id != a.agg_id + 1:
            return "skip"
        if b.time_ms < a.time_ms:
            return "disorder"
    if isinstance(hint, Cursor) and hint.lo == gap.lo and rows[0] != hint.row:
        return "contradict"
    for edge, price in ((gap.lo - 1, gap.price_before), (gap.hi + 1, gap.price_after)):
        if price is None:
            continue
        for r in rows:
            if r.first_id <= edge <= r.last_id and r.price != price:
                return "contradict"
    if rows[0].first_id > gap.lo:
        return "late"
    return None


def next_hint(rows: Sequence[AggTrade], gap: Gap) -> Hint | None:
    """How to continue ``gap`` after a good page ``rows`` (checked, starting at or below the
    gap) is applied: from its last row, keyed by where the gap starts *after* the page (its
    start moves only if the page reached it), or None when the page covers the gap. Pure.

    >>> before = [AggTrade(1, 5, 6, 100, 7)]  # a page that ends below the gap 10..20
    >>> next_hint(before, Gap(10, 20)) == Cursor(10, before[0])
    True
    >>> next_hint([AggTrade(2, 9, 12, 100, 7)], Gap(10, 20)).lo
    13
    """
    last = rows[-1]
    if last.last_id >= gap.hi:
        return None
    return Cursor(max(gap.lo, last.last_id + 1), last)


class Page(NamedTuple):
    """A fetched page for a gap: the rows to apply (none when refused), why it was refused
    (a :func:`check_page` or :func:`check_trades` verdict, or None), and how to continue."""

    rows: list[Row]
    verdict: str | None
    hint: Hint | None


def fetch_page(
    rest: RestClient, symbol: str, gap: Gap, hint: Hint | None, request: Request
) -> Page:
    """Make ``request`` (from :func:`plan`; its weight already acquired) and check what comes
    back against ``gap``. The one fetch of both the backfill and the history import, so both
    apply only pages that pass the same checks. A page of aggTrades that is empty or starts
    after the gap is no error: the gap is then located with historicalTrades; a refused page
    also hands the gap to historicalTrades."""
    if request.endpoint == "historicalTrades":
        trades = rest.historical_trades(symbol, gap.lo, request.limit)
        verdict = check_trades(trades, gap)
        rows = [] if verdict else trades_to_rows(trades)
        return Page(rows, verdict, Locate(gap.lo) if verdict else None)
    page = rest.agg_trades(
        symbol, from_id=request.from_id, start_ms=request.start_ms, end_ms=request.end_ms
    )
    verdict = check_page(page, gap, hint)
    if verdict is not None:
        return Page([], verdict, Locate(gap.lo))
    rows = [Row(r.first_id, r.last_id, r.price, r.time_ms) for r in page]
    return Page(rows, None, next_hint(page, gap))


def trades_to_rows(trades: Iterable[HistoricalTrade]) -> list[Row]:
    """historicalTrades as rows of one trade each: the same bulk path. O(n)."""
    return [Row(t.trade_id, t.trade_id, t.price, t.time_ms) for t in trades]


def check_trades(trades: Sequence[HistoricalTrade], gap: Gap) -> str | None:
    """Why a historicalTrades page cannot be applied to ``gap``, or None. Pure, O(n)."""
    for a, b in itertools.pairwise(trades):
        if b.trade_id != a.trade_id + 1:
            return "overlap" if b.trade_id <= a.trade_id else "skip"
        if b.time_ms < a.time_ms:
            return "disorder"
    for t in trades:
        if t.trade_id == gap.hi + 1 and gap.price_after not in (None, t.price):
            return "contradict"
    return None
