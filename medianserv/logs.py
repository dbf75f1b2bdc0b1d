"""Rate-limited logging: bad input is logged, but never once per frame."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog", "ThreadErrors"]


class RateLimitedLog:
    """Log each ``key`` at most once per ``interval`` seconds, saying how many were held back.

    Thread-safe; O(1) per call. Keys are few (one per kind of rejection), so memory is small.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()  # guards _last and _held
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(
        self, level: int, key: str, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> bool:
        """Log unless ``key`` was logged less than ``interval`` ago; True if logged. With
        ``exc_info``, the exception's traceback is logged too."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            msg += f" ({held} more like it in the last {self.interval:.0f} s)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)


class ThreadErrors:
    """Unexpected exceptions caught in worker threads (our own bugs, or something the code did
    not foresee), counted by thread role (``backfill``, ``history``, ...) and logged with their
    traceback, at most once per 10 s per role. The worker that caught one retries its unit of
    work with backoff; the supervisor's restart of a dead thread is only the last line.
    Thread-safe; O(1) per call.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._lock = threading.Lock()  # guards counts
        self.counts: dict[str, int] = {}
        self._log = RateLimitedLog(logger or logging.getLogger("medianserv.threads"))

    def record(self, role: str, exc: BaseException, doing: str) -> None:
        """Count ``exc`` against ``role`` and log it with what the thread was ``doing``."""
        with self._lock:
            self.counts[role] = self.counts.get(role, 0) + 1
        self._log.log(
            logging.ERROR, role, "unexpected error in %s while %s: %s: %s; retrying with "
            "backoff", role, doing, type(exc).__name__, exc, exc_info=exc,
        )  # fmt: skip

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
