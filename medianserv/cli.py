"""The ``medianserv`` command line: the service and its sub-commands (``bench`` ...)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

#: ../shared/data beside a checkout: real Binance data used by benchmarks when present.
DEFAULT_SHARED_DATA = Path("../shared/data")


def _print_rows(rows: Sequence[object]) -> None:
    from .bench import Row

    for row in rows:
        assert isinstance(row, Row)
        value = f"{row.value:.4g}" if row.value < 100 else f"{row.value:,.0f}"
        print(f"{row.name:<58} {value:>14} {row.unit}")


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_core

    shared = args.shared_data if args.shared_data.exists() else None
    rows = bench_core(args.sizes, shared)
    _print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in rows], indent=1) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medianserv",
        description="Exact running median of every Binance spot trade price, served over REST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="measure the core: median add/read, memory per level, parsing, perfect hash",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("suite", choices=["core"], nargs="?", default="core")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medianserv`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result
