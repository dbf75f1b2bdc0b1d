"""Reading Binance stream recordings (gzip text: ``<receive timestamp> <raw message>`` a line).

Used by the simulator's replay, the tests and the benchmarks. Pure apart from the file read.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

__all__ = ["read_trade_frames"]


def read_trade_frames(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(receive_timestamp, raw_frame)`` for every trade message in a recording.

    Depth and bookTicker lines are skipped. O(file size), streaming.
    """
    with gzip.open(path, "rb") as lines:
        for line in lines:
            stamp, _, frame = line.rstrip(b"\n").partition(b" ")
            if b'"e":"trade"' in frame:
                yield int(stamp), frame
