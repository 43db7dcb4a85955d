"""What a consumer does with each change: the handler contract and the built-in handlers.

A handler gets the changes of one batch in consumption order (per partition, binlog order)
and applies them in that order. It reports a failure by raising :class:`EventFailed` with
the index of the change that failed: the changes before it count as applied; the failed
one is retried with backoff when the failure is transient (destination down), or sent to
the dead-letter topic when it is not (the change itself is bad for this handler).

``handler = "package.module:function"`` wraps a user function, sync or async, that takes
the change event as a dict (``op``, ``before``, ``after``, ``changed``, ``key``, ...). It
may raise :class:`Transient` (or ``ConnectionError``/``TimeoutError``) to ask for a retry;
any other exception dead-letters that change.

``handler = "package.module:Class"`` names a :class:`Handler` subclass instead, which gets
whole batches of :class:`Change` (as Debezium's ``ChangeConsumer.handleBatch`` does): its
``head`` (op, source, scn, row) is decoded already, its ``event`` only when first read.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.event import Change
from app.errors import AesopError, ConfigError
from app.settings import ConsumerSettings, Settings


class Transient(AesopError):
    """Raised by a handler when the change could not be applied *yet*: retry it later."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (Transient, ConnectionError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Applied:
    """A partition's last applied change, as the destination recorded it."""

    offset: int
    source: str | None = None
    scn: int | None = None
    row: int | None = None


class EventFailed(AesopError):
    """``changes[index]`` failed; ``changes[:index]`` were applied."""

    def __init__(self, index: int, cause: BaseException, transient: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause
        self.transient = transient


__all__ = [
    "TRANSIENT_ERRORS",
    "Applied",
    "Change",
    "EventFailed",
    "Handler",
    "Transient",
    "load_function",
]


class Handler:
    """Base of every handler; ``apply`` is the one method a handler must implement."""

    def __init__(self, settings: Settings, consumer: ConsumerSettings, app: Any) -> None:
        self.settings = settings
        self.consumer = consumer
        self.app = app

    async def start(self) -> None:
        """Connect to whatever the handler writes to; called once before the first batch."""

    async def apply(self, changes: Sequence[Change]) -> None:
        raise NotImplementedError

    async def applied(self, topic: str, partition: int) -> Applied | None:
        """The last change the destination itself holds as applied in this partition
        (recorded with it, atomically), if the handler keeps one; the consumer skips what is
        at or below its offset, and re-published changes at or below its ``(scn, row)``."""
        return None

    async def stop(self) -> None:
        """Release connections; called once when the consumer stops."""


class FunctionHandler(Handler):
    """Calls a user function per change: async ones on the loop, sync ones in a thread."""

    def __init__(self, settings: Settings, consumer: ConsumerSettings, app: Any) -> None:
        super().__init__(settings, consumer, app)
        self.function = load_function(consumer)
        self.is_async = inspect.iscoroutinefunction(self.function)

    async def apply(self, changes: Sequence[Change]) -> None:
        if self.is_async:
            for index, change in enumerate(changes):
                try:
                    await self.function(change.event)
                except Exception as exc:
                    raise EventFailed(index, exc, isinstance(exc, TRANSIENT_ERRORS)) from exc
            return
        # One thread hop per batch, not per change: a sync function may block.
        failed = await asyncio.to_thread(self._call_all, changes)
        if failed is not None:
            index, error = failed
            raise EventFailed(index, error, isinstance(error, TRANSIENT_ERRORS)) from error

    def _call_all(self, changes: Sequence[Change]) -> tuple[int, Exception] | None:
        function = self.function
        for index, change in enumerate(changes):
            try:
                function(change.event)
            except Exception as exc:
                return index, exc
        return None


def load_function(consumer: ConsumerSettings) -> Callable[..., Any]:
    """Import ``package.module:function``; a one-line ConfigError if that is not possible."""
    module_name, _, attribute = consumer.handler.partition(":")
    where = f"[[consumer]] {consumer.name!r}.handler"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{where}: cannot import {module_name!r} ({exc}); put it on PYTHONPATH"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{where}: {module_name!r} has no function {attribute!r}")
    if isinstance(function, type) and not issubclass(function, Handler):
        raise ConfigError(
            f"{where}: {consumer.handler!r} is a class but not an agents.handlers.Handler; "
            "name a function, or a Handler subclass"
        )
    return function
