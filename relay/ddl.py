"""The tables a DDL statement brings into being under a name: CREATE TABLE's, and the new
names of RENAME TABLE and ALTER TABLE ... RENAME. With ``snapshot_new_tables``, the relay
snapshots those its source includes, so that rows that came with them (a table renamed
into the included schema, CREATE TABLE ... SELECT) reach Kafka like every other row.

Statements are read as the server logged them: comments and ``IF NOT EXISTS`` allowed,
names bare or in backquotes, with or without their schema (the event's default schema then).
Temporary tables are not tables of the source.
"""

from __future__ import annotations

import re

_NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_QUALIFIED = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_COMMENTS = re.compile(r"/\*(?!!)[\s\S]*?\*/|/\*![0-9]*|\*/|(?:--\s|#)[^\n]*")
_CREATE = re.compile(
    rf"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:DEFINER\s*=\s*\S+\s+)?TABLE\s+"
    rf"(?:IF\s+NOT\s+EXISTS\s+)?{_QUALIFIED}",
    re.IGNORECASE,
)
_RENAME = re.compile(r"^\s*RENAME\s+TABLES?\s+(.*)$", re.IGNORECASE | re.DOTALL)
_PAIR = re.compile(rf"{_QUALIFIED}\s*(?:WAIT\s+\d+\s+|NOWAIT\s+)?TO\s+{_QUALIFIED}", re.I)
_ALTER = re.compile(
    rf"^\s*ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_ALTER_RENAME = re.compile(rf"(?:^|,)\s*RENAME\s+(?:TO\s+|AS\s+)?{_QUALIFIED}\s*(?:,|$)", re.I)


def _split(name: str, default_db: str) -> tuple[str, str]:
    parts = re.findall(_NAME, name)
    cleaned = [p[1:-1].replace("``", "`") if p.startswith("`") else p for p in parts]
    if len(cleaned) == 2:
        return cleaned[0], cleaned[1]
    return default_db, cleaned[0]


def new_table_names(query: str, default_db: str) -> list[tuple[str, str]]:
    """(db, table) of each table the statement creates or renames something to."""
    text = _COMMENTS.sub(" ", query)
    if found := _CREATE.match(text):
        return [_split(found.group(1), default_db)]
    if found := _RENAME.match(text):
        return [_split(pair.group(2), default_db) for pair in _PAIR.finditer(found.group(1))]
    if found := _ALTER.match(text):
        renamed = _ALTER_RENAME.search(found.group(2))
        return [] if renamed is None else [_split(renamed.group(1), default_db)]
    return []
