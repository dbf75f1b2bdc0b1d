"""``medianserv bench``: reproducible measurements (never timed assertions in tests).

Each suite lives in a module of its own and returns rows ``(name, value, unit)``; the CLI
prints them as a table and can write them as JSON. Figures vary with the machine: quote
medians of several runs, or ratios measured within one run (``slot()`` next to ``dict.get``,
our parser next to ``Decimal``, the import next to DuckDB on the same files).
"""

from __future__ import annotations

from .api import bench_api, load_generate
from .candles import bench_candles
from .common import Row, random_walk
from .core import bench_core
from .history import bench_history, synthetic_archives
from .ingest import bench_ingest, run_decode_client
from .long import bench_long
from .market import bench_market
from .recovery import bench_recovery
from .scale import bench_scale
from .snapshot import bench_snapshot
from .soak import bench_soak

__all__ = [
    "Row",
    "bench_api",
    "bench_candles",
    "bench_core",
    "bench_history",
    "bench_ingest",
    "bench_long",
    "bench_market",
    "bench_recovery",
    "bench_scale",
    "bench_snapshot",
    "bench_soak",
    "load_generate",
    "random_walk",
    "run_decode_client",
    "synthetic_archives",
]
