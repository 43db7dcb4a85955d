"""GTID sets of both flavours, as text and as the relay keeps them: free of any driver.

- MySQL: ``uuid:1-5:7,uuid2:1-9``, every transaction executed (``gtid_executed`` syntax);
  a GTID is ``uuid:n``.
- MariaDB: ``domain-server-seq`` per replication domain, the last transaction of each
  (``gtid_slave_pos`` syntax); a GTID is ``domain-server-seq``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.errors import SourceError

MYSQL = "mysql"
MARIADB = "mariadb"

_UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
_MYSQL_MEMBER = re.compile(rf"^({_UUID})((?::\d+(?:-\d+)?)+)$")
_MARIADB_MEMBER = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MAX = 2**63 - 1  # MySQL's GNO limit; MariaDB's domain and server ids are 32-bit


def flavour_of(text: str) -> str | None:
    """``mysql`` or ``mariadb`` by the syntax of a GTID set (None for an empty or bad one)."""
    first = text.strip().split(",", 1)[0].strip()
    if _MYSQL_MEMBER.match(first):
        return MYSQL
    if _MARIADB_MEMBER.match(first):
        return MARIADB
    return None


@dataclass
class GtidSet:
    """A GTID set that grows as transactions are read; ``str()`` is the server's syntax."""

    flavour: str
    # MySQL: uuid -> sorted, disjoint, non-adjacent [start, end] intervals.
    intervals: dict[str, list[list[int]]] = field(default_factory=dict)
    # MariaDB: domain -> (server id, seq) of its last transaction.
    domains: dict[int, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, flavour: str | None = None) -> GtidSet:
        """Parse a set; ValueError with a one-line reason when it is malformed."""
        members = [m.strip() for m in text.replace("\n", "").split(",") if m.strip()]
        if not members:
            if flavour is None:
                raise ValueError("the GTID set is empty")
            return cls(flavour)
        flavour = flavour or flavour_of(members[0])
        if flavour is None:
            raise ValueError(
                f"{members[0]!r} is neither a MySQL GTID set member (uuid:1-5) nor a MariaDB "
                "GTID (domain-server-seq, e.g. 0-1-57)"
            )
        result = cls(flavour)
        for member in members:
            if flavour == MYSQL:
                result._parse_mysql(member)
            else:
                result._parse_mariadb(member)
        return result

    def _parse_mysql(self, member: str) -> None:
        match = _MYSQL_MEMBER.match(member)
        if match is None:
            raise ValueError(f"{member!r} is not a MySQL GTID set member like uuid:1-5:7-9")
        uuid = _norm_uuid(match.group(1))
        for part in match.group(2)[1:].split(":"):
            start, _, end = part.partition("-")
            first, last = int(start), int(end or start)
            if not 1 <= first <= last <= _MAX:
                raise ValueError(f"{member!r}: interval {part} must be n or n-m with 1 <= n <= m")
            self._add_interval(uuid, first, last)

    def _parse_mariadb(self, member: str) -> None:
        match = _MARIADB_MEMBER.match(member)
        if match is None:
            raise ValueError(f"{member!r} is not a MariaDB GTID like 0-1-57 (domain-server-seq)")
        domain, server, seq = (int(g) for g in match.groups())
        if domain >= 2**32 or server >= 2**32 or seq > 2**64 - 1:
            raise ValueError(f"{member!r}: domain and server id must be 32-bit, seq 64-bit")
        if domain in self.domains:
            raise ValueError(f"{member!r}: domain {domain} is listed twice")
        self.domains[domain] = (server, seq)

    def _add_interval(self, uuid: str, first: int, last: int) -> None:
        spans = self.intervals.setdefault(uuid, [])
        # The common case: the next transaction of the newest interval.
        if spans and spans[-1][1] + 1 >= first >= spans[-1][0]:
            spans[-1][1] = max(spans[-1][1], last)
            return
        spans.append([first, last])
        spans.sort()
        merged: list[list[int]] = []
        for span in spans:
            if merged and span[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged.append(span)
        self.intervals[uuid] = merged

    def add(self, gtid: str) -> None:
        """Record one transaction's GTID (``uuid:n`` or ``domain-server-seq``)."""
        if self.flavour == MYSQL:
            uuid, _, number = gtid.rpartition(":")
            self._add_interval(_norm_uuid(uuid), int(number), int(number))
        else:
            domain, server, seq = (int(part) for part in gtid.split("-"))
            self.domains[domain] = (server, seq)

    def copy(self) -> GtidSet:
        return GtidSet(
            self.flavour,
            {uuid: [list(span) for span in spans] for uuid, spans in self.intervals.items()},
            dict(self.domains),
        )

    def contains(self, gtid: str) -> bool:
        """Is this transaction in the set (MariaDB: at or before its domain's position)?"""
        if self.flavour == MYSQL:
            uuid, _, number = gtid.rpartition(":")
            n = int(number)
            return any(a <= n <= b for a, b in self.intervals.get(_norm_uuid(uuid), ()))
        domain, _, seq = (int(part) for part in gtid.split("-"))
        known = self.domains.get(domain)
        return known is not None and seq <= known[1]

    def missing_from(self, older: GtidSet) -> str | None:
        """What of ``older`` (a server's purged set) this set lacks, as text; None if nothing.

        MariaDB: a domain of ``older`` absent here, or here at a lower seq.
        """
        lacking: list[str] = []
        if self.flavour == MYSQL:
            for uuid, spans in older.intervals.items():
                for first, last in spans:
                    mine = self.intervals.get(uuid, [])
                    if not any(a <= first and last <= b for a, b in mine):
                        span = f"{first}-{last}" if first != last else str(first)
                        lacking.append(f"{uuid}:{span}")
        else:
            for domain, (server, seq) in older.domains.items():
                known = self.domains.get(domain)
                if known is None or known[1] < seq:
                    lacking.append(f"{domain}-{server}-{seq}")
        return ",".join(lacking) or None

    def __str__(self) -> str:
        if self.flavour == MYSQL:
            return ",".join(
                uuid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in spans)
                for uuid, spans in sorted(self.intervals.items())
            )
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))


def _norm_uuid(text: str) -> str:
    raw = text.replace("-", "").lower()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def parse_for(text: str, flavour: str, what: str) -> GtidSet:
    """Parse ``text`` as a set of the server's flavour; SourceError saying what to do if not."""
    found = flavour_of(text)
    if found is not None and found != flavour:
        names = {MYSQL: "MySQL", MARIADB: "MariaDB"}
        raise SourceError(
            f"{what} {text!r} is a {names[found]} GTID set but the server is {names[flavour]}; "
            + (
                "give a MariaDB list like 0-1-57 (SELECT @@gtid_binlog_pos)"
                if flavour == MARIADB
                else "give a MySQL set like uuid:1-57 (SELECT @@gtid_executed)"
            )
        )
    try:
        return GtidSet.parse(text, flavour)
    except ValueError as exc:
        raise SourceError(f"{what}: {exc}") from None
