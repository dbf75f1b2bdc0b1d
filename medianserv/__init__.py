"""medianserv: the exact running median of every Binance spot trade price, served over REST.

The pure core (:mod:`~medianserv.prices`, :mod:`~medianserv.median`,
:mod:`~medianserv.perfect_hash`, :mod:`~medianserv.messages`) does no I/O; the threaded
layers around it (streams, snapshotter, API, service) own sockets, locks and LMDB.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
