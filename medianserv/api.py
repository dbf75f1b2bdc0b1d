"""The REST API: thin Falcon resources over the service's state, served by waitress.

``create_app(state)`` builds the app from anything with the :class:`ServiceState` methods, so
tests drive it with Falcon's test client and a real waitress on port 0 alike. Unknown paths are
404, other methods 405, and any unexpected error a JSON 500 without a traceback (logged).

Theory of operation
-------------------
The API is public, so its readers are many and unknown; what they ask for changes at most
once per trade. :class:`Bodies` therefore builds each answer once per change and keeps it:

* ``GET /{symbol}``: the symbol's JSON, keyed by its stats' version (bumped under its lock by
  every change) and its history status. A request is a table lookup, two integer compares
  and a write of bytes already made; the stats' lock is taken only to build a new body.
* ``GET /symbols``: keyed by the listing.
* ``GET /-/all``: every symbol, rebuilt at most once a second from the per-symbol rows.
* ``GET /-/all?since=<version>``: what changed since a version of the change feed
  (:class:`~medianserv.feed.ChangeFeed`), in a compact form: what the dashboard polls.

Every answer carries a strong ``ETag`` (a hash of its bytes, made with them), and a request
whose ``If-None-Match`` matches gets ``304 Not Modified`` with no body. Data endpoints say
``Cache-Control: no-store`` by default, or ``public, max-age=N`` with ``cache_max_age`` set,
so that a reverse proxy or CDN in front can answer a burst of identical requests; the
operational ones (``/-/ready``, ``/-/healthy``, ``/-/status``, ``/metrics``) are never
cacheable. Bodies of 2 KiB and more are sent gzip-compressed to clients that accept it (a
cached body is compressed once, with its own ETag), with ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import falcon
import msgspec
from waitress.server import create_server

from .candles import INTERVALS, CandleRow, select_rows
from .feed import ChangeFeed
from .metrics import CONTENT_TYPE
from .prices import format_median, format_price
from .quantiles import parse_quantiles
from .symbols import StatsView, SymbolStats, SymbolTable

__all__ = [
    "Bodies",
    "HttpServer",
    "Representation",
    "ServiceState",
    "SymbolShortcut",
    "create_app",
    "create_wsgi",
    "openapi_document",
    "represent",
]

log = logging.getLogger(__name__)

#: Longest symbol path we look up; anything longer is answered 404 at once.
MAX_SYMBOL_LENGTH = 64
#: Bodies at least this long are sent gzip-compressed to clients that accept it.
GZIP_MIN_BYTES = 2048
#: The change feed ticks (and /-/all is rebuilt) at most this often, seconds.
FEED_INTERVAL = 1.0
#: The fields of a row of the change feed, in order.
FEED_FIELDS = ("symbol", "count", "median", "last_price", "last_trade_id", "last_trade_time",
               "first_trade_id", "first_trade_time", "history", "missing_trades",
               "lost_trades", "trades_per_second")  # fmt: skip

_json = msgspec.json.Encoder()


class ServiceState(Protocol):
    """What the API reads from the service."""

    def table(self) -> SymbolTable: ...

    def ready(self) -> tuple[bool, str]: ...

    def metrics(self) -> bytes: ...

    def status(self) -> dict[str, Any]: ...

    def samples(self, symbol: str) -> list[tuple[int, int, int | None, int | None]]: ...

    def history_status(self, symbol: str, complete: bool) -> str: ...

    def rates(self) -> dict[str, float]: ...

    def stored_candles(
        self, symbol: str, k: int, start: int, end: int, limit: int, from_start: bool
    ) -> list[CandleRow]: ...


def _exact(units: int | None) -> str | None:
    return None if units is None else format_price(units)


def _median(twice: int | None) -> str | None:
    return None if twice is None else format_median(twice)


def find_symbol(table: SymbolTable, symbol: str) -> SymbolStats:
    """The stats of ``symbol`` as written or upper-cased; a JSON 404 otherwise. O(1)."""
    stats = None
    if len(symbol) <= MAX_SYMBOL_LENGTH:
        stats = table.get(symbol) or table.get(symbol.upper())
    if stats is None:
        raise falcon.HTTPNotFound(
            title="Unknown symbol",
            description=f"{symbol[:MAX_SYMBOL_LENGTH]!r} is not listed; see /symbols",
        )
    return stats


def stats_json(v: StatsView, history: str) -> dict[str, Any]:
    """The JSON object of one symbol's statistics (GET /{symbol}, GET /-/all)."""
    return {
        "symbol": v.symbol,
        "count": v.count,
        "median": _median(v.twice_median),
        "last_price": _exact(v.last_price),
        "last_trade_id": v.last_trade_id,
        "last_trade_time": v.last_trade_time,
        "first_trade_id": v.first_trade_id,
        "first_trade_time": v.first_trade_time,
        "history": history,
        "missing_trades": v.missing,
        "lost_trades": v.lost,
    }


# -- representations ------------------------------------------------------------------------------


class Representation(NamedTuple):
    """A body with its strong ETag, and, for a large one, the same gzip-compressed with its
    own ETag (another representation, another validator)."""

    body: bytes
    etag: str
    gzipped: bytes | None = None
    gz_etag: str | None = None


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=9).hexdigest() + '"'


def represent(body: bytes) -> Representation:
    """``body`` with its ETag, gzipped too when it is large. O(len(body))."""
    if len(body) < GZIP_MIN_BYTES:
        return Representation(body, _etag(body))
    gzipped = gzip.compress(body, 5, mtime=0)
    return Representation(body, _etag(body), gzipped, _etag(gzipped))


class _Row:
    """One symbol's answers at one version: its statistics and, built when first asked for,
    the /-/all object and the change feed's row (with a rate)."""

    __slots__ = ("_compact", "_full", "complete", "key", "obj", "rep")

    def __init__(self, key: tuple[int, str], complete: bool, obj: dict[str, Any]) -> None:
        self.key = key  # (stats version, history status): what the row shows
        self.complete = complete  # the history was complete at that version
        self.obj = obj
        self.rep = represent(_json.encode(obj))  # GET /{symbol}
        self._full: tuple[float, bytes] | None = None  # (rate, /-/all object)
        self._compact: tuple[float, bytes] | None = None  # (rate, feed row)

    def full(self, rate: float) -> bytes:
        if self._full is None or self._full[0] != rate:
            self._full = (rate, _json.encode({**self.obj, "trades_per_second": rate}))
        return self._full[1]

    def compact(self, rate: float) -> bytes:
        if self._compact is None or self._compact[0] != rate:
            values = [self.obj[f] for f in FEED_FIELDS[:-1]]
            self._compact = (rate, _json.encode([*values, rate]))
        return self._compact[1]


class Bodies:
    """Every answer built once per change (see the module docstring). Thread-safe: the
    per-symbol cache is a dict (a race builds a row twice, never a wrong one), the feed and
    the whole table are built under ``_lock``."""

    def __init__(
        self,
        state: ServiceState,
        *,
        clock: Callable[[], float] = time.monotonic,
        epoch: str | None = None,
    ) -> None:
        self.state = state
        self.clock = clock
        self._rows: dict[str, _Row] = {}
        self._listing: tuple[Any, Representation] | None = None  # (symbols, representation)
        self._lock = threading.Lock()  # guards the feed and the whole-table body
        self.feed = ChangeFeed(epoch or os.urandom(4).hex())
        self._ticked = -1e9
        self._all: tuple[str, Representation] | None = None  # (feed version, /-/all)

    def row(self, stats: SymbolStats) -> _Row:
        """The cached row of ``stats``, rebuilt if it changed. O(1) when it did not: two
        compares and a read of the history status."""
        cached = self._rows.get(stats.symbol)
        if (
            cached is not None
            and cached.key[0] == stats.version
            and self.state.history_status(stats.symbol, cached.complete) == cached.key[1]
        ):
            return cached
        v = stats.view()
        history = self.state.history_status(v.symbol, v.history_complete)
        row = _Row((v.version, history), v.history_complete, stats_json(v, history))
        self._rows[v.symbol] = row
        return row

    def symbol(self, stats: SymbolStats) -> Representation:
        """``GET /{symbol}``. O(1)."""
        return self.row(stats).rep

    def listing(self, table: SymbolTable) -> Representation:
        """``GET /symbols``: rebuilt when the listing changes. O(1), O(n) then."""
        cached = self._listing
        if cached is None or cached[0] is not table.symbols:
            cached = self._listing = (table.symbols, represent(_json.encode(table.symbols)))
        return cached[1]

    def _tick(self, table: SymbolTable) -> tuple[str, dict[str, float]]:
        """Tick the feed if it has not for FEED_INTERVAL: every symbol's key read (its stats'
        version, history status, rate). Caller holds _lock. O(symbols)."""
        rates = self.state.rates()
        now = self.clock()
        if now - self._ticked >= FEED_INTERVAL:
            self._ticked = now
            status = self.state.history_status
            keys = {s: (st.version, status(s, False), round(rates.get(s, 0.0), 3))
                    for s, st in table.items()}  # fmt: skip
            self.feed.tick(keys, table.symbols)
        return self.feed.version, rates

    def everything(self) -> Representation:
        """``GET /-/all``: every symbol with its rate, rebuilt at most once per feed tick.
        O(symbols) then, O(1) otherwise."""
        table = self.state.table()
        with self._lock:
            version, rates = self._tick(table)
            if self._all is not None and self._all[0] == version:
                return self._all[1]
            rows = [self.row(st).full(round(rates.get(s, 0.0), 3)) for s, st in table.items()]
            rep = represent(b"[" + b",".join(rows) + b"]")
            self._all = (version, rep)
            return rep

    def changes(self, since: str) -> bytes:
        """``GET /-/all?since=<version>``: the rows changed after ``since`` (every row, with
        ``"full": true``, when the feed cannot answer for that version); ``ValueError`` when
        ``since`` is no version at all. O(changes)."""
        table = self.state.table()
        with self._lock:
            version, rates = self._tick(table)
            changed = self.feed.since(since)
        get = table.get
        if changed is None:
            symbols: Any = table.symbols
        else:
            symbols = [s for s in changed if get(s) is not None]
        rows = []
        for s in symbols:
            stats = get(s)
            if stats is not None:
                rows.append(self.row(stats).compact(round(rates.get(s, 0.0), 3)))
        head = _json.encode({"version": version, "full": changed is None, "fields": FEED_FIELDS})
        return head[:-1] + b',"rows":[' + b",".join(rows) + b"]}"


# -- HTTP -----------------------------------------------------------------------------------------


def _accepts_gzip(req: falcon.Request) -> bool:
    for part in (req.get_header("Accept-Encoding") or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _send(resp: falcon.Response, body: Any, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _json.encode(body)


def _send_rep(req: falcon.Request, resp: falcon.Response, rep: Representation) -> None:
    """Send a cached representation: gzipped to a client that accepts it."""
    resp.content_type = falcon.MEDIA_JSON
    if rep.gzipped is not None and _accepts_gzip(req):
        resp.data, resp.etag = rep.gzipped, rep.gz_etag
        resp.set_header("Content-Encoding", "gzip")
    else:
        resp.data, resp.etag = rep.body, rep.etag


class SymbolsResource:
    cacheable = True

    def __init__(self, state: ServiceState, bodies: Bodies) -> None:
        self.state, self.bodies = state, bodies

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every listed symbol, as Binance lists them. O(1) (O(n) once per listing)."""
        _send_rep(req, resp, self.bodies.listing(self.state.table()))


class SymbolResource:
    cacheable = True

    def __init__(self, state: ServiceState, bodies: Bodies) -> None:
        self.state, self.bodies = state, bodies

    def on_get(self, req: falcon.Request, resp: falcon.Response, symbol: str) -> None:
        """One symbol's statistics at one instant; the symbol is case-insensitive. O(1).
        With ``q=0.01,0.99``: its exact quantiles too, under ``quantiles`` keyed as written
        (:mod:`medianserv.quantiles`), read at the same instant (O(d / 1,024 + h log h))."""
        stats = find_symbol(self.state.table(), symbol)
        asked = req.params.get("q")
        if asked is None:
            _send_rep(req, resp, self.bodies.symbol(stats))
            return
        try:
            if not isinstance(asked, str):
                raise ValueError("q: give it once, its values separated by commas")
            qs = parse_quantiles(asked)
        except ValueError as exc:
            raise falcon.HTTPBadRequest(title="Bad q", description=str(exc)) from None
        view, twice = stats.quantiles(qs)
        body = stats_json(view, self.state.history_status(view.symbol, view.history_complete))
        body["quantiles"] = {q.text: _median(t) for q, t in zip(qs, twice, strict=True)}
        _send_rep(req, resp, represent(_json.encode(body)))


#: ``GET /{symbol}/candles``: rows by default and at most
CANDLE_LIMIT, MAX_CANDLE_LIMIT = 500, 1000
_INTERVAL_INDEX = {name: k for k, (name, _) in enumerate(INTERVALS)}
_CANDLE_FIELDS = ["open_time", "open", "high", "low", "close", "count", "median", "final"]
_MAX_MS = 2**53  # beyond any trade time, and exact in every JSON reader


def _ms_param(req: falcon.Request, name: str) -> int | None:
    text = req.params.get(name)
    if text is None:
        return None
    if not isinstance(text, str) or not text.isdigit() or not text.isascii() or len(text) > 16:
        raise falcon.HTTPBadRequest(
            title=f"Bad {name}", description=f"{name}: a time in ms since the epoch, given once"
        )
    value = int(text)
    if value > _MAX_MS:
        raise falcon.HTTPBadRequest(title=f"Bad {name}", description=f"{name}: out of range")
    return value


class CandlesResource:
    cacheable = True

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response, symbol: str) -> None:
        """One symbol's median candles of one interval (:mod:`medianserv.candles`): rows with
        open time in ``start..end`` (end excluded), the first ``limit`` from ``start`` when
        it is given, else the latest ``limit`` before ``end``. O(limit + p + L log L) for the
        open periods' L levels, the stored rows read in one LMDB transaction."""
        stats = find_symbol(self.state.table(), symbol)
        interval = req.params.get("interval")
        k = _INTERVAL_INDEX.get(interval) if isinstance(interval, str) else None
        if k is None:
            raise falcon.HTTPBadRequest(
                title="Bad interval", description="interval: one of 1m, 1h, 1d"
            )
        start, end = _ms_param(req, "start"), _ms_param(req, "end")
        text = req.params.get("limit", str(CANDLE_LIMIT))
        if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) < 6
                and 1 <= int(text) <= MAX_CANDLE_LIMIT):  # fmt: skip
            raise falcon.HTTPBadRequest(
                title="Bad limit", description=f"limit: an integer from 1 to {MAX_CANDLE_LIMIT}"
            )
        limit = int(text)
        if start is not None and end is not None and start >= end:
            raise falcon.HTTPBadRequest(title="Bad range", description="start must be before end")
        lo, hi = start if start is not None else 0, end if end is not None else _MAX_MS
        memory, origin = stats.candle_rows(k, 0, _MAX_MS)  # few: the open periods
        stored = self.state.stored_candles(stats.symbol, k, lo, hi, limit, start is not None)
        chosen = select_rows(stored, memory, origin, start, end, limit)
        body = {
            "symbol": stats.symbol,
            "interval": INTERVALS[k][0],
            "fields": _CANDLE_FIELDS,
            "rows": [
                [
                    r.open_time,
                    format_price(r.open),
                    format_price(r.high),
                    format_price(r.low),
                    format_price(r.close),
                    r.trades,
                    format_median(r.twice_median),
                    final,
                ]
                for r, final in chosen
            ],
        }
        _send_rep(req, resp, represent(_json.encode(body)))


class AllResource:
    cacheable = True

    def __init__(self, bodies: Bodies) -> None:
        self.bodies = bodies

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every symbol's statistics in one response, with trades/s over the last minute,
        or, with ``since=<version>``, what changed since that version of the change feed.
        O(n) at most once a second, O(changes) for the feed."""
        since = req.get_param("since")
        if since is None:
            _send_rep(req, resp, self.bodies.everything())
        else:
            try:
                data = self.bodies.changes(since)
            except ValueError as exc:  # not a version at all: the client's mistake, said so
                raise falcon.HTTPBadRequest(title="Bad since", description=str(exc)) from None
            resp.content_type = falcon.MEDIA_JSON
            resp.data = data


class SamplesResource:
    cacheable = True

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response, symbol: str) -> None:
        """The recent samples of one symbol: [time_ms, count, median, last_price], oldest first."""
        stats = find_symbol(self.state.table(), symbol)
        samples = [[t, c, _median(m), _exact(p)] for t, c, m, p in self.state.samples(stats.symbol)]
        _send(resp, {"symbol": stats.symbol, "samples": samples})


class StatusResource:
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(resp, self.state.status())


class DashboardResource:
    cacheable = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = _dashboard_html()


def _dashboard_html() -> bytes:
    from importlib.resources import files

    return files("medianserv").joinpath("dashboard.html").read_bytes()


class HealthyResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(resp, {"status": "alive"})


class ReadyResource:
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready, reason = self.state.ready()
        status = falcon.HTTP_200 if ready else falcon.HTTP_503
        _send(resp, {"ready": ready, "reason": reason}, status)


class MetricsResource:
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self.state.metrics()


class OpenApiResource:
    cacheable = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(resp, openapi_document())


class HttpRules:
    """Middleware: only GET is served (everything else is 405, OPTIONS included); every 200
    carries a strong ETag (a hash of its bytes unless the resource set one) and answers a
    matching ``If-None-Match`` with 304 and no body; large bodies go gzipped to clients that
    accept it; ``Cache-Control`` is ``public, max-age=N`` on data endpoints when
    ``cache_max_age`` is set, ``no-store`` otherwise."""

    def __init__(self, cache_max_age: float = 0.0) -> None:
        age = int(cache_max_age)
        self.cacheable = f"public, max-age={age}" if age > 0 else "no-store"

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method != "GET":
            raise falcon.HTTPMethodNotAllowed(["GET"])

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        cacheable = req_succeeded and getattr(resource, "cacheable", False)
        resp.set_header("Cache-Control", self.cacheable if cacheable else "no-store")
        if not req_succeeded or resp.status not in (falcon.HTTP_200, 200):
            return
        resp.set_header("Vary", "Accept-Encoding")
        data = resp.data
        if resp.etag is None and isinstance(data, bytes):
            if len(data) >= GZIP_MIN_BYTES and _accepts_gzip(req):
                data = resp.data = gzip.compress(data, 5, mtime=0)
                resp.set_header("Content-Encoding", "gzip")
            resp.etag = _etag(data)
        if req.get_header("If-None-Match") is None:
            return  # most requests: nothing to compare
        tags = req.if_none_match
        if (
            tags
            and resp.etag is not None
            and any(t == "*" or t.strip('"') == resp.etag.strip('"') for t in tags)
        ):
            resp.status = falcon.HTTP_304
            resp.data = None
            resp.delete_header("Content-Type")  # no body, no type (RFC 9110 15.4.5)


def _internal_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unexpected error serving %s %s", req.method, req.path[:200])
    raise falcon.HTTPInternalServerError(title="Internal error", description="see the server log")


class SymbolShortcut:
    """WSGI, in front of the Falcon app: the API's one hot path, ``GET /{symbol}``, answered
    from the symbol's cached body without building Falcon's request and response objects.

    Measured with 10,000 trades/s of ingest in the same process on two cores: p99 of 55 and
    14 ms at 4,000 req/s with it, 141 and 153 ms without (the request objects, routing and
    middleware cost more under load than in a loop alone). It answers only what it answers
    exactly as the Falcon route does (a test holds it to that, header for header, byte for
    byte): a GET with no query string and no ``If-None-Match``, of ``/`` and a listed symbol
    as plain ASCII (upper- or lower-case), whose body is too small to compress. Everything
    else, misses and errors included, goes to the Falcon app. O(1)."""

    def __init__(self, app: Any, state: ServiceState, bodies: Bodies, cache_control: str) -> None:
        self.app = app
        self.state = state
        self.bodies = bodies
        self.cache_control = cache_control

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path: str = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and not environ.get("QUERY_STRING")
            and "HTTP_IF_NONE_MATCH" not in environ
            and 1 < len(path) <= MAX_SYMBOL_LENGTH + 1
            and path.count("/") == 1
            and path.isascii()
            and path.isprintable()
            and "%" not in path
            and not path.startswith("/-")
        ):
            table = self.state.table()
            symbol = path[1:]
            stats = table.get(symbol) or table.get(symbol.upper())
            if stats is not None:
                rep = self.bodies.symbol(stats)
                if rep.gzipped is None:
                    start_response("200 OK", [
                        ("Content-Type", falcon.MEDIA_JSON),
                        ("ETag", rep.etag),
                        ("Cache-Control", self.cache_control),
                        ("Vary", "Accept-Encoding"),
                        ("Content-Length", str(len(rep.body))),
                    ])  # fmt: skip
                    return [rep.body]
        return self.app(environ, start_response)


def create_wsgi(state: ServiceState, *, cache_max_age: float = 0.0) -> SymbolShortcut:
    """What waitress serves: the Falcon app (:func:`create_app`) behind the shortcut for its
    hot path, sharing one :class:`Bodies`."""
    bodies = Bodies(state)
    rules = HttpRules(cache_max_age)
    app = create_app(state, cache_max_age=cache_max_age, bodies=bodies)
    return SymbolShortcut(app, state, bodies, rules.cacheable)


def create_app(
    state: ServiceState, *, cache_max_age: float = 0.0, bodies: Bodies | None = None
) -> falcon.App[falcon.Request, falcon.Response]:
    """The WSGI app. Routes: / (dashboard), /symbols, /{symbol}, /{symbol}/candles, /-/all,
    /-/status, /-/samples/{symbol}, /-/healthy, /-/ready, /-/openapi.json, /metrics."""
    bodies = bodies or Bodies(state)
    app = falcon.App(middleware=[HttpRules(cache_max_age)])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/", DashboardResource())
    app.add_route("/symbols", SymbolsResource(state, bodies))
    app.add_route("/-/all", AllResource(bodies))
    app.add_route("/-/status", StatusResource(state))
    app.add_route("/-/samples/{symbol}", SamplesResource(state))
    app.add_route("/metrics", MetricsResource(state))
    app.add_route("/-/healthy", HealthyResource())
    app.add_route("/-/ready", ReadyResource(state))
    app.add_route("/-/openapi.json", OpenApiResource())
    app.add_route("/{symbol}", SymbolResource(state, bodies))
    app.add_route("/{symbol}/candles", CandlesResource(state))
    app.add_error_handler(Exception, _internal_error)
    return app


class HttpServer:
    """waitress in a thread of its own (``http``), stopped by :meth:`stop`."""

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        threads: int = 4,
    ) -> None:
        # clear_untrusted_proxy_headers: we read no proxy header, so waitress need not wrap
        # every request to scrub them (a few per cent of each request's time).
        # asyncore_use_poll: the loop waits in poll(), not select(). stop() closes the
        # sockets from another thread while the loop waits; select() fails on a descriptor
        # closed before the map lets go of it (EBADF, which ended the thread with an
        # exception), where poll() reports it (POLLNVAL) and the loop drops the connection.
        # poll() also takes descriptors above 1023, which select() refuses.
        self.server = create_server(
            app, host=host, port=port, threads=threads, ident="medianserv",
            expose_tracebacks=False, channel_timeout=30, clear_untrusted_proxy_headers=False,
            asyncore_use_poll=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        from waitress import wasyncore

        self.server.close()
        wasyncore.close_all(self.server._map)
        self.server.task_dispatcher.shutdown(timeout=timeout)
        self.thread.join(timeout)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of the API (served at /-/openapi.json)."""
    error = {"$ref": "#/components/schemas/Error"}
    json_of = lambda schema: {"application/json": {"schema": schema}}  # noqa: E731
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "medianserv",
            "version": "1",
            "description": "Exact running median of every Binance spot trade price per symbol, "
            "since the service started or, with --history, since the symbol's listing, with "
            "the trade count and the last price.",
        },
        "paths": {
            "/symbols": {"get": {
                "summary": "Every symbol Binance lists",
                "responses": {"200": {"description": "symbols", "content": json_of(
                    {"type": "array", "items": {"type": "string"}})}},
            }},
            "/{symbol}": {"get": {
                "summary": "Statistics of one symbol (case-insensitive)",
                "parameters": [
                    {"name": "symbol", "in": "path", "required": True,
                     "schema": {"type": "string"}},
                    {"name": "q", "in": "query", "required": False,
                     "description": "exact quantiles to add: up to 16 decimals from 0 to 1, "
                     "comma-separated (0.01,0.5,0.99). The q-quantile of the n prices counted "
                     "is the mean of the prices at 0-based ranks floor(q(n-1)) and "
                     "ceil(q(n-1)), q read exactly as written: q=0.5 is the median",
                     "schema": {"type": "string", "pattern": "^[01](\\.[0-9]{1,18})?(,[01]"
                                "(\\.[0-9]{1,18})?){0,15}$"}},
                ],
                "responses": {
                    "200": {"description": "statistics, with quantiles when q was given",
                            "content": json_of({"$ref": "#/components/schemas/Stats"})},
                    "400": {"description": "q is not a list of decimals from 0 to 1",
                            "content": json_of(error)},
                    "404": {"description": "not listed", "content": json_of(error)},
                },
            }},
            "/{symbol}/candles": {"get": {
                "summary": "Median candles of one symbol: per UTC period, open, high, low, "
                "close, count and the exact median of the prices of its trades",
                "description": "One row per period holding at least one counted trade, "
                "ascending by open_time (ms). open/close: the prices of the lowest/highest "
                "trade id in the period; median: as /{symbol}'s. A trade belongs to the period "
                "of its trade time. final: every trade of the period is counted and it has "
                "ended (a row stays false where counting began without --history, and where "
                "trades were given up). Rows of 1m are kept 7 days and of 1h 90 days by "
                "default (--candle-minutes-days, --candle-hours-days); 1d forever.",
                "parameters": [
                    {"name": "symbol", "in": "path", "required": True,
                     "schema": {"type": "string"}},
                    {"name": "interval", "in": "query", "required": True,
                     "schema": {"type": "string", "enum": ["1m", "1h", "1d"]}},
                    {"name": "start", "in": "query", "required": False,
                     "description": "open times from this one (ms); the first limit rows from it",
                     "schema": {"type": "integer", "minimum": 0}},
                    {"name": "end", "in": "query", "required": False,
                     "description": "open times before this one (ms); without start, the latest "
                     "limit rows before it",
                     "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CANDLE_LIMIT,
                                "default": CANDLE_LIMIT}},
                ],
                "responses": {
                    "200": {"description": "rows of [open_time, open, high, low, close, count, "
                            "median, final]; prices are exact decimal strings",
                            "content": json_of({"$ref": "#/components/schemas/Candles"})},
                    "400": {"description": "bad interval, start, end or limit",
                            "content": json_of(error)},
                    "404": {"description": "not listed", "content": json_of(error)},
                },
            }},
            "/-/all": {"get": {
                "summary": "Every symbol's statistics in one response, with trades_per_second",
                "responses": {"200": {"description": "statistics", "content": json_of(
                    {"type": "array", "items": {"$ref": "#/components/schemas/Stats"}})}},
            }},
            "/-/samples/{symbol}": {"get": {
                "summary": "Recent samples of one symbol: [time_ms, count, median, last_price]",
                "parameters": [{"name": "symbol", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "samples, oldest first"},
                              "404": {"description": "not listed", "content": json_of(error)}},
            }},
            "/-/status": {"get": {"summary": "Service health for the dashboard",
                                  "responses": {"200": {"description": "health"}}}},
            "/": {"get": {"summary": "The dashboard (HTML)",
                          "responses": {"200": {"description": "text/html"}}}},
            "/-/healthy": {"get": {"summary": "The process is alive",
                                   "responses": {"200": {"description": "alive"}}}},
            "/-/ready": {"get": {
                "summary": "Restored and subscribed to every stream",
                "responses": {"200": {"description": "ready"},
                              "503": {"description": "not yet, with the reason"}},
            }},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text format 0.0.4"}}}},
            "/-/openapi.json": {"get": {"summary": "This document",
                                        "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
        "components": {"schemas": {
            "Stats": {"type": "object", "required": ["symbol", "count", "median", "last_price"],
                      "properties": {
                "symbol": {"type": "string"},
                "count": {"type": "integer", "description": "trades applied"},
                "median": {"type": "string", "nullable": True,
                           "description": "exact decimal; null before the first trade"},
                "last_price": {"type": "string", "nullable": True,
                               "description": "price of the highest trade id applied"},
                "last_trade_id": {"type": "integer", "nullable": True},
                "last_trade_time": {"type": "integer", "nullable": True,
                                    "description": "Binance trade time, ms since the epoch"},
                "first_trade_id": {"type": "integer", "nullable": True,
                                   "description": "the lowest trade id counted"},
                "first_trade_time": {"type": "integer", "nullable": True,
                                     "description": "when it happened (ms): how far back the "
                                                    "median reaches"},
                "history": {"type": "string",
                            "enum": ["none", "pending", "importing", "complete", "failed"],
                            "description": "import of every trade since listing (--history)"},
                "missing_trades": {"type": "integer",
                                   "description": "trades known missed, not yet backfilled"},
                "lost_trades": {"type": "integer",
                                "description": "trades missed and given up for good"},
                "trades_per_second": {"type": "number",
                                      "description": "/-/all only: over the last minute"},
                "quantiles": {"type": "object", "additionalProperties": {
                    "type": "string", "nullable": True},
                    "description": "with ?q= only: each q as written -> its exact quantile "
                                   "(formatted as median; null before the first trade)"},
            }},
            "Candles": {"type": "object",
                        "required": ["symbol", "interval", "fields", "rows"], "properties": {
                "symbol": {"type": "string"},
                "interval": {"type": "string", "enum": ["1m", "1h", "1d"]},
                "fields": {"type": "array", "items": {"type": "string"}},
                "rows": {"type": "array", "items": {"type": "array", "minItems": 8,
                                                    "maxItems": 8, "items": {}}},
            }},
            "Error": {"type": "object", "properties": {
                "title": {"type": "string"}, "description": {"type": "string"}}},
        }},
    }  # fmt: skip
