"""The REST API through Falcon's test client and through a real waitress on port 0."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv.api import Bodies, HttpServer, create_app, openapi_document
from medianserv.candles import CandleRow
from medianserv.store import Store
from medianserv.symbols import SymbolTable


class State:
    """The service state the API reads: a real table of real stats."""

    def __init__(self) -> None:
        self._table = SymbolTable.build(["BTCUSDT", "ETHBTC", "币安人生USDT", "QUIETUSDT"])
        btc = self._table.get("BTCUSDT")
        assert btc is not None
        for tid, price in ((10, 6183763000000), (11, 6183764000000), (14, 6183763000000)):
            btc.apply(tid, price, 1723161255342 + tid)
        self.is_ready = (False, "connections [0] not subscribed yet")
        self.stored: Store | None = None  # where settled candles are read, if anywhere

    def table(self) -> SymbolTable:
        return self._table

    def ready(self) -> tuple[bool, str]:
        return self.is_ready

    def metrics(self) -> bytes:
        return b"# TYPE medianserv_up gauge\nmedianserv_up 1\n"

    def status(self) -> dict[str, object]:
        return {
            "ready": self.is_ready[0],
            "problems": [] if self.is_ready[0] else [self.is_ready[1]],
        }

    def samples(self, symbol: str) -> list[tuple[int, int, int | None, int | None]]:
        return [(1000, 2, 12367526000000, 6183764000000), (2000, 3, 12367526000000, 6183763000000)]

    def rates(self) -> dict[str, float]:
        return {"BTCUSDT": 1.5}

    def history_status(self, symbol: str, complete: bool) -> str:
        return "complete" if complete else "importing" if symbol == "ETHBTC" else "none"

    def stored_candles(
        self, symbol: str, k: int, start: int, end: int, limit: int, from_start: bool
    ) -> list[CandleRow]:
        return self.stored.candles(symbol, k, start, end, limit, from_start) if self.stored else []


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def client(state: State) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(state))


def test_symbols(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/symbols")
    assert r.status_code == 200 and r.json == ["BTCUSDT", "ETHBTC", "币安人生USDT", "QUIETUSDT"]
    assert r.headers["Cache-Control"] == "no-store"


def test_symbol_statistics_exact_and_case_insensitive(client: falcon.testing.TestClient) -> None:
    expected = {
        "symbol": "BTCUSDT", "count": 3, "median": "61837.63", "last_price": "61837.63",
        "last_trade_id": 14, "last_trade_time": 1723161255356, "first_trade_id": 10,
        "first_trade_time": 1723161255352, "history": "none", "missing_trades": 2,
        "lost_trades": 0,
    }  # fmt: skip
    for path in ("/BTCUSDT", "/btcusdt", "/BtcUsdt", "/BTCUSDT/"):
        r = client.simulate_get(path)
        assert r.status_code == 200 and r.json == expected, path
    assert r.headers["Cache-Control"] == "no-store"
    quiet = client.simulate_get("/QUIETUSDT").json
    assert quiet["count"] == 0 and quiet["median"] is None and quiet["last_price"] is None
    assert quiet["first_trade_id"] is None and quiet["history"] == "none"
    assert client.simulate_get("/ETHBTC").json["history"] == "importing"
    assert client.simulate_get("/%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT").status_code == 200


def test_even_count_median_has_the_exact_ninth_decimal(state: State) -> None:
    eth = state.table().get("ETHBTC")
    assert eth is not None
    eth.apply(1, 1, 1)
    eth.apply(2, 2, 2)
    r = falcon.testing.TestClient(create_app(state)).simulate_get("/ETHBTC")
    assert r.json["median"] == "0.000000015"


def test_bulk_samples_status_and_page(client: falcon.testing.TestClient) -> None:
    all_ = client.simulate_get("/-/all").json
    assert [r["symbol"] for r in all_] == ["BTCUSDT", "ETHBTC", "币安人生USDT", "QUIETUSDT"]
    btc = client.simulate_get("/BTCUSDT").json
    assert all_[0] == {**btc, "trades_per_second": 1.5}
    assert all_[1]["trades_per_second"] == 0.0
    h = client.simulate_get("/-/samples/btcusdt").json
    assert h == {"symbol": "BTCUSDT", "samples": [[1000, 2, "61837.63", "61837.64"],
                                                  [2000, 3, "61837.63", "61837.63"]]}  # fmt: skip
    assert client.simulate_get("/-/samples/NOPE").status_code == 404
    long_path = "/-/samples/BTCUSDT" + "X" * 100  # never truncated onto a listed symbol
    assert client.simulate_get(long_path).status_code == 404
    assert client.simulate_get("/-/status").json["ready"] is False
    page = client.simulate_get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert (
        "<table" in page.text
        and "/-/all" in page.text
        and "http" not in page.text.split("<script>")[1][:0]
    )


def test_unknown_symbol_is_a_json_404(client: falcon.testing.TestClient) -> None:
    r = client.simulate_get("/NOTLISTED")
    assert r.status_code == 404 and r.json["title"] == "Unknown symbol"
    assert r.headers["Cache-Control"] == "no-store"


def test_ready_healthy_metrics_openapi(client: falcon.testing.TestClient, state: State) -> None:
    r = client.simulate_get("/-/ready")
    assert r.status_code == 503 and r.json == {"ready": False, "reason": state.is_ready[1]}
    state.is_ready = (True, "4 symbols over 1 connections")
    assert client.simulate_get("/-/ready").status_code == 200
    assert client.simulate_get("/-/healthy").json == {"status": "alive"}
    m = client.simulate_get("/metrics")
    assert (
        m.status_code == 200
        and m.text.startswith("# TYPE")
        and "text/plain" in m.headers["Content-Type"]
    )
    assert client.simulate_get("/-/openapi.json").json == openapi_document()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/symbols", "/BTCUSDT", "/-/ready", "/metrics"])
def test_other_methods_are_405(client: falcon.testing.TestClient, method: str, path: str) -> None:
    r = client.simulate_request(method, path)
    assert r.status_code == 405 and r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "path",
    ["/a/b", "/../etc/passwd", "/%2e%2e/%2e%2e", "/" + "A" * 100_000, "/-/", "/-/nope",
     "/%00", "/%ff%fe", "/\u202eUSDT", "/BTC%2FUSDT", "/;x", "/BTCUSDT?x=1&x=2"],
)  # fmt: skip
def test_odd_paths_get_clean_4xx(client: falcon.testing.TestClient, path: str) -> None:
    r = client.simulate_get(path)
    assert 400 <= r.status_code < 500 or (r.status_code == 200 and path.startswith("/BTCUSDT"))
    json.loads(r.text)  # always a JSON body


@settings(max_examples=300)
@given(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]), st.text(max_size=60))
def test_fuzz_never_5xx(method: str, tail: str) -> None:
    client = falcon.testing.TestClient(create_app(State()))
    path, _, query = tail.partition("?")  # the test client takes the query string apart
    r = client.simulate_request(method, "/" + path, query_string=query.replace("?", "%3F"))
    assert r.status_code < 500


def test_openapi_describes_the_served_routes(client: falcon.testing.TestClient) -> None:
    doc = openapi_document()
    stats_schema = doc["components"]["schemas"]["Stats"]
    body = client.simulate_get("/BTCUSDT").json
    assert set(body) == set(stats_schema["properties"]) - {"trades_per_second", "quantiles"}
    assert set(stats_schema["required"]) <= set(body)
    for path in doc["paths"]:
        concrete = path.replace("{symbol}", "BTCUSDT")
        status = str(client.simulate_get(concrete).status_code)
        assert status in doc["paths"][path]["get"]["responses"], path


@pytest.fixture
def server(state: State) -> Iterator[HttpServer]:
    http = HttpServer(create_app(state), "127.0.0.1", 0)
    http.start()
    yield http
    http.stop()


def test_the_http_loop_outlives_a_socket_closed_under_it(state: State) -> None:
    """A connection whose socket is closed while it is still in waitress's map (what
    ``HttpServer.stop`` does from another thread while the loop waits) does not end the
    loop's thread: the loop polls, sees the descriptor gone, drops the connection and goes
    on serving. (Waiting in select(), it failed with EBADF and the thread died.)"""
    from waitress.channel import HTTPChannel

    failures: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    http = HttpServer(create_app(state), "127.0.0.1", 0)
    http.start()
    try:
        conn = socket.create_connection(("127.0.0.1", http.port), timeout=30)
        conn.sendall(b"GET /btcusdt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        [(fd, channel)] = [(fd, c) for fd, c in list(http.server._map.items())
                           if isinstance(c, HTTPChannel)]  # fmt: skip
        channel.socket.close()  # its descriptor gone, the channel still in the map
        http.server.trigger.pull_trigger()  # the loop comes round now, not in a second
        deadline = time.monotonic() + 30
        while fd in http.server._map and http.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fd not in http.server._map and http.thread.is_alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{http.port}/btcusdt", timeout=30) as r:
            assert r.status == 200
        conn.close()
    finally:
        threading.excepthook = hook
        http.stop()
    assert failures == [] and not http.thread.is_alive()


def test_real_waitress(server: HttpServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    with urllib.request.urlopen(base + "/btcusdt", timeout=5) as resp:
        assert resp.status == 200 and json.loads(resp.read())["count"] == 3
        assert resp.headers["Cache-Control"] == "no-store"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/NOPE", timeout=5)
    assert err.value.code == 404 and json.loads(err.value.read())["title"] == "Unknown symbol"
    req = urllib.request.Request(base + "/symbols", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405


# -- validators, caching, compression, the change feed -------------------------------------------


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """A real HTTP GET: (status, headers (case-insensitive), raw body), 304 and 4xx too."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.mark.parametrize("path", ["/symbols", "/BTCUSDT", "/-/all", "/-/all?since=none"])
def test_etags_and_304_through_a_real_http_client(
    server: HttpServer, state: State, path: str
) -> None:
    """Every answer carries a strong ETag; If-None-Match with it gets 304 and no body; after a
    change the old tag no longer matches."""
    base = f"http://127.0.0.1:{server.port}"
    status, headers, body = get(base + path)
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('"') and not etag.startswith("W/") and body
    status, headers, body = get(base + path, {"If-None-Match": etag})
    assert (status, body) == (304, b"") and headers["ETag"] == etag
    assert get(base + path, {"If-None-Match": f'"other", {etag}'})[0] == 304
    assert get(base + path, {"If-None-Match": '"other"'})[0] == 200
    if path != "/symbols":  # a trade changes the statistics: the old tag is stale
        btc = state.table().get("BTCUSDT")
        assert btc is not None
        btc.apply(15, 6183765000000, 1723161255400)
        time.sleep(1.1)  # /-/all is rebuilt at most once a second
        status, headers, _ = get(base + path, {"If-None-Match": etag})
        assert status == 200 and headers["ETag"] != etag


def test_cache_control_is_an_option(state: State) -> None:
    """With cache_max_age, data endpoints may be kept by a cache in front; operational ones
    and errors never."""
    client = falcon.testing.TestClient(create_app(state, cache_max_age=30))
    for path in ("/symbols", "/BTCUSDT", "/-/all", "/-/samples/BTCUSDT", "/-/openapi.json", "/"):
        assert client.simulate_get(path).headers["Cache-Control"] == "public, max-age=30", path
    for path in ("/-/ready", "/-/healthy", "/-/status", "/metrics", "/NOPE"):
        assert client.simulate_get(path).headers["Cache-Control"] == "no-store", path
    default = falcon.testing.TestClient(create_app(state))
    assert default.simulate_get("/BTCUSDT").headers["Cache-Control"] == "no-store"


def test_large_bodies_are_gzipped_for_clients_that_accept_it() -> None:
    """The same bytes, gzipped, with their own ETag and Vary: Accept-Encoding."""
    import gzip

    state = State()
    state._table = SymbolTable.build([f"SYM{i}USDT" for i in range(200)])
    client = falcon.testing.TestClient(create_app(state))
    plain = client.simulate_get("/-/all")
    zipped = client.simulate_get("/-/all", headers={"Accept-Encoding": "gzip, br"})
    assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.content) == plain.content and len(zipped.content) < 0.5 * len(
        plain.content
    )
    assert zipped.headers["ETag"] != plain.headers["ETag"]
    refused = client.simulate_get("/-/all", headers={"Accept-Encoding": "gzip;q=0"})
    assert refused.content == plain.content


def test_change_feed_sends_what_changed() -> None:
    """since=<version> answers the rows changed after that version; a version it cannot
    answer (none, another process, too old) everything, with full: true; garbage a 400."""
    now = [0.0]
    state = State()
    bodies = Bodies(state, clock=lambda: now[0], epoch="test")
    client = falcon.testing.TestClient(create_app(state, bodies=bodies))
    first = client.simulate_get("/-/all", params={"since": "none"}).json
    assert first["full"] and [r[0] for r in first["rows"]] == list(state.table().symbols)
    assert first["fields"][0] == "symbol" and first["fields"][-1] == "trades_per_second"
    btc = dict(zip(first["fields"], first["rows"][0], strict=True))
    assert btc == {**client.simulate_get("/BTCUSDT").json, "trades_per_second": 1.5}
    version = first["version"]
    now[0] += 2
    same = client.simulate_get("/-/all", params={"since": version}).json
    assert not same["full"] and same["rows"] == [] and same["version"] == version
    eth = state.table().get("ETHBTC")
    assert eth is not None
    eth.apply(1, 5, 1)
    now[0] += 2
    delta = client.simulate_get("/-/all", params={"since": version}).json
    assert not delta["full"] and [r[0] for r in delta["rows"]] == ["ETHBTC"]
    assert delta["rows"][0][1] == 1 and delta["version"] != version
    for unanswerable in ("none", "other.1", "test.999", "test.0"):
        assert client.simulate_get("/-/all", params={"since": unanswerable}).json["full"]
    # text that is no version at all is the client's mistake: a JSON 400, never a 500 (a
    # Unicode digit passes str.isdigit but not int())
    for bad in (
        "test.x",
        "",
        "a" * 1000,
        "test.\u00b2",
        "test.\u2460",
        "test.1.2",
        "test.-1",
        "t\u00e9st.1",
        "test.1 ",
    ):
        answer = client.simulate_get("/-/all", params={"since": bad})
        assert answer.status_code == 400 and answer.json["title"] == "Bad since", bad


@given(st.lists(st.dictionaries(st.sampled_from("ABCDE"), st.integers(0, 3), min_size=5,
                                max_size=5), max_size=30),
       st.integers(1, 5))  # fmt: skip
def test_change_feed_against_an_oracle(history: list[dict[str, int]], keep: int) -> None:
    """Any version still kept answers exactly the symbols whose key changed after it."""
    from medianserv.feed import ChangeFeed

    feed = ChangeFeed("e", keep=keep)
    listing = tuple("ABCDE")
    seen: list[tuple[str, dict[str, int]]] = []
    for keys in history:
        seen.append((feed.tick(keys, listing), dict(keys)))
        for version, then in seen:
            got = feed.since(version)
            now = keys
            want = {s for s in listing if then.get(s) != now.get(s)}
            if got is not None:
                assert want <= got  # never too little (a key may change and change back)
        assert feed.since(feed.version) == set()
        if len(seen) >= 2 and seen[-2][0] != seen[-1][0] and keep >= 1:
            assert feed.since(seen[-2][0]) is not None  # the last tick is always answerable


def test_metrics_are_standard_and_complete() -> None:
    """/metrics through prometheus_client: the process and runtime series, and every series
    the README names."""
    import re
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    from medianserv.config import Config
    from medianserv.metrics import create_registry, render
    from medianserv.service import Service

    service = Service(Config())
    text = render(create_registry(service)).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for standard in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds", "python_gc_collections_total", "python_info"):  # fmt: skip
        assert standard in names, standard
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    named = set(re.findall(r"`(medianserv_[a-z_]+)(?:\{[^}]*\})?`", readme))
    assert named and named <= names, named - names


def _wsgi_call(
    app: Any, path: str, headers: dict[str, str] | None = None
) -> tuple[str, Any, bytes]:
    import io
    import sys

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
               "SERVER_NAME": "x", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
               "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
               "wsgi.version": (1, 0), "HTTP_HOST": "x"}  # fmt: skip
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    got: dict[str, Any] = {}

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, sorted((k.lower(), v) for k, v in response_headers)

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


@settings(max_examples=300)
@given(
    st.sampled_from(["/BTCUSDT", "/btcusdt", "/ETHBTC", "/QUIETUSDT", "/NOPE", "/BTCUSDT/", "/",
                     "/-/all", "/-/status", "/%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT",
                     "/BTC%55SDT", "/a/b", "/" + "X" * 70, "/symbols", "/ btc", "/\x00"])
    | st.text(st.characters(max_codepoint=255), max_size=12).map(lambda t: "/" + t),  # WSGI
    st.sampled_from([{}, {"If-None-Match": '"x"'}, {"Accept-Encoding": "gzip"}]),
    st.sampled_from([0.0, 30.0]),
)  # fmt: skip
def test_the_shortcut_answers_exactly_as_falcon(
    path: str, headers: dict[str, str], max_age: float
) -> None:
    """Whatever the request, the WSGI stack waitress serves answers what the Falcon app alone
    answers: same status, same headers, same bytes (the shortcut or not)."""
    from medianserv.api import create_wsgi

    state = State()
    wsgi = create_wsgi(state, cache_max_age=max_age)
    falcon_only = create_app(state, cache_max_age=max_age, bodies=wsgi.bodies)
    assert _wsgi_call(wsgi, path, headers) == _wsgi_call(falcon_only, path, headers)


def test_the_shortcut_is_taken_for_the_hot_path() -> None:
    """A plain GET of a listed symbol never reaches Falcon; anything with a validator does."""
    from medianserv.api import create_wsgi

    wsgi = create_wsgi(State())
    reached: list[str] = []
    inner = wsgi.app
    wsgi.app = lambda environ, start: reached.append(environ["PATH_INFO"]) or inner(environ, start)
    assert _wsgi_call(wsgi, "/BTCUSDT")[0] == "200 OK" and reached == []
    etag = dict(_wsgi_call(wsgi, "/btcusdt")[1])["etag"]
    assert _wsgi_call(wsgi, "/BTCUSDT", {"If-None-Match": etag})[0] == "304 Not Modified"
    assert reached == ["/BTCUSDT"]
