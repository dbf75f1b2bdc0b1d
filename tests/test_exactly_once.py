"""Exactly once under every interleaving: a stateful property test of one symbol's state.

A hypothesis ``RuleBasedStateMachine`` drives the real :class:`SymbolStats`, the real
backfill worker (one :meth:`Backfill.run_once` at a time), the importer's pure per-file
decision (:func:`decide_file`) with the real merge and its REST path, the real snapshotter
and LMDB store, against a market known in advance, in any order: stream trades (in order,
repeated, late, skipped), reconnect sweeps, backfill steps over honest or spoiled pages,
archive files for the front (in order, overlapping, past its top, with other events or an
exception in the middle of their merge), REST pages for the front, snapshots, and crashes
followed by a restart from the last snapshot.

The oracle is the market's own prices and the set of trade ids applied. After every step:
the median's and the bookkeeping's invariants (``_check()``), the identity counted + missing
+ lost + to import = width, the count and exact median of the ids applied, nothing applied
ever forgotten (but by a crash, back to the last snapshot), nothing lost (the exchange is
honest), no honest page refused, every symbol with gaps queued for the backfill and every
front queued for the importer. A ``settle`` step also proves liveness: with the market quiet,
the backfill and the importer bring the symbol to exactly every trade of its range.

Run against the code before this test existed, it found: the backfill asking the same page
forever (a page of aggregates ending below the gap), gaps restored from a snapshot that
nothing queued, a merge that broke off counting part of a file, a front filled by rows during
a merge counted twice, a file reaching past the front's top dropped, and sweeps opening gaps
that touch the last one (each reconnect one more range against the cap of 256).
"""

from __future__ import annotations

import random
import statistics
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from medianserv.config import Config
from medianserv.exchange import AggTrade, HistoricalTrade, TickerRange
from medianserv.importer import Apply, FillFirst, Recut, Skip, decide_file
from medianserv.ingest import Ingest
from medianserv.paging import Request, plan
from medianserv.snapshotter import Snapshotter
from medianserv.store import Store
from medianserv.symbols import GAP, Row, SymbolStats
from medianserv.tradeids import Gap

SYM = "X"
ORIGIN = 1000  # the symbol's first trade id
PAGE = 4  # rows a REST page holds: small, so that gaps take several pages


class Market:
    """One symbol's whole history, known in advance: aggregates of 1-3 trades at one price
    and millisecond, many in the same millisecond (as on a busy market), prices on a walk."""

    def __init__(self, seed: int, n: int = 150) -> None:
        rnd = random.Random(seed)
        self.aggs: list[AggTrade] = []
        tid, t, price = ORIGIN, 1_000_000, 50
        for a in range(n):
            k = rnd.choice((1, 1, 1, 2, 3))
            t += rnd.choice((0, 0, 0, 1, 7))
            price = max(1, price + rnd.choice((-2, -1, 0, 0, 1, 2)))
            self.aggs.append(AggTrade(a, tid, tid + k - 1, price, t))
            tid += k
        self.price: dict[int, int] = {}
        self.time: dict[int, int] = {}
        self.agg_of: dict[int, int] = {}
        for a in self.aggs:
            for i in range(a.first_id, a.last_id + 1):
                self.price[i], self.time[i], self.agg_of[i] = a.price, a.time_ms, a.agg_id


class Probed(SymbolStats):
    """SymbolStats with its merge seam open: ``hook`` runs once between two pieces of a merge,
    the lock released, as another thread would."""

    hook: Any = None

    def _between_pieces(self) -> None:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()


class FakeRest:
    """Binance's REST over what the market has published so far: honest unless told to
    spoil its next page. The one stand-in of this test: everything else is real."""

    def __init__(self, machine: ExactlyOnce) -> None:
        self.m = machine
        self.spoil: str | None = None  # the next aggTrades page comes spoiled this way
        self.spoiled = 0  # pages served spoiled

    def acquire(self, endpoint: str, ceiling: float, stop: Any) -> bool:
        return True

    def room(self, endpoint: str, ceiling: float) -> float:
        return 0.0

    def close(self) -> None:
        pass

    def _published(self) -> list[AggTrade]:
        return self.m.market.aggs[: self.m.pub]

    def agg_trades(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 1000,
    ) -> list[AggTrade]:
        self.m.requests.append(("aggTrades", from_id, start_ms, end_ms))
        rows = self._published()
        if from_id is not None:
            rows = [r for r in rows if r.agg_id >= from_id]
        elif start_ms is not None or end_ms is not None:
            lo, hi = start_ms or 0, end_ms if end_ms is not None else 1 << 62
            rows = [r for r in rows if lo <= r.time_ms <= hi]
        else:
            rows = rows[-min(limit, PAGE) :]
        rows = rows[: min(limit, PAGE)]
        kind, self.spoil = self.spoil, None
        if kind is not None and rows:
            self.spoiled += 1
            last = rows[-1]
            if kind == "overlap":
                rows.append(last._replace(agg_id=last.agg_id + 1, first_id=last.last_id))
            elif kind == "skip":
                rows.append(last._replace(agg_id=last.agg_id + 1, first_id=last.last_id + 2,
                                          last_id=last.last_id + 2))  # fmt: skip
            else:  # contradict: every price off by one
                rows = [r._replace(price=r.price + 1) for r in rows]
        return rows

    def historical_trades(
        self, symbol: str, from_id: int, limit: int = 1000
    ) -> list[HistoricalTrade]:
        self.m.requests.append(("historicalTrades", from_id))
        m = self.m.market
        ids = range(max(from_id, ORIGIN), min(self.m.top() + 1, from_id + min(limit, 2 * PAGE)))
        return [HistoricalTrade(i, m.price[i], m.time[i]) for i in ids]

    def trade_id_ranges(self) -> dict[str, TickerRange]:
        last = self._published()[-1]
        first = max(ORIGIN, last.last_id - 60)
        return {SYM: TickerRange(first, last.last_id, None, last.time_ms + 10)}


def _request_key(r: Request) -> tuple[Any, ...]:
    return tuple(r)


class ExactlyOnce(RuleBasedStateMachine):
    @initialize(
        seed=st.integers(0, 1 << 16),
        start=st.integers(10, 60),
        history=st.booleans(),
    )
    def setup(self, seed: int, start: int, history: bool) -> None:
        self.market = Market(seed)
        self.pub = start  # aggregates published so far
        self.rest = FakeRest(self)
        self.requests: list[tuple[Any, ...]] = []
        self.now = 0.0
        self.tmp = tempfile.TemporaryDirectory()
        self.store = Store.open(Path(self.tmp.name))
        self.history = history
        self.config = Config()
        stats = Probed(SYM)
        last = self.market.aggs[start - 1]
        stats.baseline(last.last_id, last.time_ms + 10)  # the ticker just before subscribing
        self.deliver = last.last_id + 1  # next trade id the stream delivers
        self.applied: set[int] = set()
        self.saved: set[int] = set()
        self.merging = False
        self.damaged = False
        self.stuck: list[tuple[Any, ...]] = []
        self.settled: Any = None  # the view after the last settle: no second one before a change
        self._process(stats)
        if history:  # the importer starts at once, as it does for --history
            self.start_history()
        self._snapshot()

    def _process(self, stats: Probed) -> None:
        """A (new) process around ``stats``: the real Ingest wiring, no thread started."""
        self.stats = stats
        self.ingest = Ingest(self.config, self.rest, [stats], clock=lambda: self.now)  # type: ignore[arg-type]
        self.ingest.preload([SYM])
        self.backfill = self.ingest.backfill
        self.backfill.clock = lambda: self.now
        self.importer = self.ingest.importer
        self.importer.clock = lambda: self.now
        self.ingest.requeue_restored()

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    def top(self) -> int:
        """The highest trade id published."""
        return self.market.aggs[self.pub - 1].last_id

    # -- the market and the stream -----------------------------------------------------------

    @precondition(lambda self: self.pub < len(self.market.aggs))
    @rule(n=st.integers(1, 6), deliver=st.booleans())
    def publish(self, n: int, deliver: bool) -> None:
        """The market trades; the stream delivers it, or a connection is down and misses it."""
        self.pub = min(len(self.market.aggs), self.pub + n)
        if deliver:
            while self.deliver <= self.top():
                self._trade(self.deliver)
                self.deliver += 1
        else:
            self.deliver = self.top() + 1

    @rule(data=st.data())
    def late_or_repeated_trade(self, data: st.DataObject) -> None:
        """Any published trade again: a duplicate, a late arrival filling a gap, or one from
        before our range (ignored)."""
        self._trade(data.draw(st.integers(ORIGIN, self.top())))

    def _trade(self, tid: int) -> None:
        m = self.market
        outcome = self.stats.apply(tid, m.price[tid], m.time[tid])
        if outcome.name != "DUPLICATE":
            assert tid not in self.applied, f"trade {tid} counted twice"
            self.applied.add(tid)
        if outcome is GAP:
            self.backfill.notify(SYM)  # what the reader does

    @rule()
    def reconnect_sweep(self) -> None:
        """A connection came back: the ticker says what was traded meanwhile."""
        self.backfill.sweep([SYM])
        self.now += self.config.backfill_delay + 1
        self.backfill.run_once(block=False)
        self._sync()

    # -- the backfill --------------------------------------------------------------------------

    @rule(spoil=st.sampled_from([None, None, None, "overlap", "skip", "contradict"]))
    def backfill_step(self, spoil: str | None) -> None:
        gap = self.stats.oldest_gap()
        if spoil == "contradict" and (gap is None or not self._checkable(gap)):
            spoil = None  # prices all off by one, and nothing to compare them with: no check
        self.rest.spoil = spoil  # can tell; such a page is a lie no client could catch
        self.now += 3
        gap = self.stats.oldest_gap()
        before = (self.stats.view(), gap)
        n = len(self.requests)
        self.backfill.run_once(block=False)
        self.rest.spoil = None
        self._sync()
        made = self.requests[n:]
        if made and (self.stats.view(), self.stats.oldest_gap()) == before:
            self.stuck.append(made[-1])
            assert self.stuck.count(made[-1]) < 3, f"the same request again, no progress: {made}"
        elif made:
            self.stuck.clear()

    def _checkable(self, gap: Gap) -> bool:
        """Whether the next page for ``gap`` is compared with a price we have: the trade just
        below the gap (the first page starts with it), or the row a cursor continues from."""
        hint = self.backfill._hints.get(SYM)
        return gap.price_before is not None or (
            hint is not None and hint.lo == gap.lo and type(hint).__name__ == "Cursor"
        )

    # -- the history import --------------------------------------------------------------------

    @precondition(lambda self: self.history and self.stats.ids.origin is None)
    @rule()
    def start_history(self) -> None:
        """The importer learns the symbol's first trade (aggTrades fromId=0)."""
        first = self.market.aggs[0]
        self.stats.start_history(first.first_id, first.time_ms)
        self.importer.request([SYM])

    def _reduce(self, lo_agg: int, hi_agg: int, cut: int = 0, top: int = 1 << 62) -> Any:
        """A file of aggregates lo_agg..hi_agg reduced as the pool does, counting ids cut..top."""
        counts: Counter[int] = Counter()
        first = last = None
        for a in self.market.aggs[lo_agg : hi_agg + 1]:
            f, lt = max(a.first_id, cut), min(a.last_id, top)
            if f <= lt:
                counts[a.price] += lt - f + 1
                first = f if first is None else first
                last = (lt, a)
        if first is None or last is None:
            return None
        levels = sorted(counts)
        return first, last[0], levels, [counts[p] for p in levels], last[1]

    @precondition(lambda self: self.stats.ids.front is not None and not self.damaged)
    @rule(data=st.data(), during=st.sampled_from(["none", "rows", "trade", "snapshot",
                                                  "backfill", "raise"]))  # fmt: skip
    def archive_file(self, data: st.DataObject, during: str) -> None:
        """A file of the front's archives arrives, reduced for the front as it was when it was
        asked for (possibly long ago), and goes through the importer's decision."""
        front = self.stats.ids.front
        assert front is not None
        bottom = self.market.agg_of[front.lo]
        lo = data.draw(st.integers(max(0, bottom - 3), self.market.agg_of[front.hi]))
        hi = data.draw(st.integers(lo, min(lo + 8, self.pub - 1)))
        if hi < lo:
            return
        asked = data.draw(st.integers(ORIGIN, front.lo))  # the front's bottom when asked
        top = data.draw(st.sampled_from([front.hi, 1 << 62]))  # cut at its top, or not
        reduced = self._reduce(lo, hi, asked, top)
        for _ in range(4):  # the importer's loop over one file
            if reduced is None:
                return  # nothing of the front in it: "empty", left alone
            first, last, levels, counts, row = reduced
            decision = decide_file(self.stats.ids.front, first, last)
            if isinstance(decision, Skip):
                return
            if isinstance(decision, FillFirst):
                self.importer._rest_until(SYM, self.stats, None, decision.stop)
                self._sync()
                continue
            if isinstance(decision, Recut):
                reduced = self._reduce(lo, hi, decision.lo, decision.hi)
                continue
            assert isinstance(decision, Apply)
            self._merge(first, last, levels, counts, row, during)
            return
        raise AssertionError("the importer's decision does not converge on one file")

    def _merge(self, first: int, last: int, levels: list[int], counts: list[int], row: AggTrade,
               during: str) -> None:  # fmt: skip
        if during != "none":  # another event (or an error) between the first two pieces
            self.stats.hook = lambda: self._during_merge(during)
        self.merging = True
        try:
            n = self.stats.apply_levels(first, last, levels, counts, row.time_ms,
                                        last_price=row.price, piece=1)  # fmt: skip
        except RuntimeError:
            assert during == "raise"
            self.damaged = True
            assert self.stats.damaged and self.stats.harvest() is None, "a broken merge stored"
            return
        finally:
            self.merging = False
            self.stats.hook = None
        assert n == last - first + 1, "a file at the front's bottom was not applied"
        self._sync()

    def _during_merge(self, what: str) -> None:
        if what == "raise":
            raise RuntimeError("the merge breaks off")
        if what == "rows":  # an aggregate covering the front's bottom arrives meanwhile
            fr = self.stats.ids.front
            assert fr is not None
            a = self.market.aggs[self.market.agg_of[fr.lo]]
            self.stats.apply_rows([Row(a.first_id, a.last_id, a.price, a.time_ms)])
        elif what == "trade":
            self._trade(self.deliver - 1)
        elif what == "snapshot":
            self._snapshot()
        else:
            self.backfill_step(None)

    @precondition(lambda self: self.stats.ids.front is not None and not self.damaged)
    @rule(data=st.data())
    def rest_front(self, data: st.DataObject) -> None:
        """REST pages of history fill the front's bottom up to some trade."""
        front = self.stats.ids.front
        assert front is not None
        self.importer._rest_until(SYM, self.stats, None, data.draw(st.integers(front.lo, front.hi)))
        self._sync()

    # -- snapshots, crashes, restarts ----------------------------------------------------------

    @rule()
    def snapshot(self) -> None:
        self._snapshot()

    def _snapshot(self) -> None:
        stored = not self.merging and not self.damaged and self.stats.ids.claimed is None
        assert Snapshotter(self.store, lambda: [self.stats], 1.0).snapshot()
        if stored:
            self.saved = set(self.applied)

    @rule()
    def crash_and_restart(self) -> None:
        """SIGKILL: memory is gone; the next process restores the last snapshot, and its
        stream resumes with the market as it is now (what traded meanwhile was missed)."""
        (state,) = self.store.load()
        self.applied = set(self.saved)
        self.damaged = False
        self.stuck.clear()  # the work since the snapshot is gone: asking again is progress
        self.deliver = self.top() + 1
        self._process(Probed.restore(state))
        self._sync()

    # -- liveness -------------------------------------------------------------------------------

    @precondition(lambda self: not self.damaged and self.stats.view() != self.settled)
    @rule()
    def settle(self) -> None:
        """The market pauses: a sweep, then the backfill and the importer run until they
        stop. Every trade of the range must be counted, exactly."""
        self.reconnect_sweep()
        for _ in range(400):
            if not self.stats.missing():
                break
            self.now += 61
            self.backfill.run_once(block=False)
            self._sync()
        assert not self.stats.missing(), f"the backfill left gaps: {self.stats.ids.gaps}"
        front = self.stats.ids.front
        if front is not None:
            assert self.importer._rest_until(SYM, self.stats, None, front.hi)
            self._sync()
        ids = self.stats.ids
        assert ids.lowest is not None and ids.highest is not None
        assert ids.highest == self.top() and ids.lost == 0
        assert self.applied == set(range(ids.lowest, ids.highest + 1))
        if self.history and ids.origin is not None:
            assert ids.history_complete and ids.lowest == ORIGIN
        self.settled = self.stats.view()

    # -- what must hold after every step -------------------------------------------------------

    def _sync(self) -> None:
        """The ids the REST paths applied: what the bookkeeping counts now. Never fewer than
        before (nothing applied is forgotten)."""
        ids = self.stats.ids
        if ids.lowest is None or ids.highest is None or self.damaged:
            return
        missing = {i for g in ids.gaps for i in range(g.lo, g.hi + 1)}
        front = set() if ids.front is None else set(range(ids.front.lo, ids.front.hi + 1))
        counted = set(range(ids.lowest, ids.highest + 1)) - missing - front
        assert counted >= self.applied, f"applied ids forgotten: {sorted(self.applied - counted)}"
        self.applied = counted

    @invariant()
    def exact(self) -> None:
        if not hasattr(self, "stats") or self.damaged:
            return
        self.stats._check()
        v = self.stats.view()
        assert v.count == len(self.applied), f"count {v.count} for {len(self.applied)} ids"
        if self.applied:
            want = 2 * statistics.median([Fraction(self.market.price[i]) for i in self.applied])
            assert v.twice_median == want, "median"
            assert v.last_trade_id == max(self.applied)
            assert v.last_price == self.market.price[max(self.applied)]
        assert self.stats.ids.lost == 0, "a trade lost though the exchange is honest"
        rejected = sum(self.backfill.stats.rejected.values())
        refused = sum(self.importer.stats.refused.values())
        assert rejected + refused <= self.rest.spoiled, "an honest page refused"

    @invariant()
    def served(self) -> None:
        if not hasattr(self, "stats"):
            return
        if self.stats.missing():
            assert self.backfill.queued(SYM), "gaps that nothing will fill"
        if self.stats.front() is not None:
            assert self.importer.queued(SYM), "history to import that nothing will import"


ExactlyOnce.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestExactlyOnce = ExactlyOnce.TestCase


@pytest.mark.slow
def test_exactly_once_long() -> None:
    """The same machine, many more and longer interleavings."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        ExactlyOnce,
        settings=settings(max_examples=2000, stateful_step_count=80, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )  # fmt: skip


def test_a_page_below_the_gap_moves_on() -> None:
    """Finding 2: a page by time that ends below the gap (a thousand aggregates in the
    millisecond before it) continues from its last row instead of asking it again."""
    from medianserv.paging import Cursor, next_hint

    gap = Gap(50, 60, after_ms=7, before_ms=9)
    page = [AggTrade(i, 20 + i, 20 + i, 5, 7) for i in range(10)]  # ids 20..29, all below
    hint = next_hint(page, gap)
    assert hint == Cursor(50, page[-1])
    assert plan(gap, hint) == Request("aggTrades", from_id=9)  # not the same window again
