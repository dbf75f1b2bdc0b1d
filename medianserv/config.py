"""Config: every setting of the service and its default, in one place.

Each field is a command-line option (``--snapshot-interval``) and an environment variable
(``MEDIANSERV_SNAPSHOT_INTERVAL``); the command line wins over the environment, which wins over
the default. The first block of options is a public contract: their names do not change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Config", "add_arguments", "from_args"]

ENV_PREFIX = "MEDIANSERV_"
DEFAULT_DATA_DIR = Path("./data")


def _opt(default: Any, help: str, *, advanced: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "advanced": advanced})


def _symbols(text: str) -> frozenset[str] | None:
    """A symbol option's value, ``all`` or ``SYM1,SYM2,...``: the symbols named (upper case),
    or None for all."""
    wanted = text.strip()
    if wanted.lower() == "all":
        return None
    return frozenset(s.strip().upper() for s in wanted.split(",") if s.strip())


@dataclass(frozen=True)
class Config:
    """Settings of one medianserv run. Immutable; :meth:`validate` checks ranges."""

    host: str = _opt("0.0.0.0", "address the REST API listens on (the API is public)")
    port: int = _opt(8080, "port of the REST API")
    data_dir: Path = _opt(DEFAULT_DATA_DIR, "directory of the LMDB snapshot store")
    rest_url: str = _opt("https://api.binance.com", "Binance REST base URL (/api/v3/... appended)")
    ws_url: str = _opt(
        "wss://stream.binance.com:9443", "Binance WebSocket base URL (/stream appended)"
    )
    snapshot_interval: float = _opt(5.0, "seconds between snapshots to LMDB")
    candle_minutes_days: float = _opt(
        7.0, "days of 1m median candles kept before each symbol's latest trade (0: forever)"
    )
    candle_hours_days: float = _opt(
        90.0, "days of 1h median candles kept before each symbol's latest trade (0: forever)"
    )
    candle_forever: str = _opt(
        "", "keep every 1m and 1h median candle of these symbols forever: 'all' or "
        "SYM1,SYM2,... (the others' as the two options above say)")  # fmt: skip
    exchange_info_interval: float = _opt(
        300.0, "seconds between re-reads of exchangeInfo (listings and delistings)"
    )
    max_streams_per_connection: int = _opt(1024, "trade streams per WebSocket connection")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")
    history: str = _opt(
        "", "import every trade since listing for these symbols: 'all' or SYM1,SYM2,... "
        "(empty: none; symbols listed while the service runs are followed from their first "
        "trade anyway)")  # fmt: skip
    cache_max_age: float = _opt(
        0.0, "seconds a cache in front (a reverse proxy, a CDN) may keep GET answers of the "
        "data endpoints (Cache-Control: public, max-age=N); 0: no-store")  # fmt: skip
    archive_url: str = _opt(
        "https://data.binance.vision", "base URL of Binance's public trade archives (a mirror "
        "with the same layout works)")  # fmt: skip

    # Advanced: sensible for Binance; tests shrink them to make rare paths common.
    control_messages_per_second: float = _opt(
        3.0, "SUBSCRIBE/LIST messages sent per second per connection (Binance allows 5, "
        "pongs included)", advanced=True)  # fmt: skip
    subscribe_batch_bytes: int = _opt(
        3000, "largest SUBSCRIBE frame in bytes (Binance ignores ~4 KB+)", advanced=True
    )
    rotate_after: float = _opt(
        23 * 3600.0, "seconds before a connection is replaced (Binance ends it at 24 h)",
        advanced=True)  # fmt: skip
    rotate_jitter: float = _opt(
        1200.0, "random extra seconds, so connections do not all rotate together", advanced=True
    )
    silence_timeout: float = _opt(
        30.0, "seconds without a frame before a connection is probed", advanced=True
    )
    probe_timeout: float = _opt(
        10.0, "seconds a probed connection has to answer before it is replaced", advanced=True
    )
    backoff_initial: float = _opt(0.5, "first reconnect delay, seconds", advanced=True)
    backoff_max: float = _opt(30.0, "largest reconnect delay, seconds", advanced=True)
    max_connection_attempts: int = _opt(
        250, "WebSocket connection attempts allowed per window (Binance: 300 per 5 min)",
        advanced=True)  # fmt: skip
    connection_window: float = _opt(300.0, "window of that limit, seconds", advanced=True)
    rest_weight_limit: int = _opt(6000, "Binance REST weight per minute", advanced=True)
    rest_weight_window: float = _opt(
        60.0, "seconds of Binance's weight window (X-MBX-USED-WEIGHT-1M)", advanced=True
    )
    backfill_weight_share: float = _opt(
        0.8, "the backfill sends no request that would take the IP's weight (as Binance "
        "reports it, other clients included) past this share of the limit",
        advanced=True)  # fmt: skip
    backfill_endpoint: str = _opt(
        "aggTrades", "where gaps are fetched from: aggTrades (weight 4 a page of aggregates) "
        "or historicalTrades (weight 25 a page of trades)", advanced=True)  # fmt: skip
    backfill_workers: int = _opt(
        4, "concurrent backfill requests (each worker keeps its own connection)", advanced=True
    )
    backfill_delay: float = _opt(
        2.0, "seconds a gap waits for late frames before it is backfilled", advanced=True
    )
    backfill_max_trades: int = _opt(
        1_000_000, "largest gap backfilled; larger ones are counted as lost", advanced=True
    )
    history_workers: int = _opt(
        0, "processes that download and reduce archive files; 0: twice the cores, at most 8, "
        "with the C archive reader (they run below live ingest, and more than the cores hide "
        "the archive server's round trips), one core left for live ingest with polars'",
        advanced=True)  # fmt: skip
    archive_reader: str = _opt(
        "auto", "how archive CSVs are read: 'C' (built at install), 'polars', or 'auto' (C "
        "where it was built, polars otherwise)", advanced=True)  # fmt: skip
    trade_path: str = _opt(
        "auto", "how trades are applied: 'C' (the compiled per-trade path and median, built at "
        "install), 'python' (their pure twins), or 'auto' (C where it was built)",
        advanced=True)  # fmt: skip
    no_candles: bool = _opt(
        False, "keep no median candles (/{symbol}/candles answers no rows): a little less CPU "
        "a trade and less disk", advanced=True)  # fmt: skip
    user_agent: str = _opt(
        "medianserv", "User-Agent of the WebSocket connections (benchmarks tell two services "
        "apart by it)", advanced=True)  # fmt: skip
    read_coalesce: float = _opt(
        0.02, "seconds a reader lets a connection's frames gather after a short read before "
        "reading again (0: read at once): a wakeup costs far more than a frame, and a full "
        "read never waits", advanced=True)  # fmt: skip
    history_weight_share: float = _opt(
        0.5, "ceiling on the IP's REST weight for the history import (below the backfill's, so "
        "live gaps come first)", advanced=True)  # fmt: skip
    http_threads: int = _opt(4, "threads answering HTTP requests", advanced=True)
    switch_interval: float = _opt(
        0.001, "seconds a busy thread keeps Python's interpreter before another may take it "
        "(Python's default 0.005: a request waiting on a snapshot waits that long, several "
        "times over)", advanced=True)  # fmt: skip
    sample_interval: float = _opt(
        10.0, "seconds between samples of each symbol kept for the dashboard", advanced=True
    )
    sample_count: int = _opt(
        360, "samples kept per symbol (360 x 10 s: the last hour)", advanced=True
    )
    reset: bool = _opt(False, "start afresh: delete the snapshot store first", advanced=True)

    def history_names(self) -> frozenset[str] | None:
        """The symbols (upper case) whose history is requested; None: all."""
        return _symbols(self.history)

    def history_symbols(self, listed: Iterable[str]) -> list[str]:
        """The symbols whose history is requested, among ``listed`` (in its order)."""
        names = self.history_names()
        if names is None:
            return list(listed)
        return [s for s in listed if s.upper() in names]

    def reader(self) -> str:
        """The archive reader in use: ``C`` or ``polars``, as asked, or for ``auto`` the C
        one where it was built at install."""
        if self.archive_reader != "auto":
            return self.archive_reader
        from .archive import native_reader

        return "C" if native_reader() is not None else "polars"

    def compiled_trades(self) -> bool:
        """Whether trades go through the compiled per-trade path and median: ``trade_path``
        C, or auto where they were built at install."""
        if self.trade_path != "auto":
            return self.trade_path == "C"
        from .median import CRunningMedian

        return CRunningMedian is not None

    def pool_size(self) -> int:
        """History pool processes: ``history_workers``, or for 0 twice the cores (at most 8,
        at least 2) with the C reader, whose processes are small (about 70 MiB) and run
        below live ingest, so that more of them than cores hide the round trips to a
        distant archive server; one core left for live ingest with polars' (about 350 MiB
        a process)."""
        if self.history_workers:
            return self.history_workers
        cores = os.cpu_count() or 2
        return min(8, max(2, 2 * cores)) if self.reader() == "C" else max(1, cores - 1)

    def candle_keep_ms(self) -> list[int | None]:
        """How long each interval's candles are kept (1m, 1h, 1d), in ms; None: forever."""
        if _symbols(self.candle_forever) is None:
            return [None, None, None]
        days = (self.candle_minutes_days, self.candle_hours_days, 0.0)
        return [round(d * 86_400_000) or None for d in days]

    def candles_kept_forever(self) -> frozenset[str]:
        """The symbols (upper case) whose every candle is kept (``all``: see
        :meth:`candle_keep_ms`)."""
        return _symbols(self.candle_forever) or frozenset()

    def validate(self) -> Config:
        """Raise :class:`ConfigError` for any value out of range; returns self."""
        positive = ("snapshot_interval", "exchange_info_interval", "control_messages_per_second",
                    "silence_timeout", "probe_timeout", "backoff_initial", "backoff_max",
                    "connection_window", "rotate_after", "sample_interval",
                    "rest_weight_window", "switch_interval")  # fmt: skip
        for name in ("candle_minutes_days", "candle_hours_days"):
            if not 0 <= getattr(self, name) < 1e6:
                raise ConfigError(
                    f"{name} must be 0 (forever) or positive, not {getattr(self, name)}"
                )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 <= self.cache_max_age <= 86_400:
            raise ConfigError("cache_max_age must be within 0..86400 seconds")
        if self.sample_count < 2:
            raise ConfigError("sample_count must be at least 2")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port out of range: {self.port}")
        if not 1 <= self.max_streams_per_connection <= 1024:
            raise ConfigError("max_streams_per_connection must be within 1..1024")
        if not 0 < self.backfill_weight_share <= 1:
            raise ConfigError("backfill_weight_share must be within (0, 1]")
        if self.backfill_endpoint not in ("aggTrades", "historicalTrades"):
            raise ConfigError("backfill_endpoint must be aggTrades or historicalTrades")
        if not 1 <= self.http_threads <= 64:
            raise ConfigError("http_threads must be within 1..64")
        if not 1 <= self.backfill_workers <= 32:
            raise ConfigError("backfill_workers must be within 1..32")
        if not 0 <= self.history_workers <= 256:
            raise ConfigError("history_workers must be within 0..256 (0: by the cores)")
        if self.archive_reader not in ("auto", "C", "polars"):
            raise ConfigError("archive_reader must be auto, C or polars")
        if self.archive_reader == "C":
            from .archive import native_reader

            if native_reader() is None:
                raise ConfigError("archive_reader C: it was not built at install (no C compiler)")
        if self.trade_path not in ("auto", "C", "python"):
            raise ConfigError("trade_path must be auto, C or python")
        if self.trade_path == "C":
            from .median import CRunningMedian

            if CRunningMedian is None:
                raise ConfigError("trade_path C: it was not built at install (no C compiler)")
        if not 0 <= self.read_coalesce <= 0.1:
            raise ConfigError("read_coalesce must be within 0..0.1 seconds")
        if not 0 < self.history_weight_share <= 1:
            raise ConfigError("history_weight_share must be within (0, 1]")
        if not self.archive_url.startswith(("http://", "https://")):
            raise ConfigError(f"archive_url must start with http:// or https://: "
                              f"{self.archive_url!r}")  # fmt: skip
        if self.subscribe_batch_bytes < 100:
            raise ConfigError("subscribe_batch_bytes is too small for one stream name")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"unknown log level {self.log_level!r}")
        for name in ("rest_url", "ws_url"):
            url = getattr(self, name)
            schemes = ("http://", "https://") if name == "rest_url" else ("ws://", "wss://")
            if not url.startswith(schemes):
                raise ConfigError(f"{name} must start with {' or '.join(schemes)}: {url!r}")
        return self


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {text!r}")


def _convert(f: dataclasses.Field[Any], text: str) -> Any:
    kind: Callable[[str], Any] = type(f.default)
    try:
        if kind is bool:
            return _parse_bool(text)
        return kind(text)
    except ValueError as exc:
        raise ConfigError(f"{f.name}: cannot read {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """Add one option per Config field; defaults come from MEDIANSERV_* in ``env`` if set."""
    env = os.environ if env is None else env
    advanced = parser.add_argument_group("advanced")
    for f in dataclasses.fields(Config):
        env_name = ENV_PREFIX + f.name.upper()
        default = _convert(f, env[env_name]) if env_name in env else f.default
        target = advanced if f.metadata["advanced"] else parser
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {env_name}]"
        if isinstance(f.default, bool):
            target.add_argument(flag, action="store_true", default=default, help=help_text)
        else:
            target.add_argument(flag, type=partial(_convert, f), default=default, help=help_text)


def from_args(args: argparse.Namespace) -> Config:
    """The validated Config of parsed arguments."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    return Config(**values).validate()
