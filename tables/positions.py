"""Binlog positions, SCNs and the relay checkpoint: the relay's own types, free of any driver."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from app.errors import SourceError


def file_sequence(binlog_file: str) -> int:
    """The numeric suffix of a binlog file name: ``mysql-bin.000003`` -> 3."""
    try:
        return int(binlog_file.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        raise SourceError(
            f"binlog file name {binlog_file!r} has no numeric suffix; "
            "aesop needs log-bin names like mysql-bin.000003"
        ) from None


def scn_of(binlog_file: str, pos: int) -> int:
    """Aesop's SCN: ``(file sequence << 32) | position``."""
    return file_sequence(binlog_file) << 32 | pos


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a binlog where reading can start: always a transaction boundary."""

    file: str
    pos: int
    gtid: str | None = None  # the GTID of the transaction that ends here
    # Every transaction executed through here, in the server's GTID set syntax (MySQL:
    # ``uuid:1-57``; MariaDB: ``0-1-57``, the last per domain); None where the server has no
    # GTIDs. Resuming by it yields the same file:pos, hence the same SCNs.
    gtid_set: str | None = None

    @classmethod
    def parse(cls, text: str) -> Position:
        """``mysql-bin.000003:4`` -> Position."""
        file, _, pos = text.rpartition(":")
        return cls(file, int(pos))

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"


@dataclass(frozen=True, slots=True)
class SnapshotProgress:
    """A source's snapshot still to do, kept in its checkpoint: the tables in order, the first
    one under way, read up to ``after`` (the last key Kafka acknowledged, in the stored form of
    ``relay.snapshot``), ``done`` of its rows published in ``chunks`` chunks, of about
    ``estimate`` (the server's row estimate when its first chunk was read; None before)."""

    kind: str  # "initial" (snapshot = "initial") or "incremental" (aesop snapshot)
    tables: tuple[tuple[str, str], ...]  # (db, table)
    after: tuple[Any, ...] | None = None
    done: int = 0
    rows: int = 0  # rows published by this snapshot, every table
    chunks: int = 0
    estimate: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tables": [list(t) for t in self.tables],
            "after": None if self.after is None else list(self.after),
            "done": self.done,
            "rows": self.rows,
            "chunks": self.chunks,
            "estimate": self.estimate,
        }

    @classmethod
    def from_json(cls, data: Any) -> SnapshotProgress:
        after = data.get("after")
        return cls(
            kind=str(data["kind"]),
            tables=tuple((str(db), str(table)) for db, table in data["tables"]),
            after=None if after is None else tuple(after),
            done=int(data.get("done", 0)),
            rows=int(data.get("rows", 0)),
            chunks=int(data.get("chunks", 0)),
            estimate=None if data.get("estimate") is None else int(data["estimate"]),
        )


# A source's include and exclude globs.
TableGlobs = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a source's relay resumes, and the last event Kafka acknowledged.

    ``file``/``pos`` is a transaction boundary at or before the event ``(scn, row)``;
    on resume the relay reads from there and publishes nothing at or below ``(scn, row)``.
    ``gtid_set`` is the executed GTID set at ``file``/``pos`` (None where the server has no
    GTIDs, and in checkpoints written before aesop kept it); with it, the relay resumes by
    GTID at the same place. ``tables`` is the source's include and exclude globs when it was
    written, kept by sources with ``snapshot_new_tables`` so that the next start can tell which
    tables a changed config adds.
    """

    file: str
    pos: int
    gtid: str | None
    scn: int
    row: int
    ts_ms: int
    gtid_set: str | None = None  # the executed GTID set up to file:pos, where the server has GTIDs
    snapshot: SnapshotProgress | None = None  # a snapshot under way
    tables: TableGlobs | None = None  # (include, exclude), with snapshot_new_tables

    @property
    def position(self) -> Position:
        return Position(self.file, self.pos, self.gtid, self.gtid_set)

    @property
    def last(self) -> tuple[int, int]:
        return (self.scn, self.row)

    @classmethod
    def at(
        cls,
        position: Position,
        last: tuple[int, int] | None = None,
        snapshot: SnapshotProgress | None = None,
        tables: TableGlobs | None = None,
    ) -> Checkpoint:
        """A checkpoint at ``position``; with no ``last``, nothing before it is skipped."""
        scn, row = last if last is not None else (scn_of(position.file, position.pos), -1)
        return cls(
            position.file,
            position.pos,
            position.gtid,
            scn,
            row,
            int(time.time() * 1000),
            position.gtid_set,
            snapshot,
            tables,
        )

    def to_json(self) -> dict[str, Any]:
        """``{file, pos, gtid, scn, row, ts_ms}``, ``gtid_set`` where there is one,
        ``snapshot`` while one is under way, and ``tables`` where kept."""
        data: dict[str, Any] = {"file": self.file, "pos": self.pos, "gtid": self.gtid,
                                "scn": self.scn, "row": self.row, "ts_ms": self.ts_ms}  # fmt: skip
        if self.gtid_set is not None:
            data["gtid_set"] = self.gtid_set
        if self.snapshot is not None:
            data["snapshot"] = self.snapshot.to_json()
        if self.tables is not None:
            data["tables"] = {"include": list(self.tables[0]), "exclude": list(self.tables[1])}
        return data

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Read a stored checkpoint; anything malformed is an error, never a silent restart."""
        try:
            return cls(
                file=str(data["file"]),
                pos=int(data["pos"]),
                gtid=data.get("gtid"),
                scn=int(data["scn"]),
                row=int(data["row"]),
                ts_ms=int(data.get("ts_ms", 0)),
                gtid_set=_optional_text(data.get("gtid_set")),
                snapshot=(
                    None
                    if data.get("snapshot") is None
                    else SnapshotProgress.from_json(data["snapshot"])
                ),
                tables=_globs(data.get("tables")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SourceError(
                f"stored checkpoint {data!r} is malformed; fix or delete it to restart from 'start'"
            ) from None


def _globs(value: Any) -> TableGlobs | None:
    if value is None:
        return None
    include, exclude = value["include"], value["exclude"]
    if not all(isinstance(glob, str) for glob in [*include, *exclude]):
        raise TypeError(f"expected globs, got {value!r}")
    return tuple(include), tuple(exclude)


def _optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected text, got {value!r}")


@dataclass(frozen=True, slots=True)
class AppliedPosition:
    """The last change applied in a partition, and the last offset processed there."""

    scn: int
    row: int
    offset: int | None = None
    ts_ms: int = 0
    source: str | None = None  # None when read from the ZooKeeper mirror

    def moved_to(self, offset: int, ts_ms: int) -> AppliedPosition:
        """The same change, with later offsets processed (skipped or dead-lettered)."""
        return replace(self, offset=offset, ts_ms=ts_ms)

    def to_json(self) -> dict[str, Any]:
        """The table's form: ``{scn, row, offset, ts_ms, source}``."""
        return {"scn": self.scn, "row": self.row, "offset": self.offset, "ts_ms": self.ts_ms,
                "source": self.source}  # fmt: skip

    def mirror_json(self) -> dict[str, Any]:
        """ZooKeeper's form: ``{scn, row, offset, ts_ms}``."""
        return {"scn": self.scn, "row": self.row, "offset": self.offset, "ts_ms": self.ts_ms}

    @classmethod
    def from_json(cls, data: Any) -> AppliedPosition | None:
        """Either form; None for nothing stored."""
        if data is None:
            return None
        offset = data.get("offset")
        return cls(
            scn=int(data["scn"]),
            row=int(data["row"]),
            offset=None if offset is None else int(offset),
            ts_ms=int(data.get("ts_ms") or 0),
            source=data.get("source"),
        )
