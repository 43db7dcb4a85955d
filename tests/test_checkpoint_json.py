"""A checkpoint's stored form, with and without a snapshot under way (no server needed)."""

from __future__ import annotations

import pytest

from app.errors import SourceError
from relay.snapshot import fetched_key, stored_key
from tables.positions import Checkpoint, Position, SnapshotProgress


def test_a_checkpoint_without_a_snapshot_keeps_the_contracts_keys() -> None:
    checkpoint = Checkpoint.at(Position("mysql-bin.000003", 1234, "0-1-57"), (5, 2))
    document = checkpoint.to_json()
    assert set(document) == {"file", "pos", "gtid", "scn", "row", "ts_ms"}
    assert Checkpoint.from_json(document) == checkpoint


def test_a_snapshot_under_way_survives_the_round_trip() -> None:
    progress = SnapshotProgress("initial", (("shop", "orders"), ("shop", "items")),
                                ("41", {"b64": "/wA="}), 2048, 4096, 1, 30_000)  # fmt: skip
    checkpoint = Checkpoint.at(Position("mysql-bin.000003", 4), None, progress)
    document = checkpoint.to_json()
    assert document["snapshot"] == {
        "kind": "initial", "tables": [["shop", "orders"], ["shop", "items"]],
        "after": ["41", {"b64": "/wA="}], "done": 2048, "rows": 4096, "chunks": 1,
        "estimate": 30_000,
    }  # fmt: skip
    assert Checkpoint.from_json(document) == checkpoint


def test_progress_written_before_chunks_and_estimate_were_kept_reads_as_unknown() -> None:
    document = Checkpoint.at(Position("mysql-bin.000003", 4)).to_json()
    older = {"kind": "incremental", "tables": [["shop", "items"]], "after": None, "done": 0,
             "rows": 0}  # fmt: skip
    progress = Checkpoint.from_json({**document, "snapshot": older}).snapshot
    assert progress == SnapshotProgress("incremental", (("shop", "items"),))
    assert (progress.chunks, progress.estimate) == (0, None)


def test_a_malformed_snapshot_is_an_error_not_a_restart() -> None:
    document = Checkpoint.at(Position("mysql-bin.000003", 4)).to_json()
    with pytest.raises(SourceError, match="is malformed"):
        Checkpoint.from_json({**document, "snapshot": {"tables": 3}})


def test_a_fetched_key_is_stored_as_json_and_read_back_as_it_was() -> None:
    raw = ["12", b"\xff\x00", "é"]
    stored = stored_key(raw)
    assert stored == ("12", {"b64": "/wA="}, "é")
    assert fetched_key(stored) == raw
