"""The soak's load: seeded transactions on three tables, each with a ledger row of its own.

Every transaction first inserts ``ledger(txn, kind, changes)``: its id and the number of change
events it must produce (a primary-key change is two, a delete and a create). After a lost
connection, even at COMMIT, the ledger row says whether the transaction committed; one that did
not is retried as it was planned. The ledger row is written first so that a retry racing an
attempt the server is still finishing waits on that row's lock instead of on another row.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymysql

from tests.support.mysql import mysql_url

SCHEMA = {
    "items": "id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, qty INT NOT NULL, doc JSON",
    "order_lines": (
        "order_id INT, line INT, sku VARCHAR(20) NOT NULL, amount DECIMAL(12,2) NOT NULL,"
        " attrs JSON, PRIMARY KEY (order_id, line)"
    ),
    "notes": "tag INT NOT NULL, n INT NOT NULL, body VARCHAR(60), meta JSON",  # no primary key
    "ledger": "txn BIGINT PRIMARY KEY, kind VARCHAR(16) NOT NULL, changes INT NOT NULL",
}
# In the replica only: when the consumer first wrote each ledger row (its session is UTC).
REPLICA_EXTRA = {"ledger": ", applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"}
COLUMNS = {
    "items": ("id", "name", "qty", "doc"),
    "order_lines": ("order_id", "line", "sku", "amount", "attrs"),
    "notes": ("tag", "n", "body", "meta"),
    "ledger": ("txn", "kind", "changes"),
}
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "items": ("id",),
    "order_lines": ("order_id", "line"),
    "notes": (),
    "ledger": ("txn",),
}
JSON_COLUMNS = frozenset({"doc", "attrs", "meta"})
DECIMAL_COLUMNS = frozenset({"amount"})

WORDS = ("alpha", "bravo", "ünïcode", "日本語", "😀 smile", 'quote"d', "back\\slash", "tab\tx")
LINES_INSERT = (
    "INSERT INTO order_lines (order_id, line, sku, amount, attrs) VALUES (%s, %s, %s, %s, %s)"
)
OPS, OP_WEIGHTS = ("insert", "update", "delete", "rekey"), (35, 30, 15, 20)  # tables grow
BIG_EVERY = (5_000, 12_000)  # a large transaction after this many changes (seeded)
BIG_ROWS = (2_000, 4_000)


# A lost or refused connection, a server shutting down, a lock wait: try again. Anything
# else (a syntax error, a refused value) is a defect of the load.
TRANSIENT = (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError)


class LoadError(Exception):
    """The load's model of the tables disagrees with the server: a harness defect."""


def connect(database: str | None = None, **kwargs: Any) -> Any:
    return pymysql.connect(**mysql_url(database).connect_args(), charset="utf8mb4", **kwargs)


def create_databases(source: str, replica: str) -> None:
    with connect(autocommit=True) as conn, conn.cursor() as cur:
        for db, extra in ((source, {}), (replica, REPLICA_EXTRA)):
            cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
            for table, columns in SCHEMA.items():
                cur.execute(f"CREATE TABLE {db}.{table} ({columns}{extra.get(table, '')})")


def drop_databases(*names: str) -> None:
    with connect(autocommit=True, connect_timeout=5) as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")


class Pool:
    """A set with uniform random choice and O(1) removal."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.index: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: Any) -> bool:
        return item in self.index

    def add(self, item: Any) -> None:
        self.index[item] = len(self.items)
        self.items.append(item)

    def remove(self, item: Any) -> None:
        at = self.index.pop(item)
        last = self.items.pop()
        if at < len(self.items):
            self.items[at] = last
            self.index[last] = at

    def choice(self, rng: random.Random) -> Any:
        return self.items[rng.randrange(len(self.items))]


@dataclass
class Statement:
    sql: str
    params: Any  # a tuple, or for ``many`` a list of tuples
    rows: int  # the rows it must change
    events: int  # the change events it makes
    many: bool = False


@dataclass
class Txn:
    id: int
    kind: str  # single | multi | big
    statements: list[Statement] = field(default_factory=list)
    commit_at: float | None = None  # when COMMIT was last sent

    @property
    def changes(self) -> int:
        return 1 + sum(s.events for s in self.statements)  # 1: the ledger row


@dataclass(frozen=True)
class Committed:
    txn: int
    kind: str
    changes: int
    commit_at: float  # wall time COMMIT was sent: the transaction committed after it


class Planner:
    """Turns a seeded generator into transactions, keeping a model of which keys exist.

    The model moves as transactions are planned; each is retried until it commits, so it
    stays true.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.items = Pool()
        self.lines = Pool()
        self.notes: dict[int, int] = {}  # tag -> identical rows with it
        self.note_tags = Pool()
        self.next_id = 1
        self.next_order = 1
        self.next_line = 100  # above the lines 1..4 of large inserts
        self.next_tag = 1
        self.next_txn = 1
        self.until_big = rng.randint(*BIG_EVERY)

    def next(self) -> Txn:
        txn = Txn(self.next_txn, "single")
        self.next_txn += 1
        if self.until_big <= 0:
            txn.kind = "big"
            txn.statements.append(self._big())
            self.until_big = self.rng.randint(*BIG_EVERY)
        elif self.rng.random() < 0.3:
            txn.kind = "multi"
            if self.rng.random() < 0.3:
                txn.statements.extend(self._chain())
            for _ in range(self.rng.randint(2, 7)):
                txn.statements.append(self._small())
        else:
            txn.statements.append(self._small())
        self.until_big -= txn.changes
        return txn

    # -- values ---------------------------------------------------------------------

    def _text(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 3)))[:40]

    def _doc(self) -> str:
        rng = self.rng
        doc = {
            "v": rng.randint(-(2**40), 2**40),
            "s": self._text(),
            "tags": [rng.choice(WORDS) for _ in range(rng.randint(0, 3))],
            "nested": {"f": rng.randint(0, 10**6) / 64, "b": rng.random() < 0.5, "n": None},
        }
        # Spaces and key order as a person might write them: the replica writes it compact.
        return orjson.dumps(doc).decode().replace(",", ", ")

    def _amount(self) -> str:
        return f"{self.rng.randrange(10**7) / 100:.2f}"

    # -- single-row statements ------------------------------------------------------

    def _small(self) -> Statement:
        rng = self.rng
        table = rng.choice(("items", "items", "lines", "notes"))
        pool_size = {"items": len(self.items), "lines": len(self.lines), "notes": len(self.notes)}
        op = "insert" if pool_size[table] < 50 else rng.choices(OPS, OP_WEIGHTS)[0]
        return getattr(self, f"_{table}_{op}")()

    def _items_insert(self, key: int | None = None) -> Statement:
        if key is None:
            key, self.next_id = self.next_id, self.next_id + 1
        self.items.add(key)
        return Statement(
            "INSERT INTO items (id, name, qty, doc) VALUES (%s, %s, %s, %s)",
            (key, self._text(), self.rng.randint(0, 1000), self._doc()),
            1,
            1,
        )

    def _items_update(self, key: int | None = None) -> Statement:
        key = self.items.choice(self.rng) if key is None else key
        return Statement(
            "UPDATE items SET qty = qty + 1, name = %s, doc = %s WHERE id = %s",
            (self._text(), self._doc(), key),
            1,
            1,
        )

    def _items_delete(self) -> Statement:
        key = self.items.choice(self.rng)
        self.items.remove(key)
        return Statement("DELETE FROM items WHERE id = %s", (key,), 1, 1)

    def _items_rekey(self, key: int | None = None) -> Statement:
        key = self.items.choice(self.rng) if key is None else key
        new, self.next_id = self.next_id, self.next_id + 1
        self.items.remove(key)
        self.items.add(new)
        return Statement("UPDATE items SET id = %s WHERE id = %s", (new, key), 1, 2)

    def _lines_insert(self) -> Statement:
        key = (self.next_order, self.next_line)
        self.next_order += self.rng.random() < 0.5
        self.next_line += 1
        self.lines.add(key)
        return Statement(
            LINES_INSERT,
            (*key, self._text()[:20], self._amount(), self._doc()),
            1,
            1,
        )

    def _lines_update(self) -> Statement:
        key = self.lines.choice(self.rng)
        return Statement(
            "UPDATE order_lines SET amount = amount + 0.01, attrs = %s"
            " WHERE order_id = %s AND line = %s",
            (self._doc(), *key),
            1,
            1,
        )

    def _lines_delete(self) -> Statement:
        key = self.lines.choice(self.rng)
        self.lines.remove(key)
        return Statement("DELETE FROM order_lines WHERE order_id = %s AND line = %s", key, 1, 1)

    def _lines_rekey(self) -> Statement:
        key = self.lines.choice(self.rng)
        new = (key[0], self.next_line)
        self.next_line += 1
        self.lines.remove(key)
        self.lines.add(new)
        return Statement(
            "UPDATE order_lines SET line = %s WHERE order_id = %s AND line = %s",
            (new[1], *key),
            1,
            2,
        )

    def _notes_insert(self) -> Statement:
        tag, self.next_tag = self.next_tag, self.next_tag + 1
        twins = 2 if self.rng.random() < 0.2 else 1  # identical rows: the multiset matters
        self.notes[tag] = twins
        self.note_tags.add(tag)
        row = (tag, self.rng.randint(0, 100), self._text(), self._doc())
        values = ", ".join(["(%s, %s, %s, %s)"] * twins)
        return Statement(f"INSERT INTO notes VALUES {values}", row * twins, twins, twins)

    def _notes_update(self) -> Statement:
        tag = self.note_tags.choice(self.rng)
        rows = self.notes[tag]
        return Statement(
            "UPDATE notes SET n = n + 1, body = %s WHERE tag = %s", (self._text(), tag), rows, rows
        )

    def _notes_delete(self) -> Statement:
        tag = self.note_tags.choice(self.rng)
        self.notes[tag] -= 1
        if not self.notes[tag]:
            del self.notes[tag]
            self.note_tags.remove(tag)
        return Statement("DELETE FROM notes WHERE tag = %s LIMIT 1", (tag,), 1, 1)

    def _notes_rekey(self) -> Statement:
        return self._notes_update()  # a table without a key has no key to change

    def _chain(self) -> list[Statement]:
        """One row, several times in a transaction: created, changed, re-keyed, changed."""
        key = self.next_id
        self.next_id += 1
        first = self._items_insert(key)
        second = self._items_update(key)
        rekey = self._items_rekey(key)
        new = rekey.params[0]
        return [first, second, rekey, self._items_update(new)]

    # -- large transactions ---------------------------------------------------------

    def _big(self) -> Statement:
        rng = self.rng
        rows = rng.randint(*BIG_ROWS)
        kinds = ["insert"]
        if len(self.items) >= 2 * rows:
            kinds += ["update", "rekey"]
        if len(self.lines) >= 2 * rows:
            kinds.append("delete")
        kind = rng.choice(kinds)
        if kind == "insert":
            first = self.next_order
            keys = [(first + i // 4, i % 4 + 1) for i in range(rows)]
            self.next_order = first + rows // 4 + 1
            for key in keys:
                self.lines.add(key)
            values = [(*k, f"big-{k[1]}", self._amount(), self._doc()) for k in keys]
            return Statement(
                LINES_INSERT,
                values,
                rows,
                rows,
                many=True,
            )
        if kind == "delete":
            ordered = sorted(self.lines.items)
            start = rng.randrange(len(ordered) - rows)
            low, high = ordered[start], ordered[start + rows - 1]
            # Whole orders: extend to the order boundaries, counting what that takes in.
            chosen = [k for k in ordered if low[0] <= k[0] <= high[0]]
            for key in chosen:
                self.lines.remove(key)
            return Statement(
                "DELETE FROM order_lines WHERE order_id BETWEEN %s AND %s",
                (low[0], high[0]),
                len(chosen),
                len(chosen),
            )
        ordered = sorted(self.items.items)
        start = rng.randrange(len(ordered) - rows)
        low, high = ordered[start], ordered[start + rows - 1]
        chosen = ordered[start : start + rows]
        if kind == "update":
            return Statement(
                "UPDATE items SET qty = qty + 1 WHERE id BETWEEN %s AND %s", (low, high), rows, rows
            )
        shift = self.next_id - low  # onto fresh ids above all others
        self.next_id = high + shift + 1
        for key in chosen:
            self.items.remove(key)
            self.items.add(key + shift)
        return Statement(
            "UPDATE items SET id = id + %s WHERE id BETWEEN %s AND %s",
            (shift, low, high),
            rows,
            2 * rows,
        )


class Load:
    """Runs planned transactions at about ``rate`` changes per second, from a thread."""

    def __init__(self, database: str, seed: int, rate: float) -> None:
        self.database = database
        self.rate = rate
        self.planner = Planner(random.Random(seed))
        self.committed: list[Committed] = []
        self.errors = 0
        self.in_doubt = 0  # lost connections after COMMIT was sent, resolved by the ledger
        self.retried = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-load", daemon=True)

    @property
    def changes(self) -> int:
        return sum(c.changes for c in self.committed)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LoadError(f"the load thread did not stop within {timeout:.0f}s")

    def _connect(self) -> Any:
        return connect(
            self.database, autocommit=False, connect_timeout=3, read_timeout=60, write_timeout=60
        )

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced by the soak's main loop
            self.failure = exc

    def _loop(self) -> None:
        conn: Any = None
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                txn = self.planner.next()
                attempt = 0
                while True:
                    attempt += 1
                    sent = txn.commit_at
                    try:
                        conn = conn or self._connect()
                        self._execute(conn, txn)
                        break
                    except pymysql.err.IntegrityError:
                        if attempt == 1:
                            raise
                        conn = self._drop(conn)  # an earlier attempt won the race: resolve
                    except TRANSIENT:
                        conn = self._drop(conn)
                    self.errors += 1
                    self.in_doubt += txn.commit_at != sent  # lost at COMMIT
                    outcome = self._resolve(txn)
                    if outcome is None:
                        return  # stopping; the ledger table tells whether it committed
                    if outcome:
                        break
                    self.retried += 1
                assert txn.commit_at is not None
                self.committed.append(Committed(txn.id, txn.kind, txn.changes, txn.commit_at))
                due = max(due + txn.changes / self.rate, time.monotonic() - 1.0)
                self._stop.wait(max(0.0, due - time.monotonic()))
        finally:
            self._drop(conn)

    def _execute(self, conn: Any, txn: Txn) -> None:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO ledger VALUES (%s, %s, %s)", (txn.id, txn.kind, txn.changes))
            for statement in txn.statements:
                if statement.many:
                    changed = cur.executemany(statement.sql, statement.params)
                else:
                    changed = cur.execute(statement.sql, statement.params)
                if changed != statement.rows:
                    raise LoadError(
                        f"txn {txn.id}: {statement.sql!r} changed {changed} rows,"
                        f" the model expected {statement.rows}"
                    )
        txn.commit_at = time.time()
        conn.commit()

    def _resolve(self, txn: Txn) -> bool | None:
        """Did ``txn`` commit? Asks the ledger once the server answers; None when stopping."""
        while not self._stop.is_set():
            try:
                with contextlib.closing(self._connect()) as conn, conn.cursor() as cur:
                    cur.execute("SELECT changes FROM ledger WHERE txn = %s", (txn.id,))
                    return cur.fetchone() is not None
            except TRANSIENT:
                self._stop.wait(0.25)
        return None

    @staticmethod
    def _drop(conn: Any) -> None:
        """Close ``conn`` if open; None, for ``conn = self._drop(conn)``."""
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def first_after(committed: list[Committed], moment: float) -> Committed | None:
    """The first transaction whose COMMIT was sent at or after ``moment``."""
    at = bisect.bisect_left([c.commit_at for c in committed], moment)
    return committed[at] if at < len(committed) else None


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
