"""The exception tree of medianserv.

::

    MedianservError                  base of every error we raise on purpose
     +-- InputError                  bad data from outside: rejected, counted, never fatal
     |    +-- PriceError             a price string that is not a plain decimal with <= 8 decimals
     |    +-- SymbolError            a symbol name that cannot be hashed (e.g. a lone surrogate)
     +-- PerfectHashError            a key set on which no perfect hash could be built
     +-- ConfigError                 an invalid setting: the service refuses to start

Input errors are expected (the exchange misbehaves); the caller counts them and carries on.
Anything else escaping a worker is a bug: the thread dies and its supervisor restarts it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "MedianservError",
    "PerfectHashError",
    "PriceError",
    "SymbolError",
]


class MedianservError(Exception):
    """Base class of every error medianserv raises deliberately."""


class InputError(MedianservError, ValueError):
    """Data from outside that we reject: counted and skipped, never fatal."""


class PriceError(InputError):
    """A price string that is not a plain non-negative decimal with at most 8 decimals."""


class SymbolError(InputError):
    """A symbol name that cannot be encoded to UTF-8 for hashing."""


class PerfectHashError(MedianservError):
    """No perfect hash could be built over the given keys (duplicate keys, or a hash collision)."""


class ConfigError(MedianservError, ValueError):
    """A configuration value out of range; the service refuses to start."""
