"""The simulator's data.binance.vision: the market's past as archives in Binance's layout.

``GET /data/spot/{monthly,daily}/{aggTrades,trades}/<SYMBOL>/<name>.zip`` and ``.CHECKSUM``
beside it, on a port of its own (Binance serves archives from another host too). Monthly
files exist for months complete before today, daily files for days before today (Binance
publishes a day's file the day after), neither before the symbol's first trade; everything
else is 404. Files are built from the ground truth on first request and kept, byte for byte
(the zip's timestamps are the period's), so a CHECKSUM always matches its zip.

A file's two halves (its CHECKSUM and its zip) are decided together, at the first request
of either, whichever order they come in (a client may ask for both at once); the other half
is then served from the same decision when it is asked for.

Faults for tests (:meth:`ArchiveServer.spoil`): the next downloads come ``checksum``
(the zip altered, its CHECKSUM not: a file republished between the two requests),
``truncated``, with a ``bad_price``, with ids going ``backwards``, or with the CSV of the
``wrong_symbol`` inside; each with a CHECKSUM that matches what is served, so only the
content can tell. The file after is right again (Binance republishes fixed files).

Binance's real archives have quirks that are not faults, each one a kind too (see
``BINANCE.md``): a ``header`` row; rows the 2022-04 ``audit`` marked invalid in place (a
duplicate of a row with price 0 and trade ids -1); a zip with two ``members`` of the same
name; a daily file cut short (``short_day``: its last rows missing, nowhere else); an
aggregate id reused by the next daily file (``agg_reused``: its aggregate ids one lower than
REST's); a file published ``late`` (404 for a while). Paths are percent-encoded UTF-8
(non-ASCII symbols).

Thread ``sim-archives`` (owned by the :class:`~medianserv.sim.server.Simulator`).
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import io
import re
import threading
import warnings
import zipfile
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from .market import DAY_MS, Market, archive_csv

__all__ = ["QUIRKS", "SPOILS", "ArchiveServer"]

SPOILS = ("checksum", "truncated", "bad_price", "backwards", "wrong_symbol")
QUIRKS = ("header", "audit", "members", "short_day", "agg_reused", "late")
_PATH = re.compile(
    r"^/data/spot/(monthly|daily)/(aggTrades|trades)/([^/]+)/"
    r"([^/]+)-(aggTrades|trades)-(\d{4})-(\d{2})(?:-(\d{2}))?\.zip(\.CHECKSUM)?$"
)


class ArchiveServer:
    """The archive host. ``start()`` and ``stop()``; ``url`` once started."""

    def __init__(
        self,
        market: Market,
        lock: threading.RLock,
        clock: Callable[[], float],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.market = market
        self.lock = lock  # the simulator's hub_lock: guards the market
        self.clock = clock
        self._files: dict[str, bytes] = {}  # built zips by path; guarded by _files_lock
        # per zip path, the half of its last decision not asked for yet: "zip" or "checksum"
        # -> (status, body), decided with the half already served
        self._pending: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._faults: deque[str] = deque()
        self._files_lock = threading.Lock()  # guards _files, _pending and _faults
        self.requests = 0
        self.connections = 0  # TCP connections accepted
        self.served: set[str] = set()  # paths of the zips served whole (decoded)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # connections kept alive, as a CDN keeps them
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

            def setup(self) -> None:
                super().setup()
                with owner._files_lock:
                    owner.connections += 1

            def do_GET(self) -> None:
                status, body = owner.get(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/zip" if status == 200 else
                                 "text/plain")  # fmt: skip
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="sim-archives",
                                       daemon=True)  # fmt: skip

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def spoil(self, kind: str, count: int = 1) -> None:
        """The next ``count`` files downloaded come spoiled in the way ``kind`` says."""
        if kind not in SPOILS + QUIRKS:
            raise ValueError(f"unknown archive fault {kind!r}; one of {SPOILS + QUIRKS}")
        with self._files_lock:
            self._faults.extend([kind] * count)

    def pending_faults(self) -> int:
        """Faults asked for and not served yet."""
        with self._files_lock:
            return len(self._faults)

    # -- serving ---------------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of a GET."""
        self.requests += 1
        path = unquote(path.split("?")[0], errors="strict")
        m = _PATH.match(path)
        if m is None:
            return 404, b"Not Found"
        period, kind, symbol, name_symbol, name_kind, y, mo, d, checksum = m.groups()
        if name_symbol != symbol or name_kind != kind or (period == "daily") != (d is not None):
            return 404, b"Not Found"
        first = dt.date(int(y), int(mo), int(d or 1))
        last = first if d else first.replace(day=calendar.monthrange(first.year, first.month)[1])
        name = path.rsplit("/", 1)[1].removesuffix(".CHECKSUM").removesuffix(".zip")
        zip_path = path.removesuffix(".CHECKSUM")
        with self._files_lock:
            data = self._files.get(zip_path)
        if data is None:
            data = self._build(symbol, kind, first, last, name)
            if data is None:
                return 404, b"Not Found"
        half, other = ("checksum", "zip") if checksum else ("zip", "checksum")
        with self._files_lock:  # decided and served at once: the other half may be here too
            self._files.setdefault(zip_path, data)
            pending = self._pending.pop(zip_path, None)
            if pending is not None and half in pending:  # decided with the other half
                out = pending[half]
            else:
                halves = self._decide(data, symbol, kind, first, last, name)
                self._pending[zip_path] = {other: halves[other]}
                out = halves[half]
            if half == "zip" and out[0] == 200:
                self.served.add(zip_path)
            return out

    def _decide(
        self, data: bytes, symbol: str, kind: str, first: dt.date, last: dt.date, name: str
    ) -> dict[str, tuple[int, bytes]]:
        """Both halves of one download of a file (held: ``_files_lock``): the next fault, if
        one can happen to this file, else the file as it is."""
        fault = self._faults.popleft() if self._faults else None
        if fault == "late":  # not out yet: the next request finds it
            return {"zip": (404, b"Not Found"), "checksum": (404, b"Not Found")}
        served = data
        bad = self._spoil(fault, data, symbol, kind, first, last, name) if fault else None
        if fault is not None and bad is None:  # not a file it can happen to: the next one
            self._faults.appendleft(fault)
        if bad is not None:
            served = bad
            if fault != "checksum":
                data = bad  # the CHECKSUM matches what is served
        line = f"{hashlib.sha256(data).hexdigest()}  {name}.zip\n".encode()
        return {"zip": (200, served), "checksum": (200, line)}

    def _build(
        self, symbol: str, kind: str, first: dt.date, last: dt.date, name: str
    ) -> bytes | None:
        today = dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()
        if last >= today or (first != last and today.replace(day=1) <= last):
            return None  # not published yet
        start = calendar.timegm(first.timetuple()) * 1000
        end = calendar.timegm(last.timetuple()) * 1000 + DAY_MS
        with self.lock:
            truth = self.market.truth.get(symbol)
            if truth is None or not truth.count:
                return None
            csv = archive_csv(truth, kind, start, end)
        return _zip(name, csv, first) if csv else None  # nothing traded: no file

    def _spoil(
        self, fault: str, data: bytes, symbol: str, kind: str, first: dt.date, last: dt.date,
        name: str,
    ) -> bytes | None:  # fmt: skip
        """``data`` spoiled the way ``fault`` says, or None when it cannot happen to this
        file: two members only to a monthly file, a day cut short or reusing an aggregate id
        only to a daily one (as Binance's did), and one of at least two rows."""
        daily = first == last
        if (fault == "members" and daily) or (fault in ("short_day", "agg_reused") and not daily):
            return None
        if fault == "checksum":
            return data[:-1] + bytes([data[-1] ^ 1])
        if fault == "truncated":
            return data[: len(data) // 2]
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            csv = z.read(z.namelist()[0])
        lines = csv.splitlines(keepends=True)
        agg = kind == "aggTrades"
        if fault == "header":
            head = (b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
                    b"is_buyer_maker,is_best_match\n") if agg else (
                    b"id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n")  # fmt: skip
            lines.insert(0, head)
        elif fault == "audit" and agg:  # a duplicate of a row marked invalid, after it
            for at in (len(lines), 1):
                fields = lines[at - 1].split(b",")
                fields[1:5] = [b"0", b"0", b"-1", b"-1"]
                lines.insert(at, b",".join(fields))
        elif fault == "members":  # the CSV split in two members of the same name
            return _zip(name, b"".join(lines[: len(lines) // 2]), first,
                        more=b"".join(lines[len(lines) // 2 :]))  # fmt: skip
        elif fault == "short_day":  # the day's last rows are missing
            if len(lines) < 2:
                return None
            lines = lines[: len(lines) // 2]
        elif fault == "agg_reused" and agg:  # aggregate ids one lower: the first is reused
            with self.lock:
                first_agg = self.market.truth[symbol].aggregate_json(0)["a"]
            if int(lines[0].split(b",", 1)[0]) == first_agg:
                return None  # the symbol's first file: no file before it to share an id with
            for i, line in enumerate(lines):
                fields = line.split(b",", 1)
                lines[i] = b"%d,%s" % (int(fields[0]) - 1, fields[1])
        elif fault == "bad_price":
            fields = lines[0].split(b",")
            fields[1] = b"1e5"
            lines[0] = b",".join(fields)
        elif fault == "backwards" and len(lines) > 1:
            lines[0], lines[1] = lines[1], lines[0]
        elif fault == "backwards":
            lines.append(lines[0])
        else:  # wrong_symbol: another symbol's name inside
            return _zip(name.replace(symbol, "OTHER" + symbol, 1), csv, first)
        return _zip(name, b"".join(lines), first)


def _zip(name: str, csv: bytes, day: dt.date, more: bytes | None = None) -> bytes:
    """One CSV in a zip (two of the same name with ``more``), the same bytes every time
    (timestamps are the period's)."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: wanted here
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for part in (csv,) if more is None else (csv, more):
                stamp = (day.year, day.month, day.day, 0, 0, 0)
                info = zipfile.ZipInfo(name + ".csv", date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, part)
    return out.getvalue()
