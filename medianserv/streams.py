"""Trade streams: the connection plan (pure) and one reader thread per WebSocket connection.

Theory of operation
-------------------
:func:`plan_connections` spreads N streams over ceil(N / cap) connections, keeping streams
where they already are so a listing change touches only the streams that changed.

A :class:`Reader` owns one *slot* of the plan. Its thread connects to ``/stream`` (no streams
in the URL: no URL-length limit to meet), then reconciles what the connection is subscribed to
with what the slot wants, in SUBSCRIBE/UNSUBSCRIBE frames under ``subscribe_batch_bytes``,
paced to at most ``control_messages_per_second`` in any 1.1-second window, below Binance's 5
incoming messages per second (our pongs count too). Each
change is confirmed with LIST_SUBSCRIPTIONS; what the server does not list is subscribed again.

Every frame is decoded (:mod:`.messages`), looked up in the current :class:`SymbolTable` and
applied with :meth:`SymbolStats.apply`, which is exactly-once by trade id, so a trade that
arrives twice (two connections during a rotation, a replay after a reconnect) counts once, and
a jump in ids opens a gap that the backfill fills over REST.

Failures (a dropped connection, a refused handshake, a silent connection that does not answer
a probe) end the connection; the thread reconnects with capped, jittered backoff, forever.
Before Binance's 24-hour limit, or when Binance announces ``serverShutdown``, the reader
rotates make-before-break: it opens and fully subscribes the replacement while still reading
the old connection, then closes the old one.

The reader owns its sockets (:class:`~medianserv.link.Link`, websockets' sans-I/O protocol):
each read takes everything the socket has, answers a ping at once, and then handles every
frame of the chunk in this one thread. No other thread, queue or hand-off stands between the
socket and the statistics; unread data waits in the kernel, so nothing is ever dropped.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from websockets.exceptions import WebSocketException

from .config import Config
from .errors import PriceError
from .hotpath import CTradePath, PyTradePath
from .link import READ_SIZE, Link, Payload
from .logs import RateLimitedLog, ThreadErrors
from .messages import Rejected, Reply, ServerShutdown, TradeEvent, decode
from .pacing import SlidingWindow, backoff
from .prices import PriceCache
from .symbols import APPLIED, DUPLICATE, GAP, SymbolTable

__all__ = [
    "AttemptGate",
    "Reader",
    "ReaderStats",
    "plan_connections",
    "stream_batches",
    "stream_of",
]

log = logging.getLogger(__name__)


def stream_of(symbol: str) -> str:
    """The trade stream name of a symbol: ``BTCUSDT`` -> ``btcusdt@trade``."""
    return symbol.lower() + "@trade"


def plan_connections(
    streams: Sequence[str], cap: int, current: Sequence[Iterable[str]] = ()
) -> list[set[str]]:
    """Assign ``streams`` to the fewest connections of at most ``cap`` streams. Pure. O(N).

    Streams keep the group they are in within ``current``; delisted ones leave; new ones fill
    the free room, lowest group first. If that leaves more groups than ceil(N / cap), the
    emptiest ones are drained into the others; empty groups are dropped.

    >>> [sorted(g) for g in plan_connections(["a", "b", "c"], 2)]
    [['a', 'b'], ['c']]
    >>> [sorted(g) for g in plan_connections(["a", "c", "d"], 2, [{"a", "b"}, {"c"}])]
    [['a', 'd'], ['c']]
    """
    wanted = dict.fromkeys(streams)
    need = math.ceil(len(wanted) / cap) if wanted else 0
    slots = [{s for s in group if s in wanted} for group in current]
    placed = set().union(*slots) if slots else set()
    while len([g for g in slots if g]) > need:  # drain the emptiest slot into the others
        victim = min((i for i, g in enumerate(slots) if g), key=lambda i: len(slots[i]))
        placed -= slots[victim]
        slots[victim] = set()
    slots = [g for g in slots if g]
    pending = [s for s in wanted if s not in placed]
    for group in slots:
        while pending and len(group) < cap:
            group.add(pending.pop(0))
    while pending:
        slots.append(set(pending[:cap]))
        del pending[:cap]
    return slots


def stream_batches(streams: Iterable[str], max_bytes: int) -> list[list[str]]:
    """Split streams into SUBSCRIBE parameter lists whose frames stay under ``max_bytes``.

    >>> stream_batches(["a@trade", "b@trade", "c@trade"], 80)
    [['a@trade', 'b@trade'], ['c@trade']]
    """
    overhead = len('{"method":"UNSUBSCRIBE","params":[],"id":1000000000}')
    batches: list[list[str]] = []
    current: list[str] = []
    size = overhead
    for s in sorted(streams):
        cost = len(json.dumps(s).encode()) + 1
        if current and size + cost > max_bytes:
            batches.append(current)
            current, size = [], overhead
        current.append(s)
        size += cost
    if current:
        batches.append(current)
    return batches


class AttemptGate:
    """Connection attempts shared by every reader: under Binance's 300 per 5 minutes."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()  # guards the window
        self._window = SlidingWindow(limit, window)
        self.clock = clock
        self.waits = 0  # attempts that had to wait for room

    def wait(self, stop: threading.Event) -> bool:
        """Block until an attempt is allowed; False if ``stop`` was set first."""
        while not stop.is_set():
            with self._lock:
                now = self.clock()
                if self._window.try_add(now):
                    return True
                delay = self._window.wait_time(now)
                self.waits += 1
            stop.wait(min(delay, 1.0))
        return False


class Ingestor(Protocol):
    """What a reader needs from its owner: the current table and a place to report gaps."""

    @property
    def table(self) -> SymbolTable: ...

    def gap_found(self, symbol: str) -> None: ...

    def resubscribed(self, streams: frozenset[str]) -> None: ...


class ReaderStats:
    """Counters of one reader. Written by its thread alone; read without a lock by /metrics."""

    def __init__(self) -> None:
        self.frames = 0
        self.applied = 0  # trades applied (new and late)
        self.duplicates = 0
        self.waited = 0  # frames the per-trade path left to the general path: their lock was held
        self.filled = 0  # trades applied inside a gap
        self.gaps = 0  # jumps in trade ids seen
        self.rejected: Counter[str] = Counter()  # by kind
        self.connects = 0
        self.reconnects = 0  # connections that ended in a failure
        self.rotations = 0
        self.shutdown_notices = 0
        self.probes = 0
        self.lag_ms = 0  # now - event time of the last trade
        self.connected = False
        self.ready = False  # connected and every wanted stream confirmed
        self.subscribed = 0


class Stalled(Exception):
    """A connection stopped answering (no reply to a probe, or subscriptions never confirmed)."""


class _Connection:
    """One WebSocket connection and its subscription bookkeeping (owned by one reader)."""

    def __init__(self, link: Link, now: float, rotate_at: float, rate: float):
        self.link = link
        self.handle: Callable[[list[Payload]], None] = lambda payloads: None  # see Reader._open
        self.opened = now
        self.rotate_at = rotate_at
        self.last_frame = now
        # Binance counts messages in any one-second window: a token bucket would allow twice
        # its rate in a burst; a sliding window (with margin for network jitter) cannot.
        self.pace = SlidingWindow(max(1, int(rate)), 1.1)
        self.subscribed: set[str] = set()  # acknowledged by the server
        self.pending: dict[int, tuple[str, list[str]]] = {}  # request id -> (method, streams)
        self.verified = False  # a LIST_SUBSCRIPTIONS matched since the last change
        self.probe_sent: float | None = None
        self.next_id = 0

    def close(self) -> None:
        self.link.close()


class Reader:
    """One connection slot: a thread that keeps ``streams`` subscribed and applies their trades.

    The owner sets the wanted streams with :meth:`set_streams` (an atomic swap the thread
    reconciles within a quarter second) and stops it with :meth:`stop`.
    """

    def __init__(
        self,
        slot: int,
        owner: Ingestor,
        config: Config,
        gate: AttemptGate,
        *,
        clock: Callable[[], float] = time.monotonic,
        rnd: random.Random | None = None,
        errors: ThreadErrors | None = None,
    ) -> None:
        self.slot = slot
        self.errors = errors or ThreadErrors(log)
        self.owner = owner
        self.config = config
        self.gate = gate
        self.clock = clock
        self.rnd = rnd or random.Random()
        self.stats = ReaderStats()
        self.wanted: frozenset[str] = frozenset()  # replaced whole by set_streams()
        self.stopping = threading.Event()  # set by stop(): the thread closes and exits
        self.thread: threading.Thread | None = None
        self._rotate_now = False  # set on serverShutdown
        self._rlog = RateLimitedLog(log)
        self._prices = PriceCache()  # the general path's parsed price texts
        # the per-trade path: the common trade frames of a chunk, straight from its bytes (in
        # C where it was built); what it leaves comes to _handle_all, in order
        compiled = config.compiled_trades() and CTradePath is not None
        self.path: Any = CTradePath() if compiled else PyTradePath()
        self._compiled = compiled

    # -- control, from the owner's thread ------------------------------------------------------

    def set_streams(self, streams: Iterable[str]) -> None:
        self.wanted = frozenset(streams)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=f"reader-{self.slot}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------------

    def run(self) -> None:
        """Connect, read, reconnect forever, with backoff; until :meth:`stop`. An unexpected
        exception (our own bug) is logged and counted like a failure of the connection."""
        delays = None
        while not self.stopping.is_set():
            started = self.clock()
            try:
                self._run_connection()
                continue
            except (OSError, WebSocketException, TimeoutError, Stalled) as exc:
                if self.stopping.is_set():
                    break  # closing on purpose: not a failure
                self.stats.reconnects += 1
                self._rlog.warning(
                    f"fail{self.slot}", "connection %d failed: %s: %s", self.slot,
                    type(exc).__name__, exc,
                )  # fmt: skip
            except Exception as exc:  # not the network's doing: a bug, counted, then reconnect
                if self.stopping.is_set():
                    break
                self.stats.reconnects += 1
                self.errors.record("reader", exc, f"reading connection {self.slot}")
            finally:
                self.stats.connected = self.stats.ready = False
            if delays is None or self.clock() - started > 2 * self.config.backoff_max:
                delays = backoff(self.config.backoff_initial, self.config.backoff_max, rnd=self.rnd)
            self.stopping.wait(next(delays))

    def _open(self) -> _Connection:
        if not self.gate.wait(self.stopping):
            raise Stalled("stopping")
        link = Link.open(
            self.config.ws_url.rstrip("/") + "/stream",
            timeout=10,
            max_size=2**20,
            close_timeout=2,
            user_agent=self.config.user_agent,
        )
        now = self.clock()
        self.stats.connects += 1
        cfg = self.config
        rotate_at = now + cfg.rotate_after + self.rnd.random() * cfg.rotate_jitter
        conn = _Connection(link, now, rotate_at, cfg.control_messages_per_second)
        conn.handle = lambda payloads: self._handle_all(payloads, conn)
        return conn

    def _read(self, conn: _Connection, timeout: float | None) -> bool:
        """Read what ``conn`` has (waiting up to ``timeout`` seconds) and apply it: the trade
        path takes the common trade frames, the rest comes to :meth:`_handle_all`, in order.
        True if any frame arrived. O(bytes read)."""
        stats, path = self.stats, self.path
        before = stats.frames
        if path is None:  # the general path alone (the reference the tests hold both to)
            conn.link.read(timeout, conn.handle)
            return stats.frames != before
        table = self.owner.table  # the table of this chunk (a listing swap is atomic)
        path.index = table.index if self._compiled else table.get
        conn.link.read(timeout, conn.handle, path)
        frames, applied, duplicates, busy, event_ms = path.take_counts()
        stats.waited += busy
        if frames:
            stats.frames += frames
            stats.applied += applied
            stats.duplicates += duplicates
            if event_ms >= 0:
                stats.lag_ms = int(time.time() * 1000) - event_ms
        return stats.frames != before

    def _run_connection(self) -> None:
        conn = self._open()
        self.stats.connected = True
        announced = False
        try:
            next_housekeeping = 0.0
            coalesce = self.config.read_coalesce
            while not self.stopping.is_set():
                arrived = self._read(conn, 0.25)
                now = self.clock()
                if arrived:
                    conn.last_frame = now
                    if coalesce and conn.link.last_read < READ_SIZE // 2:
                        time.sleep(coalesce)  # a short read: let the next frames gather
                if now >= next_housekeeping:
                    next_housekeeping = now + 0.25
                    self.stats.ready = self._reconcile(conn, now)
                    if self.stats.ready and not announced:
                        announced = True  # trades missed while we were away can be found now
                        self.owner.resubscribed(self.wanted)
                    conn = self._watchdog(conn, now)
        finally:
            conn.close()

    # -- frames ------------------------------------------------------------------------------------

    def _handle_all(self, payloads: list[Payload], conn: _Connection) -> None:
        """Apply frames the trade path left, in order: the general path (decode, one
        perfect-hash lookup, parse, apply under one lock), which handles every kind of frame
        and outcome (replies, notices, rejections, a jump in ids, a trade inside a gap)."""
        stats = self.stats
        get = self.owner.table.get  # the table of this chunk (a listing swap is atomic)
        prices = self._prices
        applied = duplicates = filled = 0
        event_ms = -1
        for raw in payloads:
            msg = decode(raw)
            if type(msg) is TradeEvent:
                symbol_stats = get(msg.s)
                if symbol_stats is None:
                    self._reject("unknown_symbol", msg.s)
                    continue
                try:
                    price = prices.units(msg.p)
                except PriceError:
                    self._reject("bad_price", f"{msg.s} {msg.p[:40]!r}")
                    continue
                outcome = symbol_stats.apply(msg.t, price, msg.T)
                if outcome is APPLIED:
                    applied += 1
                    event_ms = msg.E
                elif outcome is DUPLICATE:
                    duplicates += 1
                else:
                    applied += 1
                    event_ms = msg.E
                    if outcome is GAP:
                        stats.gaps += 1
                        self.owner.gap_found(msg.s)
                    else:
                        filled += 1
            elif type(msg) is Reply:
                self._on_reply(msg, conn)
            elif type(msg) is ServerShutdown:
                stats.shutdown_notices += 1
                self._rotate_now = True
                log.info("connection %d: Binance announced a shutdown; rotating", self.slot)
            elif type(msg) is Rejected:
                self._reject(msg.kind, str(bytes(raw[:80])))
        stats.frames += len(payloads)
        stats.applied += applied
        stats.duplicates += duplicates
        stats.filled += filled
        if event_ms >= 0:
            stats.lag_ms = int(time.time() * 1000) - event_ms

    def _reject(self, kind: str, detail: str) -> None:
        self.stats.rejected[kind] += 1
        self._rlog.warning(kind, "rejected frame (%s): %s", kind, detail)

    def _on_reply(self, reply: Reply, link: _Connection) -> None:
        request = link.pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        if request is None:
            return
        method, streams = request
        if reply.error is not None:
            self._rlog.warning(f"err{method}", "%s refused: %s", method, str(reply.error)[:200])
            return
        if method == "SUBSCRIBE":
            link.subscribed.update(streams)
            link.verified = False
        elif method == "UNSUBSCRIBE":
            link.subscribed.difference_update(streams)
            link.verified = False
        elif method == "LIST_SUBSCRIPTIONS":
            link.probe_sent = None
            if isinstance(reply.result, list):
                listed = {s for s in reply.result if isinstance(s, str)}
                missing = link.subscribed - listed
                if missing:
                    self._rlog.warning(
                        f"missing{self.slot}", "connection %d: %d streams not confirmed; "
                        "subscribing again", self.slot, len(missing),
                    )  # fmt: skip
                link.subscribed = listed
                link.verified = not link.pending and listed == self.wanted
        self.stats.subscribed = len(link.subscribed)

    # -- subscriptions and liveness ----------------------------------------------------------------

    def _send(self, link: _Connection, method: str, streams: list[str] | None) -> None:
        link.next_id += 1
        body: dict[str, Any] = {"method": method, "id": link.next_id}
        if streams is not None:
            body["params"] = streams
        link.pending[link.next_id] = (method, streams or [])
        link.link.send_text(json.dumps(body, separators=(",", ":")))

    def _reconcile(self, link: _Connection, now: float) -> bool:
        """Send what the pace allows towards ``wanted``, then verify. True when the
        connection carries exactly the wanted streams, confirmed by LIST_SUBSCRIPTIONS."""
        wanted = self.wanted
        in_flight = {s for _, streams in link.pending.values() for s in streams}
        to_add = wanted - link.subscribed - in_flight
        to_remove = link.subscribed - wanted - in_flight
        max_bytes = self.config.subscribe_batch_bytes
        for method, streams in (("UNSUBSCRIBE", to_remove), ("SUBSCRIBE", to_add)):
            for batch in stream_batches(streams, max_bytes):
                if not link.pace.try_add(now):
                    return False
                self._send(link, method, batch)
        if not link.pending and not link.verified and link.pace.try_add(now):
            self._send(link, "LIST_SUBSCRIPTIONS", None)
        return link.verified and link.subscribed == wanted

    def _watchdog(self, link: _Connection, now: float) -> _Connection:
        """Probe a silent connection, replace a stalled one, rotate an old one."""
        cfg = self.config
        if link.probe_sent is not None and now - link.probe_sent > cfg.probe_timeout:
            raise Stalled(f"no answer to a probe in {cfg.probe_timeout:g} s")
        silent = now - link.last_frame > cfg.silence_timeout
        if link.probe_sent is None and silent and link.pace.try_add(now):
            self.stats.probes += 1
            link.probe_sent = now
            self._send(link, "LIST_SUBSCRIPTIONS", None)
        if self._rotate_now or now >= link.rotate_at:
            return self._rotate(link)
        return link

    def _rotate(self, old: _Connection) -> _Connection:
        """Make-before-break: subscribe a new connection fully while reading the old one."""
        self._rotate_now = False
        try:
            new = self._open()
        except (OSError, WebSocketException, TimeoutError) as exc:
            log.warning("connection %d: rotation postponed, cannot connect: %s", self.slot, exc)
            old.rotate_at = self.clock() + self.config.backoff_max
            return old
        deadline = self.clock() + 60.0
        drain: _Connection | None = old
        try:
            while not self.stopping.is_set():
                now = self.clock()
                if self._reconcile(new, now):
                    break
                if now > deadline:
                    raise Stalled("replacement connection never confirmed its subscriptions")
                if self._read(new, 0.02):
                    new.last_frame = now
                if drain is not None:
                    drain = self._drain(drain)
        except BaseException:
            new.close()
            raise
        if drain is not None:
            self._drain_until_marker(drain)
        self.stats.rotations += 1
        log.info("connection %d rotated (make-before-break)", self.slot)
        return new

    def _drain_until_marker(self, old: _Connection, limit: float = 5.0) -> None:
        """The new connection carries every stream now. Ask the old one for
        LIST_SUBSCRIPTIONS: a connection delivers in order, so every trade it still owes us
        (published before the new one took over) arrives before that reply. Then close it."""
        deadline = self.clock() + limit
        try:
            while not old.pace.try_add(self.clock()) and self.clock() < deadline:
                self._read(old, 0.05)  # keep reading while we wait
            self._send(old, "LIST_SUBSCRIPTIONS", None)
            marker = old.next_id
            while marker in old.pending and self.clock() < deadline:
                self._read(old, max(0.0, deadline - self.clock()))
        except (OSError, WebSocketException):
            pass  # what the old connection did not deliver, the gap backfill will fetch
        finally:
            old.close()

    def _drain(self, conn: _Connection) -> _Connection | None:
        """Apply what the old connection has received already; None once it is gone."""
        try:
            for _ in range(64):
                if not self._read(conn, 0):
                    return conn
        except (OSError, WebSocketException):
            conn.close()
            return None
        return conn
