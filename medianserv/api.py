"""The REST API: thin Falcon resources over the service's state, served by waitress.

``create_app(state)`` builds the app from anything with the :class:`ServiceState` methods, so
tests drive it with Falcon's test client and a real waitress on port 0 alike. Every response
is JSON with ``Cache-Control: no-store``; unknown paths are 404, other methods 405, and any
unexpected error a JSON 500 without a traceback (logged).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import falcon
import msgspec
from waitress.server import create_server

from .prices import format_median, format_price
from .symbols import StatsView, SymbolStats, SymbolTable

__all__ = ["HttpServer", "ServiceState", "create_app", "openapi_document"]

log = logging.getLogger(__name__)

#: Longest symbol path we look up; anything longer is answered 404 at once.
MAX_SYMBOL_LENGTH = 64

_json = msgspec.json.Encoder()


class ServiceState(Protocol):
    """What the API reads from the service."""

    def table(self) -> SymbolTable: ...

    def ready(self) -> tuple[bool, str]: ...

    def metrics(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def samples(self, symbol: str) -> list[tuple[int, int, int | None, int | None]]: ...

    def history_status(self, symbol: str, complete: bool) -> str: ...

    def rates(self) -> dict[str, float]: ...


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


def _send(resp: falcon.Response, body: Any, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _json.encode(body)


class SymbolsResource:
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every listed symbol, as Binance lists them. O(n)."""
        _send(resp, list(self.state.table().symbols))


class SymbolResource:
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response, symbol: str) -> None:
        """One symbol's statistics at one instant; the symbol is case-insensitive. O(1)."""
        v = find_symbol(self.state.table(), symbol).view()
        _send(resp, stats_json(v, self.state.history_status(v.symbol, v.history_complete)))


class AllResource:
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every symbol's statistics in one response, with trades/s over the last minute.
        O(n); what the dashboard and scripts poll instead of one request per symbol."""
        rates = self.state.rates()
        status = self.state.history_status
        out = []
        for symbol, stats in self.state.table().items():
            v = stats.view()
            item = stats_json(v, status(symbol, v.history_complete))
            item["trades_per_second"] = round(rates.get(symbol, 0.0), 3)
            out.append(item)
        _send(resp, out)


class SamplesResource:
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
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = self.state.metrics()


class OpenApiResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(resp, openapi_document())


class NoStore:
    """Middleware: only GET is served (everything else is 405, OPTIONS included), and no
    response may be cached: statistics change with every trade."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method != "GET":
            raise falcon.HTTPMethodNotAllowed(["GET"])

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        resp.set_header("Cache-Control", "no-store")


def _internal_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unexpected error serving %s %s", req.method, req.path[:200])
    raise falcon.HTTPInternalServerError(title="Internal error", description="see the server log")


def create_app(state: ServiceState) -> falcon.App[falcon.Request, falcon.Response]:
    """The WSGI app. Routes: / (dashboard), /symbols, /{symbol}, /-/all, /-/status,
    /-/samples/{symbol}, /-/healthy, /-/ready, /-/openapi.json, /metrics."""
    app = falcon.App(middleware=[NoStore()])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/", DashboardResource())
    app.add_route("/symbols", SymbolsResource(state))
    app.add_route("/-/all", AllResource(state))
    app.add_route("/-/status", StatusResource(state))
    app.add_route("/-/samples/{symbol}", SamplesResource(state))
    app.add_route("/metrics", MetricsResource(state))
    app.add_route("/-/healthy", HealthyResource())
    app.add_route("/-/ready", ReadyResource(state))
    app.add_route("/-/openapi.json", OpenApiResource())
    app.add_route("/{symbol}", SymbolResource(state))
    app.add_error_handler(Exception, _internal_error)
    return app


class HttpServer:
    """waitress in a thread of its own (``http``), stopped by :meth:`stop`."""

    def __init__(
        self,
        app: falcon.App[falcon.Request, falcon.Response],
        host: str,
        port: int,
        threads: int = 4,
    ) -> None:
        self.server = create_server(
            app, host=host, port=port, threads=threads, ident="medianserv",
            expose_tracebacks=False, channel_timeout=30,
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
                "parameters": [{"name": "symbol", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "statistics",
                            "content": json_of({"$ref": "#/components/schemas/Stats"})},
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
            }},
            "Error": {"type": "object", "properties": {
                "title": {"type": "string"}, "description": {"type": "string"}}},
        }},
    }  # fmt: skip
