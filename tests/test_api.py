"""The REST API through Falcon's test client and through a real waitress on port 0."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import falcon.testing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv.api import HttpServer, create_app, openapi_document
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

    def table(self) -> SymbolTable:
        return self._table

    def ready(self) -> tuple[bool, str]:
        return self.is_ready

    def metrics(self) -> str:
        return "# TYPE medianserv_up gauge\nmedianserv_up 1\n"

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
    assert set(body) == set(stats_schema["properties"]) - {"trades_per_second"}
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
