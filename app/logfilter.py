"""Rate limit for the lines aiokafka repeats while Kafka is unreachable (about 130 a second).

The first line of each kind goes through; the same kind again within ``INTERVAL_S`` is
counted, not written, and the first one after the interval carries the count of those
held back. A kind is a logger, level and message template, so "node 1 unreachable" and
"node 2 unreachable" are one kind and a new kind of error is never hidden behind another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

INTERVAL_S = 10.0
LOGGER_PREFIX = "aiokafka"


class RepeatFilter(logging.Filter):
    """Lets one record per kind and interval through, with the count of those it held back."""

    def __init__(
        self,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.level = level
        self._lock = threading.Lock()
        # kind -> (when its interval began, how many records were held back in it)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            entry = self._seen.get(kind)
            if entry is not None and now - entry[0] < self.interval:
                self._seen[kind] = (entry[0], entry[1] + 1)
                return False
            self._seen[kind] = (now, 0)
        if entry is not None and entry[1]:
            began, held = entry
            # Appended to the template, args untouched: handlers format the record later.
            record.msg = (
                f"{record.msg} [{held} more like this in the last {now - began:.0f}s not shown]"
            )
        return True


def install(prefix: str = LOGGER_PREFIX, interval: float = INTERVAL_S) -> RepeatFilter:
    """Put one shared RepeatFilter on every logger named ``prefix`` or below it.

    A logger's filters see only its own records, not its children's, so each aiokafka
    module logger gets it; they are created when aiokafka is imported, which faust does.
    """
    import aiokafka  # noqa: F401  (its module loggers must exist)

    shared = RepeatFilter(interval)
    names = [
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name == prefix or name.startswith(prefix + ".")
    ]
    for name in [prefix, *names]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(shared)
    return shared
