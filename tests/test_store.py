"""The LMDB store and the snapshotter, on real LMDB in a temporary directory."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medianserv import store as store_module
from medianserv import symbols as symbols_module
from medianserv.bench.scale import _as_format_6
from medianserv.median import CRunningMedian
from medianserv.snapshotter import Snapshotter
from medianserv.store import FORMAT_VERSION, Store, StoreError, decode_record, encode_record
from medianserv.symbols import Front, Gap, Row, SymbolState, SymbolStats, TradeIds

opt_int = st.none() | st.integers(0, 2**62)
gaps = st.builds(Gap, *[st.integers(0, 2**40)] * 2, *[opt_int] * 4)
trade_ids = st.builds(
    TradeIds,
    lowest=st.none() | st.integers(0, 2**62),
    highest=st.none() | st.integers(0, 2**62),
    gaps=st.lists(gaps, max_size=5),
    lost=st.integers(0, 2**40),
    quiet=st.booleans(),
    after_highest_ms=st.none() | st.integers(0, 2**62),
    highest_price=st.none() | st.integers(0, 2**63),
    quiet_since_ms=st.none() | st.integers(0, 2**62),
    front=st.none() | st.builds(Front, *[st.integers(0, 2**40)] * 2, *[opt_int] * 4),
    origin=st.none() | st.integers(0, 2**40),
    lowest_after_ms=st.none() | st.integers(0, 2**62),
)
states = st.builds(
    SymbolState,
    symbol=st.text(min_size=1, max_size=20),
    count=st.integers(0, 2**62),
    last_trade_id=st.integers(-1, 2**62),
    last_price=st.none() | st.integers(0, 2**63),
    last_trade_time=st.none() | st.integers(0, 2**62),
    ids=trade_ids,
    levels=st.just([]),
)


@given(states)
def test_record_round_trip(state: SymbolState) -> None:
    assert decode_record(state.symbol, encode_record(state)) == state


def views(stats: list[SymbolStats]) -> dict[str, object]:
    return {s.symbol: (s.view(), s.full_state()) for s in stats}


def feed(
    stats: list[SymbolStats], n: int, rnd: random.Random, next_id: dict[str, int]
) -> set[tuple[str, int]]:
    """n trades of the symbols, at random prices: the (symbol, price) levels they changed."""
    changed = set()
    for _ in range(n):
        s = rnd.choice(stats)
        tid = next_id[s.symbol] = next_id.get(s.symbol, 1000) + rnd.choice((1, 1, 1, 3))
        price = rnd.randrange(100, 140) * 10**6
        s.apply(tid, price, tid)
        changed.add((s.symbol, price))
    return changed


def test_incremental_snapshots_restore_exactly(tmp_path: Path) -> None:
    rnd = random.Random(4)
    stats = [SymbolStats(name) for name in ("BTCUSDT", "ETHUSDT", "币安人生USDT", "QUIETUSDT")]
    stats[3].baseline(-1)
    ids: dict[str, int] = {}
    store = Store.open(tmp_path)
    snap = Snapshotter(store, lambda: stats, 1.0, lambda: tuple(s.symbol for s in stats))
    for _ in range(5):
        changed = feed(stats[:3], 2000, rnd, ids)
        assert snap.snapshot()
        # incremental: only what changed is written, each level once
        assert snap.stats.last_levels == len(changed) <= 3 * 40
    gap = stats[0].oldest_gap()
    assert gap is not None
    stats[0].give_up(gap.lo, gap.hi)
    assert snap.snapshot() and snap.stats.last_symbols == 1 and snap.stats.last_levels == 0
    assert snap.snapshot() and snap.stats.last_symbols == 0  # nothing changed
    store.close()

    store = Store.open(tmp_path)
    restored = [SymbolStats.restore(s) for s in store.load()]
    assert store.load_listing() == [s.symbol for s in stats]
    assert views(restored) == views(stats)
    for r in restored:
        r.median._check()
    info = store.info()
    assert info["symbols"] == 4 and info["trades"] == sum(s.view().count for s in stats)
    assert info["format_version"] == FORMAT_VERSION and info["snapshots"] == 7
    store.close()


def test_failed_snapshot_keeps_changes_until_a_later_one_succeeds(tmp_path: Path) -> None:
    stats = [SymbolStats("BTCUSDT")]
    Store.open(tmp_path).close()
    readonly = Store.open(tmp_path, readonly=True)  # every write fails, as on a full disk
    snap = Snapshotter(readonly, lambda: stats, 1.0)
    stats[0].apply(1, 5, 1)
    assert not snap.snapshot()
    stats[0].apply(2, 7, 2)
    assert not snap.snapshot()
    assert snap.stats.failures == 2 and snap.stats.pending_symbols == 1
    readonly.close()
    snap.store = Store.open(tmp_path)
    assert snap.snapshot()
    restored = SymbolStats.restore(snap.store.load()[0])
    assert restored.full_state() == stats[0].full_state()
    snap.store.close()


def test_map_grows_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "INITIAL_MAP_SIZE", 1 << 16)
    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    for i in range(20_000):
        stats.apply(i, i, i)  # 20,000 distinct levels: far more than 64 KB
    store.save([stats.harvest()])  # type: ignore[list-item]
    assert store.env.info()["map_size"] > 1 << 16
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()


def test_the_map_grows_while_readers_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LMDB replaces its map only when no transaction of the process is open: a snapshot
    that grows the map waits for the reads under way (the API's candle queries; the counts
    ``snapshot info`` reads) and holds new ones back meanwhile, so none of them fails
    (without the gate, a read under way when the map is replaced fails: "Attempt to operate
    on closed/deleted/dropped object"), and each sees a whole snapshot (the trades never go
    back)."""
    monkeypatch.setattr(store_module, "INITIAL_MAP_SIZE", 1 << 16)
    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    stats.apply(0, 1, 0)
    store.save([stats.harvest()])  # type: ignore[list-item]
    done = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def read() -> None:
        seen = 0
        while not done.is_set():
            try:
                store.candles("BTCUSDT", 0, 0, 2**62, 1_000, True)
                trades = store.info()["trades"]
                assert trades >= seen, f"{trades} trades after {seen}"
                seen = trades
                reads[0] += 1
            except BaseException as exc:  # reported below
                failures.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    sizes = {store.env.info()["map_size"]}
    try:
        for i in range(1, 40_001):
            stats.apply(i, i * 10**12, i)  # 7 bytes a level stored
            if i % 500 == 0:
                store.save([stats.harvest()])  # type: ignore[list-item]
                sizes.add(store.env.info()["map_size"])
    finally:
        done.set()
        reader.join(60)
    assert not failures, failures[0]
    assert len(sizes) >= 5 and reads[0] > 0  # the map grew four times or more, while read
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()


def test_the_map_grows_ahead_of_a_store_that_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that grows snapshot by snapshot has its map doubled before a write that could
    fill it, not after a full map aborted the write: each snapshot is written once, while
    the map grows from 1 MiB to 4 MiB or more."""
    monkeypatch.setattr(store_module, "INITIAL_MAP_SIZE", 1 << 20)
    writes = [0]

    class Counted(Store):
        def _write(self, *args: Any) -> tuple[int, int]:
            writes[0] += 1
            return super()._write(*args)

    store = Counted.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    saves = 0
    for i in range(200_000):
        stats.apply(i, i * 10**13, i)  # 8 bytes a level stored
        if i % 2_000 == 1_999:
            store.save([stats.harvest()])  # type: ignore[list-item]
            saves += 1
    assert store.env.info()["map_size"] >= 4 << 20
    assert writes[0] == saves
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()


def test_format_1_is_read_and_upgraded(tmp_path: Path) -> None:
    """A store written by the previous release opens, read-only as it is, writable upgraded."""
    import msgspec

    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    for t, p in ((1, 5), (2, 7), (5, 9)):  # a gap at 3..4
        stats.apply(t, p, t)
    store.save([stats.full_state()])
    v1 = msgspec.msgpack.encode([3, 5, 9, 5, 1, 5, [[3, 4]], 0, False])
    with store.env.begin(write=True) as txn:
        txn.put(b"BTCUSDT", v1, db=store._symbols)
        txn.put(b"format", b"1", db=store._meta)
    store.close()
    readonly = Store.open(tmp_path, readonly=True)
    assert readonly.info()["format_version"] == 1 and readonly.info()["trades"] == 3
    old = readonly.load()[0]
    readonly.close()
    assert (old.count, [(g.lo, g.hi) for g in old.ids.gaps], old.ids.after_highest_ms) == (
        3,
        [(3, 4)],
        None,
    )
    store = Store.open(tmp_path)
    assert store.info()["format_version"] == FORMAT_VERSION == 7
    restored = SymbolStats.restore(store.load()[0])
    # format 1 did not keep when a symbol's first trade happened: everything else is there
    assert restored.view() == dataclasses.replace(stats.view(), first_trade_time=None)
    assert restored.apply_rows([Row(3, 4, 6, 4)]) == 2  # the old gap still fills
    assert restored.view().count == 5 and restored.view().missing == 0
    store.close()


def test_future_version_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    with store.env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=store._meta)
    store.close()
    with pytest.raises(StoreError, match="format"):
        Store.open(tmp_path)
    Store.open(tmp_path, reset=True).close()  # a deliberate reset starts afresh


def test_corrupt_record_and_inconsistent_levels_are_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    stats.apply(1, 5, 1)
    store.save([stats.harvest()])  # type: ignore[list-item]
    with store.env.begin(write=True) as txn:
        txn.put(b"BTCUSDT", b"\xc1garbage", db=store._symbols)
    with pytest.raises(StoreError, match="corrupt"):
        store.load()
    stats.dirty = True
    store.save([stats.full_state()])
    with store.env.begin(write=True) as txn:
        (key,) = list(txn.cursor(db=store._batches).iternext(values=False))
        one = np.array([5], np.uint64), np.array([2], np.int64)  # a count the record lacks
        txn.put(bytes(key), store_module.encode_batch(*one), db=store._batches)
    with pytest.raises(StoreError, match="add up"):
        store.load()
    for value in (b"\x05", store_module.encode_batch(np.array([5, 6], np.uint64),
                                                     np.array([1, 1], np.int64))):  # fmt: skip
        with store.env.begin(write=True) as txn:  # cut short; more levels than its key says
            txn.put(bytes(key), value, db=store._batches)
        with pytest.raises(StoreError, match="corrupt batch"):
            store.load()
    store.close()


@pytest.mark.parametrize("compiled", [False] + ([True] if CRunningMedian is not None else []))
def test_a_symbols_batches_are_merged_at_load_later_counts_over_earlier(
    tmp_path: Path, compiled: bool
) -> None:
    """Snapshots whose levels overlap leave a symbol several batches (each under half the
    one before); a restore merges them as stored, with either twin: every level at its
    latest count, as a brute-force count of the trades has it. A batch inside the merge
    that holds as many levels as its key says but not in order is refused."""
    symbols_module.use_compiled(compiled)
    try:
        stats, store, rng = SymbolStats("BTCUSDT"), Store.open(tmp_path), random.Random(7)
        truth: Counter[int] = Counter()
        t = 0
        for size in (400, 100, 20, 5, 1):
            for _ in range(size):
                price = rng.randrange(1, 600) * 10
                stats.apply(t, price, t)
                truth[price] += 1
                t += 1
            store.save([stats.harvest()])  # type: ignore[list-item]
        with store.env.begin() as txn:
            keys = [bytes(k) for k in txn.cursor(db=store._batches).iternext(values=False)]
        assert len(keys) == 5
        (state,) = store.load()
        levels = zip(state.levels.prices.tolist(), state.levels.counts.tolist(), strict=True)
        assert dict(levels) == truth
        assert SymbolStats.restore(state).full_state() == stats.full_state()
        n = int.from_bytes(keys[-2][-8:], "big")  # the batch before the newest: out of order
        falling = np.arange(n, 0, -1, dtype=np.uint64) * 10
        with store.env.begin(write=True) as txn:
            txn.put(keys[-2], store_module.encode_batch(falling, np.ones(n, np.int64)),
                    db=store._batches)  # fmt: skip
        with pytest.raises(StoreError, match="corrupt batch"):
            store.load()
        store.close()
    finally:
        symbols_module.use_compiled(CRunningMedian is not None)


def test_truncated_store_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    for i in range(5000):
        stats.apply(i, i, i)
    store.save([stats.harvest()])  # type: ignore[list-item]
    store.close()
    data = tmp_path / "medianserv.lmdb" / "data.mdb"
    data.write_bytes(data.read_bytes()[:8192])
    with pytest.raises(StoreError):
        s = Store.open(tmp_path)
        try:
            s.load()
        finally:
            s.close()


def test_lmdb_error_type_is_what_the_snapshotter_catches() -> None:
    assert issubclass(lmdb.ReadonlyError, lmdb.Error)


@pytest.mark.parametrize("order", ["live-file-live", "file-live-file", "files-only"])
@pytest.mark.parametrize("snapshot_after", [None, 0, 1])
def test_a_snapshot_stores_each_level_at_its_count_at_the_harvest(
    tmp_path: Path, order: str, snapshot_after: int | None
) -> None:
    """A harvest hands over the log of what changed, each level with its count then, in the
    order of the changes (trades' levels, a file's pieces): a level changed by trades and by a
    file, in either order, is stored at its last count, and the store restores exactly."""
    stats = SymbolStats("BTCUSDT")
    stats.baseline(999, 1)
    stats.start_history(0, 0)  # ids 0..999 are the front: files of 100 trades
    lo, tid = 0, 1000

    def file(prices: list[int]) -> None:
        nonlocal lo
        counts = [100 // len(prices)] * len(prices)
        counts[-1] += 100 - sum(counts)
        assert stats.apply_levels(lo, lo + 99, prices, counts, 5, last_price=prices[-1],
                                  piece=2) == 100  # fmt: skip
        lo += 100

    def live(prices: list[int]) -> None:
        nonlocal tid
        for p in prices:
            stats.apply(tid, p, 10)
            tid += 1

    store = Store.open(tmp_path)
    steps = {"live-file-live": [live, file, live], "file-live-file": [file, live, file],
             "files-only": [file, file, file]}[order]  # fmt: skip
    for k, step in enumerate(steps):
        step([500, 600, 700 + k, 800])  # 500 and 600 every time, in every kind of step
        if k == snapshot_after:
            store.save([stats.harvest()])  # type: ignore[list-item]
    state = stats.harvest()
    assert state is not None
    final = state.levels.final()  # type: ignore[union-attr]
    assert all(final[p] == stats.median.multiplicity(p) for p in final)
    store.save([state])
    restored = SymbolStats.restore(store.load()[0])
    restored._check()
    assert restored.full_state() == stats.full_state()
    assert restored.view() == stats.view()
    store.close()


_parts = st.lists(
    st.dictionaries(st.integers(0, 2**64 - 1) | st.integers(0, 40), st.integers(1, 2**62),
                    max_size=30),
    max_size=6,
)  # fmt: skip


@given(_parts)
def test_latest_levels_is_each_price_at_its_latest_count(parts: list[dict[int, int]]) -> None:
    """Parts older first, each in any order: one ascending part, a price at the count of the
    latest part that holds it (the oracle: writing the parts over one another in a dict)."""
    oracle: dict[int, int] = {}
    for part in parts:
        oracle.update(part)
    arrays = [(np.array(list(p), np.uint64), np.array(list(p.values()), np.int64))
              for p in parts]  # fmt: skip
    prices, counts = store_module.latest_levels(arrays)
    assert list(zip(prices.tolist(), counts.tolist(), strict=True)) == sorted(oracle.items())
    value = store_module.encode_batch(prices, counts)
    back = store_module.decode_batch(value)
    assert back[0].tolist() == prices.tolist() and back[1].tolist() == counts.tolist()


def test_a_snapshot_writes_a_few_items_a_symbol_and_batches_stay_few(tmp_path: Path) -> None:
    """However many levels a snapshot changes, a symbol's are one batch, merged with its
    newest ones while these are at most twice as large: after 200 snapshots of new and
    revisited levels a symbol holds O(log levels) batches, and the store restores exactly."""
    rnd = random.Random(7)
    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    tid = 0
    for snap in range(200):
        for _ in range(rnd.choice((1, 50, 500))):
            tid += 1
            price = rnd.randrange(10**6) if rnd.random() < 0.5 else 10**6 + tid  # new or old
            stats.apply(tid, price, tid)
        store.save([stats.harvest()])  # type: ignore[list-item]
        levels = stats.median.levels
        batches = store.info()["level_batches"]
        assert 1 <= batches <= levels.bit_length() + 1, (snap, batches, levels)
        with store.env.begin() as txn:  # no key a level: the batches hold them all
            assert txn.stat(store._levels)["entries"] == 0
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()
    store = Store.open(tmp_path)  # its batches read from the store, not from memory
    stats.apply(tid + 1, 5, tid + 1)
    store.save([stats.harvest()])  # type: ignore[list-item]
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()


def test_levels_of_format_6_are_folded_into_a_batch_beneath_later_ones(tmp_path: Path) -> None:
    """A store of format 6 holds its levels one by one in ``levels``. Opened read-only it is
    read as it is; opened for writing it is format 7, its levels moved into one batch of
    each symbol, numbered 0 (``levels`` emptied in the same transaction), and the levels
    later snapshots change are read over them: each level at its latest count."""
    stats = SymbolStats("BTCUSDT")
    for t, p in enumerate((5, 7, 7, 9), start=1):
        stats.apply(t, p, t)
    store = Store.open(tmp_path)
    store.save([stats.full_state()])
    store.close()
    assert _as_format_6(str(tmp_path))["levels"] == 3  # 5, 7 (twice) and 9, a key each
    old = Store.open(tmp_path, readonly=True)
    assert old.version == 6 and old.info()["levels"] == 3
    assert SymbolStats.restore(old.load()[0]).full_state() == stats.full_state()
    old.close()
    store = Store.open(tmp_path)
    assert store.version == 7
    with store.env.begin() as txn:
        assert txn.stat(store._levels)["entries"] == 0
        keys = [bytes(k) for k, _ in txn.cursor(db=store._batches)]
    assert keys == [store_module.batch_key("BTCUSDT", 0, 3)]
    restored = SymbolStats.restore(store.load()[0])
    assert restored.full_state() == stats.full_state()
    for t, p in ((5, 7), (6, 11)):  # 7 again (its count over the stored one), 11 new
        restored.apply(t, p, t)
        stats.apply(t, p, t)
    store.save([restored.harvest()])  # type: ignore[list-item]
    assert store.info()["levels"] == 4  # 5, 7, 9, 11: the snapshot's merged with the folded
    again = SymbolStats.restore(store.load()[0])
    assert again.full_state() == stats.full_state()
    assert again.median.multiplicity(7) == 3
    store.close()
    store = Store.open(tmp_path)  # as it was left: nothing more to fold
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()


def _wide_format_6(tmp_path: Path) -> SymbolStats:
    """A store at ``tmp_path`` of one symbol's 20,000 levels, a key each as format 6 kept
    them (closed); the symbol's statistics."""
    stats = SymbolStats("BTCUSDT")
    for t in range(20_000):
        stats.apply(t, 10**6 + 7 * t, t)
    store = Store.open(tmp_path)
    store.save([stats.full_state()])
    store.close()
    _as_format_6(str(tmp_path))
    return stats


def test_a_fold_that_fills_the_map_grows_it(tmp_path: Path, monkeypatch: Any) -> None:
    """The batches a fold writes need pages before those of the levels' keys are freed: a
    store whose map its levels fill is grown and the fold tried again, not refused."""
    stats = _wide_format_6(tmp_path)
    size = (tmp_path / "medianserv.lmdb" / "data.mdb").stat().st_size
    monkeypatch.setattr(store_module, "INITIAL_MAP_SIZE", 1 << 16)  # LMDB takes the file's
    store = Store.open(tmp_path)
    assert store.env.info()["map_size"] > size
    with store.env.begin() as txn:
        assert txn.stat(store._levels)["entries"] == 0
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    store.close()


def test_levels_left_beneath_batches_by_an_earlier_upgrade_are_folded_beneath_them(
    tmp_path: Path,
) -> None:
    """A store upgraded to format 7 before levels were folded holds both: levels one by one
    in ``levels`` and, over them, the batches of the snapshots since. Opened for writing,
    the old levels go into a batch below every snapshot's, so a level a later batch holds
    keeps that batch's count, whatever its old key says; a symbol whose levels are all old
    gets its batch too, and the store restores exactly."""
    rnd = random.Random(3)
    books = [SymbolStats("BTCUSDT"), SymbolStats("ETHUSDT")]
    for t in range(1, 201):
        books[t % 2].apply(t // 2, rnd.randrange(20), t)
    store = Store.open(tmp_path)
    store.save([b.harvest() for b in books])  # type: ignore[misc]
    old = 0
    with store.env.begin(write=True) as txn:  # its levels a key each, as format 6 left them
        txn.drop(store._batches, delete=False)
        for book in books:
            for price, count in book.full_state().levels:
                txn.put(store_module.level_key(book.symbol, price), count.to_bytes(8, "big"),
                        db=store._levels)  # fmt: skip
                old += 1
    store._held.clear()  # (what the batches dropped held)
    for t in range(201, 301):  # BTCUSDT's later trades, old levels among them
        books[0].apply(t, rnd.randrange(30), t)
    store.save([books[0].harvest()])  # type: ignore[list-item]
    with store.env.begin() as txn:
        assert txn.stat(store._levels)["entries"] == old
        newer = [bytes(k) for k, _ in txn.cursor(db=store._batches)]
    assert len(newer) == 1 and newer[0].startswith(store_module.symbol_prefix("BTCUSDT"))
    store.close()
    reader = Store.open(tmp_path, readonly=True)  # read as it is: the batch over the keys
    unfolded = {s.symbol: SymbolStats.restore(s).full_state() for s in reader.load()}
    assert unfolded == {b.symbol: b.full_state() for b in books}
    reader.close()
    store = Store.open(tmp_path)
    with store.env.begin() as txn:
        assert txn.stat(store._levels)["entries"] == 0
        keys = [bytes(k) for k, _ in txn.cursor(db=store._batches)]
    seqs: dict[bytes, list[int]] = {k[:-16]: [] for k in keys}
    for k in keys:  # prefix | snapshot number | levels
        seqs[k[:-16]].append(int.from_bytes(k[-16:-8], "big"))
    later = int.from_bytes(newer[0][-16:-8], "big")
    prefix = store_module.symbol_prefix
    assert seqs == {prefix("BTCUSDT"): [0, later], prefix("ETHUSDT"): [0]}
    restored = {s.symbol: SymbolStats.restore(s).full_state() for s in store.load()}
    assert restored == {b.symbol: b.full_state() for b in books}
    store.close()


def _merge_twins() -> list[Any]:
    twins = [store_module.py_merge_levels]
    try:
        from medianserv._native import merge_levels  # type: ignore[attr-defined]
    except ImportError:
        return twins
    return [*twins, merge_levels]


@pytest.mark.parametrize("merge", _merge_twins())
@given(_parts, st.booleans())
def test_merge_levels_twins_agree_with_the_oracle(
    merge: Any, parts: list[dict[int, int]], native: bool
) -> None:
    """Batches merged older first, the newer compact or native arrays: each price at its
    latest count, compact byte for byte as compact_levels makes it, with the right count."""
    from medianserv.candles import compact_levels

    value, n, oracle = b"", 0, {}
    for part in parts:
        items = sorted(part.items())
        prices = np.array([p for p, _ in items], np.uint64)
        counts = np.array([c for _, c in items], np.int64)
        if native:
            value, n = merge(value, prices.tobytes(), counts.tobytes())
        else:
            newer = compact_levels(prices.astype(">u8").tobytes(), counts.astype(">u8").tobytes())
            value, n = merge(value, newer)
        oracle.update(part)
    want = sorted(oracle.items())
    be = [np.array([x[i] for x in want], np.uint64).astype(">u8").tobytes() for i in (0, 1)]
    assert (value, n) == (compact_levels(*be), len(want))


@pytest.mark.parametrize("merge", _merge_twins())
def test_merge_levels_refuses_what_is_not_a_batch(merge: Any) -> None:
    from medianserv.candles import compact_levels

    def c(*levels: tuple[int, int]) -> bytes:
        return compact_levels(b"".join(p.to_bytes(8, "big") for p, _ in levels),
                              b"".join(k.to_bytes(8, "big") for _, k in levels))  # fmt: skip

    def native(*values: int, kind: str = "Q") -> bytes:
        return np.array(values, np.uint64 if kind == "Q" else np.int64).tobytes()

    for older, newer in ((c((5, 1), (5, 1)), b""), (c((6, 1), (5, 1)), b""), (b"\x05", b""),
                         (c((5, 0)), b""), (b"", c((2**64 - 1, 1), (3, 1))), (c((5, 2**63)), b""),
                         (b"", b"\x85")):  # fmt: skip
        with pytest.raises(ValueError):
            merge(older, newer)
    for prices, counts in ((native(6, 5), native(1, 1, kind="q")),
                           (native(5), native(0, kind="q")), (native(5), native(1, 1, kind="q")),
                           (b"\x00" * 7, b"\x00" * 7)):  # fmt: skip
        with pytest.raises(ValueError):
            merge(b"", prices, counts)
    assert merge(c((1, 2), (9, 1)), c((1, 5), (4, 1))) == (c((1, 5), (4, 1), (9, 1)), 3)


@pytest.mark.parametrize("merge", _merge_twins())
def test_merge_levels_of_a_large_batch(merge: Any) -> None:
    """Megabytes of levels (the compiled twin merges them with other threads let in): the
    same levels as the oracle's, every other price of the older in the newer too."""
    older_prices = np.arange(0, 600_000, 2, dtype=np.uint64) * 1_000
    newer_prices = np.arange(0, 600_000, 3, dtype=np.uint64) * 1_000
    older, n = merge(b"", older_prices.tobytes(), np.ones(len(older_prices), np.int64).tobytes())
    value, n = merge(older, newer_prices.tobytes(),
                     np.full(len(newer_prices), 7, np.int64).tobytes())  # fmt: skip
    prices, counts = store_module.decode_batch(value)
    want = dict.fromkeys(older_prices.tolist(), 1) | dict.fromkeys(newer_prices.tolist(), 7)
    assert n == len(want) and prices.tolist() == sorted(want)
    assert counts.tolist() == [want[p] for p in sorted(want)]


def _holding(tmp_path: Path, readonly: bool) -> subprocess.Popen[str]:
    """A process with the store at ``tmp_path`` open (for writing, or read-only), until
    killed; returned once it is open."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from medianserv.store import Store; "
         "s = Store.open(Path(sys.argv[1]), readonly=sys.argv[2] == '1'); "
         "print('open', flush=True); time.sleep(600)", str(tmp_path), str(int(readonly))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    if proc.stdout is None or proc.stdout.readline() != "open\n":
        proc.kill()  # (none left behind)
        proc.wait(60)
        raise AssertionError("the holder did not open the store")
    return proc


def test_one_writer_at_a_time_on_a_data_directory(tmp_path: Path) -> None:
    """A store open for writing holds its directory's writer lock: a second writer (``reset``
    too) is refused, naming the holder, and changes nothing; the lock is given back at
    close; a reader in another process opens beside the writer; and a killed holder's lock
    is gone with it."""
    stats = SymbolStats("BTCUSDT")
    for t, p in enumerate((5, 7, 7, 9), start=1):
        stats.apply(t, p, t)
    store = Store.open(tmp_path)
    store.save([stats.full_state()])
    for reset in (False, True):
        with pytest.raises(
            StoreError, match=f"in use by another medianserv \\(pid {os.getpid()}\\)"
        ):
            Store.open(tmp_path, reset=reset)
    store.close()
    again = Store.open(tmp_path)  # given back at close
    assert SymbolStats.restore(again.load()[0]).full_state() == stats.full_state()
    again.close()
    holder = _holding(tmp_path, readonly=False)
    try:
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            Store.open(tmp_path)
        reader = Store.open(tmp_path, readonly=True)  # beside the writer
        assert SymbolStats.restore(reader.load()[0]).full_state() == stats.full_state()
        reader.close()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(60)
    after = Store.open(tmp_path)  # a killed holder's lock is gone with it
    assert SymbolStats.restore(after.load()[0]).full_state() == stats.full_state()
    after.close()
    (tmp_path / "plain").write_text("")  # a data directory that cannot be: a clear StoreError
    with pytest.raises(StoreError, match="writer lock"):
        Store.open(tmp_path / "plain")


# a compaction in a process of its own that, at one of its steps (its `replace` of the data
# file or its `unlink` of the old lock file), SIGKILLs itself (`kill`) or waits until `go`
# exists beside the store (`pause`, having made `paused` there)
_COMPACT_STOPPING = """
import os, signal, sys, time
from pathlib import Path
from medianserv.store import Store
data_dir, step, action = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
real = {"replace": os.replace, "unlink": os.unlink}
def stopping(name):
    def call(*args, **kwargs):
        if name == step and str(args[-1]).endswith(("data.mdb", "lock.mdb")):
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            (data_dir / "paused").touch()
            deadline = time.monotonic() + 300
            while not (data_dir / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return real[name](*args, **kwargs)
    return call
os.replace, os.unlink = stopping("replace"), stopping("unlink")
Store.compact(data_dir)
"""


@pytest.mark.parametrize("step", ["replace", "unlink"])
def test_a_compaction_killed_at_any_step_leaves_the_store_whole(tmp_path: Path, step: str) -> None:
    """A compaction SIGKILLed with its copy written but not yet in place (``replace``), or in
    place with the old lock file not yet removed (``unlink``): the store restores the same,
    takes snapshots on and restores the same after them; the copy a crash left is removed
    at the next writable open, and a compaction after it works."""
    stats = _wide_format_6(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _COMPACT_STOPPING, str(tmp_path), step, "kill"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lmdb_dir, copy = tmp_path / "medianserv.lmdb", tmp_path / "medianserv.lmdb.compact"
    assert (lmdb_dir / "lock.mdb").exists()  # the dead process's
    assert (copy / "data.mdb").exists() == (step == "replace")
    store = Store.open(tmp_path)
    assert not copy.exists()
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    for t in range(20_000, 20_100):
        stats.apply(t, 10**6 + 3 * t, t)
        store.save([stats.harvest()])  # type: ignore[list-item]
    store.close()
    for _ in range(2):  # read back, then compacted and read back
        store = Store.open(tmp_path, readonly=True)
        assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
        store.close()
        Store.compact(tmp_path)


def test_compact_gives_back_the_pages_a_fold_freed(tmp_path: Path) -> None:
    """``medianserv snapshot compact`` rewrites the store's file without free pages: after a
    fold of 20,000 levels a key each it is smaller, restores the same, and takes
    snapshots on from where it was. Refused, the store untouched, while another process
    writes it or reads it."""
    stats = _wide_format_6(tmp_path)
    Store.open(tmp_path).close()  # folded: its keys' pages free in the file
    data = tmp_path / "medianserv.lmdb" / "data.mdb"
    for readonly, why in ((False, "in use by another medianserv"), (True, "has it open")):
        holder = _holding(tmp_path, readonly)
        try:
            with pytest.raises(StoreError, match=why):
                Store.compact(tmp_path)
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(60)
    size = data.stat().st_size
    out = subprocess.run(
        [sys.executable, "-m", "medianserv", "snapshot", "compact", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report == {"bytes_before": size, "bytes_after": data.stat().st_size}
    assert report["bytes_after"] < size / 2
    assert not (tmp_path / "medianserv.lmdb.compact").exists()
    store = Store.open(tmp_path)
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    for t in range(20_000, 20_100):  # snapshots go on over the new file
        stats.apply(t, 10**6 + 3 * t, t)
        store.save([stats.harvest()])  # type: ignore[list-item]
    store.close()
    store = Store.open(tmp_path, readonly=True)
    assert SymbolStats.restore(store.load()[0]).full_state() == stats.full_state()
    assert store.info()["snapshots"] == 1 + 100
    store.close()


# a reader in a process of its own: the store's statistics, as a restore has them
_READER = """
import pickle, sys
from pathlib import Path
from medianserv.store import Store
from medianserv.symbols import SymbolStats
print("opening", flush=True)
store = Store.open(Path(sys.argv[1]), readonly=True)
states = store.load()
store.close()
sys.stdout.buffer.write(pickle.dumps([SymbolStats.restore(s).full_state() for s in states]))
"""


def _blocked_on_a_lock(pid: int) -> bool:
    """Whether process ``pid`` waits for a file lock (a ``->`` line of /proc/locks)."""
    with open("/proc/locks") as f:
        return any(p[1] == "->" and p[5] == str(pid) for p in map(str.split, f) if len(p) > 5)


def test_a_reader_opening_while_a_compaction_swaps_files_reads_the_new_file_whole(
    tmp_path: Path,
) -> None:
    """A reader that opens the store at the one instant a compaction has put its copy in
    place but not yet removed the old lock file waits for the compaction, then reads the
    new file whole: it never pairs the new data file with the old lock file's transaction
    number (which would read an empty or a torn store)."""
    stats = _wide_format_6(tmp_path)
    Store.open(tmp_path).close()  # folded: the compaction has pages to give back
    compact = subprocess.Popen(
        [sys.executable, "-c", _COMPACT_STOPPING, str(tmp_path), "unlink", "pause"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    reader = None
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "paused").exists():
            assert compact.poll() is None and time.monotonic() < deadline, "no pause"
            time.sleep(0.01)
        reader = subprocess.Popen([sys.executable, "-c", _READER, str(tmp_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert reader.stdout is not None and reader.stdout.readline() == b"opening\n"
        while not _blocked_on_a_lock(reader.pid):  # (it waits while the compaction swaps)
            assert reader.poll() is None and time.monotonic() < deadline, "the reader never waited"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err
        assert compact.wait(300) == 0, compact.stderr.read() if compact.stderr else ""
        assert pickle.loads(out) == [stats.full_state()]
    finally:
        for proc in (compact, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(60)
