"""The aesop Faust app, settings and CLI; ``faust -A app worker`` finds ``app.app`` here."""

from typing import Any

__all__ = ["app", "settings"]


def __getattr__(name: str) -> Any:
    # Built on first use, so that `aesop check` and the settings tests need no Faust app.
    if name in __all__:
        from app import main

        return getattr(main, name)
    raise AttributeError(name)
