"""The handler a ``[[consumer]]`` names: a built-in one, a user function or Handler subclass."""

from __future__ import annotations

from typing import Any

from agents.handlers import FunctionHandler, Handler, load_function
from agents.mysql import MySQLHandler
from agents.route import RouteHandler
from app.settings import ConsumerSettings, Settings

BUILT_IN: dict[str, type[Handler]] = {"mysql": MySQLHandler, "route": RouteHandler}


def build_handler(settings: Settings, consumer: ConsumerSettings, app: Any) -> Handler:
    """The handler of ``consumer``; a one-line ConfigError if it cannot be imported."""
    built_in = BUILT_IN.get(consumer.handler)
    if built_in is not None:
        return built_in(settings, consumer, app)
    target = load_function(consumer)
    if isinstance(target, type):  # a Handler subclass: it gets each batch of changes
        return target(settings, consumer, app)
    return FunctionHandler(settings, consumer, app)
