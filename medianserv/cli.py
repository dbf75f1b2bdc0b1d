"""The ``medianserv`` command line: the service (no sub-command) and its sub-commands.

``medianserv [options]`` runs the service; ``demo`` runs it against the built-in simulator;
``simulate`` runs the simulator alone; ``snapshot info|export`` inspect a store; ``bench``
measures. Every service option is also a ``MEDIANSERV_*`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

__all__ = ["main"]

#: ../shared/data beside a checkout: real Binance data used by benchmarks when present.
DEFAULT_SHARED_DATA = Path("../shared/data")


def _markets(text: str) -> list[str]:
    """``--markets``: the names, refused (argparse's exit 2) unless each is one the ingest
    benchmark has (:func:`~medianserv.bench.ingest.check_markets`)."""
    from .bench.ingest import check_markets

    markets = text.split(",")
    try:
        check_markets(markets)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return markets


def _print_rows(rows: Sequence[object]) -> None:
    from .bench import Row

    for row in rows:
        assert isinstance(row, Row)
        value = f"{row.value:.4g}" if row.value < 100 else f"{row.value:,.0f}"
        if row.unit == "x":  # a ratio, held to a goal such as 1.1: 1.1001 is not "1.1"
            value = f"{row.value:.3f}"
        print(f"{row.name:<58} {value:>14} {row.unit}")


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    shared = args.shared_data if args.shared_data.exists() else None
    if args.suite == "decode-client":  # the yardstick's process in the ingest benchmark
        bench.run_decode_client(args.url, args.rest_url, args.seconds)
        return 0
    if args.suite == "load":  # the load generator process of the api benchmark
        print(
            json.dumps(
                bench.load_generate(args.url, json.loads(args.paths), args.rps, args.seconds)
            )
        )
        return 0
    suites = ["core", "ingest", "api", "snapshot", "long"] if args.suite == "all" else [args.suite]
    rows: list[bench.Row] = []
    for suite in suites:
        print(f"== {suite}", flush=True)
        if suite == "core":
            rate = int(args.tps or 25_000)  # the candle cost: minutes of a market this fast
            part = bench.bench_core(args.sizes, shared, int((args.minutes or 2.0) * 60 * rate),
                                    rate)  # fmt: skip
        elif suite == "ingest":
            markets = {} if args.markets is None else {"markets": tuple(args.markets)}
            part = bench.bench_ingest(args.seconds, shared, args.rounds, **markets,
                                      huge_pages=args.huge_pages)  # fmt: skip
        elif suite == "api":
            part = bench.bench_api(args.seconds, args.rates, shared)
        elif suite == "snapshot":
            part = bench.bench_snapshot(args.levels, shared)
        elif suite == "history" and args.market:
            part = bench.bench_market(args.symbols, args.trades, args.archive_dir, shared,
                                      args.workers, args.latency_ms)  # fmt: skip
        elif suite == "history":
            part = bench.bench_history(args.trades, args.files or 10, args.archive_dir, shared)
        elif suite == "candles":
            part = bench.bench_candles(args.trades_per_day)
        elif suite == "scale":
            part = bench.bench_scale(args.prices, args.files or 100, args.share)
        elif suite == "soak":
            part = bench.bench_soak(args.minutes or 60.0, tps=args.tps or 16_000.0,
                                    walk_levels=args.walk_levels,
                                    compare_candles=args.compare_candles)  # fmt: skip
        elif suite == "recovery":
            part = bench.bench_recovery(
                shared, tps=args.tps or 300.0, down_seconds=args.down_seconds,
                down_tps=args.down_tps, kills=args.kills, endpoints=args.endpoints,
            )  # fmt: skip
        else:
            part = bench.bench_long(args.trades)
        _print_rows(part)
        rows += part
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in rows], indent=1) + "\n")
    return 0


def _install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; a second signal exits at once."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per event, ours
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "queue depth" at each burst


def _prepare(args: argparse.Namespace) -> tuple[Config, threading.Event] | None:
    """The validated Config, logging set up and a stop event wired to the signals."""
    from .config import from_args
    from .errors import ConfigError

    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"medianserv: {exc}", file=sys.stderr)
        return None
    _setup_logging(config.log_level)
    stop = threading.Event()
    _install_stop_handlers(stop)
    return config, stop


def _cmd_serve(args: argparse.Namespace) -> int:
    from .service import Service

    prepared = _prepare(args)
    if prepared is None:
        return 2
    config, stop = prepared
    return Service(config).run(stop)


def _cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from .service import Service
    from .sim.server import SimConfig, Simulator

    prepared = _prepare(args)
    if prepared is None:
        return 2
    config, stop = prepared
    sim_config = SimConfig(
        exchange_info=args.exchange_info, symbols=args.symbols, trades_per_second=args.tps,
        past_days=args.past_days, past_trades_per_day=args.past_trades_per_day,
    )  # fmt: skip
    with Simulator(sim_config) as sim:
        config = dataclasses.replace(
            config, rest_url=sim.rest_url, ws_url=sim.ws_url, archive_url=sim.archive_url
        )
        logging.getLogger("medianserv.demo").info(
            "demo: simulated Binance at %s (%d symbols, %g trades/s); truth at %s/_sim/truth",
            sim.rest_url, len(sim.listed()), args.tps, sim.rest_url,
        )  # fmt: skip
        return Service(config).run(stop)


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from .prices import format_median, format_price
    from .store import Store, StoreError

    if args.action == "compact":
        try:
            before, after = Store.compact(args.data_dir)
        except StoreError as exc:
            print(f"medianserv: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"bytes_before": before, "bytes_after": after}))
        return 0
    try:
        store = Store.open(args.data_dir, readonly=True)
    except StoreError as exc:
        print(f"medianserv: {exc}", file=sys.stderr)
        return 2
    try:
        if args.action == "info":
            print(json.dumps(store.info(), indent=1))
            return 0
        progress = lambda s, n: print(f"reading: {s} symbols, {n} levels", file=sys.stderr)  # noqa: E731
        for state in store.load(progress=progress):
            from .symbols import SymbolStats

            twice = SymbolStats.restore(state).median.twice_median
            print(json.dumps({
                "symbol": state.symbol,
                "count": state.count,
                "median": None if twice is None else format_median(twice),
                "last_price": None if state.last_price is None else format_price(state.last_price),
                "last_trade_id": None if state.last_trade_id < 0 else state.last_trade_id,
                "levels": len(state.levels),
                "missing_trades": state.ids.missing,
                "lost_trades": state.ids.lost,
            }))  # fmt: skip
        return 0
    except StoreError as exc:
        print(f"medianserv: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .sim.server import SimConfig, Simulator, iter_config_overrides

    config = SimConfig(
        host=args.host,
        port=args.port,
        exchange_info=args.exchange_info,
        symbols=args.symbols,
        seed=args.seed,
        trades_per_second=args.tps,
        past_days=args.past_days,
        past_trades_per_day=args.past_trades_per_day,
        replay=tuple(args.replay),
        replay_speed=args.replay_speed,
        **dict(iter_config_overrides(args.set)),
    )
    stop = threading.Event()
    _install_stop_handlers(stop)
    with Simulator(config) as sim:
        print(f"simulated Binance: REST {sim.rest_url}  WebSocket {sim.ws_url}  "
              f"archives {sim.archive_url}", flush=True)  # fmt: skip
        print(
            f"ground truth: {sim.rest_url}/_sim/truth   counters: {sim.rest_url}/_sim/stats",
            flush=True,
        )
        stop.wait()
    return 0


def _past_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--past-days", type=int, default=0,
        help="give the simulated symbols this many days of trades before now, served as "
        "Binance's archives too (try it with --history all)",
    )  # fmt: skip
    parser.add_argument(
        "--past-trades-per-day", type=float, default=20.0,
        help="trades a day per symbol in that past",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medianserv",
        description="Exact running median of every Binance spot trade price, served over REST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from .config import DEFAULT_DATA_DIR, add_arguments

    add_arguments(parser)
    parser.set_defaults(func=_cmd_serve)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="the service against the built-in Binance simulator: try it offline",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(demo)
    demo.set_defaults(data_dir=DEFAULT_DATA_DIR / "demo")
    demo.add_argument("--tps", type=float, default=200.0, help="simulated trades per second")
    demo.add_argument("--symbols", type=int, default=2000, help="simulated symbols")
    _past_arguments(demo)
    demo.add_argument(
        "--exchange-info", type=Path, default=None,
        help="a saved exchangeInfo to simulate, e.g. ../shared/data/exchangeInfo-2023-09-08.json",
    )  # fmt: skip
    demo.set_defaults(func=_cmd_demo)

    snap = sub.add_parser(
        "snapshot",
        help="inspect a snapshot store: info (counts, size, age) or export (JSON lines), "
        "beside the service; or compact its file (the service stopped)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    snap.add_argument("action", choices=["info", "export", "compact"])
    snap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the data directory")
    snap.set_defaults(func=_cmd_snapshot)

    bench = sub.add_parser(
        "bench",
        help="benchmarks: core, ingest, api, snapshot, long, or all; history, recovery, scale "
        "and soak run alone",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument(
        "suite",
        choices=["core", "ingest", "api", "snapshot", "long", "history", "recovery", "scale", "all",
                 "soak", "candles", "load", "decode-client"],
        nargs="?", default="all",
        help="'all' runs every suite but history and recovery (long on their own)",
    )  # fmt: skip
    bench.add_argument("--seconds", type=float, default=10.0, help="measuring time (ingest, api)")
    bench.add_argument("--rounds", type=int, choices=range(1, 101), default=1, metavar="N",
                       help="ingest: rounds of windows A B C C B A per market (1-100)")  # fmt: skip
    bench.add_argument(
        "--markets", type=_markets, default=None, metavar="M1,M2",
        help="ingest: its markets, comma-separated, of walk, fresh, hot and real (real needs "
        "the shared data; default: all)",
    )  # fmt: skip
    bench.add_argument("--huge-pages", action="store_true",
                       help="ingest: compare huge pages, not candles: the second service "
                       "keeps candles too, the first asks glibc's malloc for huge pages "
                       "(GLIBC_TUNABLES=glibc.malloc.hugetlb=1)")  # fmt: skip
    bench.add_argument(
        "--tps", type=float, default=None,
        help="offered trades/s (recovery: 300; soak: 16,000; core's candle cost: 25,000)",
    )  # fmt: skip
    bench.add_argument(
        "--down-seconds", type=float, default=600.0,
        help="recovery: how long the service is down before the last restart (0: skip)",
    )  # fmt: skip
    bench.add_argument("--down-tps", type=float, default=3000.0,
                       help="recovery: trades/s while it is down")  # fmt: skip
    bench.add_argument("--kills", type=int, default=3, help="recovery: SIGKILL/restart rounds")
    bench.add_argument(
        "--endpoints", type=lambda s: s.split(","), default=["historicalTrades", "aggTrades"],
        help="recovery: backfill endpoints to compare, comma-separated (before,after)",
    )  # fmt: skip
    bench.add_argument("--rps", type=float, default=2000.0, help=argparse.SUPPRESS)
    bench.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")],
        default=[500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0],
        help="api: offered requests/s, comma-separated",
    )  # fmt: skip
    bench.add_argument("--levels", type=int, default=10_000_000, help="levels stored (snapshot)")
    bench.add_argument("--trades", type=lambda s: int(float(s)), default=10**8,
                       help="trades (long, history)")  # fmt: skip
    bench.add_argument("--trades-per-day", type=lambda s: int(float(s)), default=1_500_000,
                       help="candles: trades a day of the BTCUSDT-like symbol")  # fmt: skip
    bench.add_argument("--files", type=int, default=None,
                       help="history: monthly archive files (10); scale: files imported, a "
                       "snapshot every 10 (100)")  # fmt: skip
    bench.add_argument(
        "--market",
        action="store_true",
        help="history: the whole market's rehearsal (--symbols, --trades)",
    )
    bench.add_argument("--symbols", type=int, default=300, help="history --market: symbols")
    bench.add_argument(
        "--workers",
        type=int,
        default=None,
        help="history --market: pool processes (default: the service's)",
    )
    bench.add_argument("--latency-ms", type=float, default=0.0,
                       help="history --market: each archive answer held back this long, as "
                       "a round trip to a CDN would")  # fmt: skip
    bench.add_argument("--minutes", type=float, default=None,
                       help="soak: how long, at --tps (16,000 by default) trades/s (60); core: "
                            "the market minutes the candle cost runs, at --tps (25,000 by "
                            "default) trades/s (2)")  # fmt: skip
    bench.add_argument("--walk-levels", type=int, default=0,
                       help="soak: keep each symbol's price within this many ticks, a market "
                       "whose levels stop growing (0: a free walk)")  # fmt: skip
    bench.add_argument("--compare-candles", action="store_true",
                       help="soak: a second service with --no-candles beside it, same "
                       "trades, same minutes")  # fmt: skip
    bench.add_argument("--share", type=float, default=1.0,
                       help="scale: the share of each lock hold's repetitions and of a "
                       "file's pairs (1: all; a smoke test takes less)")  # fmt: skip
    bench.add_argument("--prices", type=lambda s: int(float(s)), default=10**7,
                       help="scale: distinct prices in one median")  # fmt: skip
    bench.add_argument(
        "--archive-dir", type=Path, default=None,
        help="history: keep the generated archives here (and reuse them)",
    )  # fmt: skip
    bench.add_argument("--url", help=argparse.SUPPRESS)
    bench.add_argument("--rest-url", help=argparse.SUPPRESS)
    bench.add_argument("--paths", help=argparse.SUPPRESS)
    bench.add_argument(
        "--sizes",
        type=lambda s: [int(float(x)) for x in s.split(",")],
        default=[10**6, 10**7],
        help="trade counts for the median benchmarks, comma-separated (1e6,1e7)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument(
        "--shared-data",
        type=Path,
        default=DEFAULT_SHARED_DATA,
        help="folder of real Binance data (exchangeInfo); skipped when absent",
    )
    bench.set_defaults(func=_cmd_bench)

    sim = sub.add_parser(
        "simulate",
        help="run the built-in Binance simulator (REST + WebSocket on one port)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=int, default=9443, help="port (0: any free port)")
    sim.add_argument(
        "--exchange-info", type=Path, default=None,
        help="a saved exchangeInfo JSON to list (default: generate --symbols symbols)",
    )  # fmt: skip
    sim.add_argument("--symbols", type=int, default=2000, help="how many symbols to generate")
    sim.add_argument("--seed", type=int, default=1, help="seed of the generated market")
    sim.add_argument("--tps", type=float, default=1000.0, help="trades per second, all symbols")
    _past_arguments(sim)
    sim.add_argument(
        "--replay", type=Path, nargs="*", default=[],
        help="recordings (gzip) to replay instead of generating trades",
    )  # fmt: skip
    sim.add_argument("--replay-speed", type=float, default=1.0, help="0: as fast as possible")
    sim.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="any other simulator limit, e.g. --set max_streams_per_connection=5 "
        "--set connection_lifetime=30 (see SimConfig)",
    )  # fmt: skip
    sim.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medianserv`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("simulate", "bench"):
        _setup_logging("INFO")
    result: int = args.func(args)
    return result
