"""The worker's entry: ``faust -A app worker`` reaches ``build()`` through ``app.app``.

Settings come from ``AESOP_CONFIG`` (default ./aesop.toml) and ``AESOP_*`` variables, and
``app.factory.create_app`` builds the app from them. A bad config, or a consumer handler that
cannot be imported, is one line on stderr and exit 2, with no traceback.
"""

from __future__ import annotations

import sys

import faust

from app import settings as settings_module
from app.errors import AesopError
from app.factory import create_app


def build(path: str | None = None) -> faust.App:
    """The worker's app, from the config at ``path`` (default: ``AESOP_CONFIG``)."""
    try:
        return create_app(settings_module.load(path))
    except AesopError as exc:
        print(f"aesop: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
