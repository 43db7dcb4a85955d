"""The aesop Faust app, settings and CLI; ``faust -A app worker`` finds ``app.app`` here.

``app.app`` is built on first use (``app.main.build``), so that importing ``app.settings``,
running ``aesop check`` or a unit test builds no worker.
"""

from typing import Any

__all__ = ["app"]

_built: Any = None


def __getattr__(name: str) -> Any:
    global _built
    if name == "app":
        if _built is None:
            from app.main import build

            _built = build()
        return _built
    raise AttributeError(name)
