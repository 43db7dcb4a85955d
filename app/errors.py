"""The aesop exception hierarchy: one root, one-line messages that tell the operator what to do."""


class AesopError(Exception):
    """Root of every error aesop raises on purpose; str(err) is a one-line, actionable message."""

    exit_code = 1


class ConfigError(AesopError):
    """The configuration file or environment is invalid."""

    exit_code = 2


class SourceError(AesopError):
    """A source server is unreachable, misconfigured or lacks a privilege."""


class PositionLostError(SourceError):
    """The binlog file a checkpoint points at no longer exists on the server."""


class GtidError(SourceError):
    """A GTID start or checkpoint the server cannot serve: no GTIDs, or another flavour's.
    Bad input rather than a server fault: ``aesop check`` exits 2."""

    exit_code = 2


class GtidPurgedError(PositionLostError, GtidError):
    """A GTID set (a start, a checkpoint's) that lacks transactions the server purged."""


class DecodeError(SourceError):
    """A binlog event could not be decoded; continuing would silently drop changes."""


class LibraryVersionError(AesopError):
    """An installed library is not a version whose internals aesop was written against."""

    exit_code = 2
