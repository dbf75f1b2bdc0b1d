"""The built-in Binance simulator: a faithful local exchange for tests, demos and benchmarks.

:mod:`.market` is pure (listings, trade generation, ground truth); :mod:`.server` serves it
over REST and WebSocket on loopback with Binance's limits and injectable faults.
"""

from __future__ import annotations

from .market import Listing, Market, Trade
from .server import SimConfig, Simulator

__all__ = ["Listing", "Market", "SimConfig", "Simulator", "Trade"]
