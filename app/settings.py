"""The one frozen, typed settings object, built once from the TOML file and AESOP_* variables."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from app.errors import ConfigError
from app.gtids import GtidSet

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
NAME_RE = re.compile(r"^[a-z0-9_-]+$")
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
HANDLER_RE = re.compile(r"^(mysql|route|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
START_RE = re.compile(r"^(earliest|latest|[^:\s]+\.\d+:\d+|gtid:.+)$")
# host[:port], comma-separated, as kazoo and aiokafka take them.
_HOST = r"[^\s,;:/]+(:\d{1,5})?"
ZOOKEEPER_RE = re.compile(rf"^({_HOST}(,{_HOST})*(/\S*)?)?$")
KAFKA_RE = re.compile(rf"^([a-z]+://)?{_HOST}([,;]([a-z]+://)?{_HOST})*$")
KIND_NAMES = {
    int: "an integer",
    str: "a string",
    list: "a list",
    bool: "true or false",
    float: "a number",
}
EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
# The lag email schedule is a cron expression; a sixth field, seconds, is allowed.
HOURLY = "0 * * * *"


@dataclass(frozen=True)
class MySQLURL:
    """Where a MySQL/MariaDB server is; the password is kept out of repr and str."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str | None = None

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for pymysql.connect."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
        }
        if self.database:
            args["database"] = self.database
        return args

    def __str__(self) -> str:
        db = f"/{self.database}" if self.database else ""
        return f"mysql://{self.user}@{self.host}:{self.port}{db}"


@dataclass(frozen=True)
class SourceSettings:
    """One [[source]]: a server whose binlog one reader follows."""

    name: str
    mysql: MySQLURL
    server_id: int
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    start: str
    topic: str
    snapshot: str = "never"  # "initial": existing rows first (op "r"), then the binlog
    snapshot_chunk: int = 2048  # rows per snapshot chunk (SELECT ... LIMIT)
    signal_table: tuple[str, str] = ("aesop", "signals")  # where `aesop snapshot` asks
    snapshot_new_tables: bool = False  # snapshot a table when it becomes included


@dataclass(frozen=True)
class ConsumerSettings:
    """One [[consumer]]: a named consumer group of agents."""

    name: str
    topics: tuple[str, ...]
    handler: str
    mysql: MySQLURL | None
    tombstones: bool = False


@dataclass(frozen=True)
class LagSettings:
    """[lag]: the seconds behind at which a source or consumer turns amber, then red; how
    long a source may go without a live relay on any worker before it is reported unread; and
    how long a consumer's partition may have changes waiting with none processed before its
    worker reports it stalled (and reads it again from where it is)."""

    warn_seconds: float = 60.0
    critical_seconds: float = 300.0
    unread_seconds: float = 10.0
    stalled_seconds: float = 30.0


@dataclass(frozen=True)
class SmtpSettings:
    """[smtp]: where ``aesop lag --email`` and the worker's schedule send the lag report."""

    host: str
    port: int
    starttls: bool
    user: str | None
    password: str | None = field(repr=False)
    sender: str
    to: tuple[str, ...]
    schedule: str  # cron; "" sends no scheduled email
    timeout: float = 30.0


@dataclass(frozen=True)
class Settings:
    """Everything aesop is configured with; build it with :func:`load`."""

    path: Path
    id: str = "aesop"
    kafka: str = "kafka://127.0.0.1:9092"
    zookeeper: str = "127.0.0.1:2181"
    zk_root: str = "/aesop"
    web_port: int = 6066
    partitions: int = 8
    # Every topic aesop creates gets these; both are capped at what the cluster allows when a
    # topic is created (see app.topics).
    replication_factor: int = 3
    min_insync_replicas: int = 2
    session_timeout: int = 45
    sources: tuple[SourceSettings, ...] = ()
    consumers: tuple[ConsumerSettings, ...] = ()
    lag: LagSettings = LagSettings()
    smtp: SmtpSettings | None = None

    @property
    def zookeeper_enabled(self) -> bool:
        return bool(self.zookeeper)

    def source(self, name: str) -> SourceSettings:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


# The keys each section accepts, with the TOML type each must have.
AESOP_KEYS: dict[str, type] = {
    "id": str,
    "kafka": str,
    "zookeeper": str,
    "zk_root": str,
    "web_port": int,
    "partitions": int,
    "replication_factor": int,
    "min_insync_replicas": int,
    "session_timeout": int,
}
SOURCE_KEYS: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "mysql": (str, True),
    "server_id": (int, True),
    "include": (list, False),
    "exclude": (list, False),
    "start": (str, False),
    "topic": (str, False),
    "snapshot": (str, False),
    "snapshot_chunk": (int, False),
    "signal_table": (str, False),
    "snapshot_new_tables": (bool, False),
}
CONSUMER_KEYS: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "topics": (list, True),
    "handler": (str, True),
    "mysql": (str, False),
    "tombstones": (bool, False),
}
LAG_KEYS: dict[str, tuple[type, bool]] = {
    "warn_seconds": (float, False),
    "critical_seconds": (float, False),
    "unread_seconds": (float, False),
    "stalled_seconds": (float, False),
}
SMTP_KEYS: dict[str, tuple[type, bool]] = {
    "host": (str, True),
    "port": (int, False),
    "starttls": (bool, False),
    "user": (str, False),
    "password": (str, False),
    "from": (str, True),
    "to": (list, True),
    "schedule": (str, False),
    "timeout": (float, False),
}


class _Checker:
    """Turns a parsed TOML document into checked values, naming the file and key on error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}")

    def table(self, where: str, raw: Any, keys: Mapping[str, tuple[type, bool]]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise self.fail(
                f"{where}.{unknown[0]}",
                f"unknown key; known keys are {', '.join(sorted(keys))}",
            )
        for key, (kind, required) in keys.items():
            if key not in raw:
                if required:
                    raise self.fail(f"{where}.{key}", "is required")
                continue
            self.check_type(f"{where}.{key}", raw[key], kind)
        return raw

    def check_type(self, where: str, value: Any, kind: type) -> None:
        accepted = (int, float) if kind is float else kind  # TOML writes 60 as an integer
        ok = isinstance(value, accepted) and not (kind in (int, float) and isinstance(value, bool))
        if not ok:
            raise self.fail(where, f"must be {KIND_NAMES[kind]}, got {value!r}")
        if kind is list and not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, "must be a list of non-empty strings")

    def mysql_url(self, where: str, url: str) -> MySQLURL:
        parts = urlsplit(url)
        if parts.scheme != "mysql" or not parts.hostname:
            raise self.fail(where, "must look like mysql://user:password@host:3306[/db]")
        try:
            port = 3306 if parts.port is None else parts.port
        except ValueError as exc:
            raise self.fail(where, f"bad port ({exc})") from None
        if not 0 < port < 65536:
            raise self.fail(where, f"bad port {port}; must be 1..65535")
        database = parts.path.lstrip("/") or None
        return MySQLURL(
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )


def _env_overrides(checker: _Checker, env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, kind in AESOP_KEYS.items():
        name = f"AESOP_{key.upper()}"
        if name not in env:
            continue
        raw = env[name]
        if kind is int:
            try:
                overrides[key] = int(raw)
            except ValueError:
                where = _aesop_key(key, {key: raw})
                raise checker.fail(where, f"must be an integer, got {raw!r}") from None
        else:
            overrides[key] = raw
    return overrides


def _aesop_key(key: str, overrides: Mapping[str, Any]) -> str:
    """How an error names an [aesop] key: by its variable when the environment set it."""
    if key in overrides:
        return f"AESOP_{key.upper()} (overrides [aesop].{key})"
    return f"[aesop].{key}"


def _label(section: str, index: int, raw: Any) -> str:
    """``[[source]] 'shop'`` when the table has a string name, else ``[[source]] #2``."""
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"{section} {name!r}" if isinstance(name, str) else f"{section} #{index + 1}"


def _source(checker: _Checker, index: int, raw: Any) -> SourceSettings:
    where = _label("[[source]]", index, raw)
    table = checker.table(where, raw, SOURCE_KEYS)
    name = table["name"]
    if not NAME_RE.match(name):
        raise checker.fail(f"{where}.name", "must match [a-z0-9_-]+")
    server_id = table["server_id"]
    if not 1 <= server_id < 2**32:
        raise checker.fail(f"{where}.server_id", "must be between 1 and 4294967295")
    start = table.get("start", "earliest")
    if not START_RE.match(start):
        raise checker.fail(
            f"{where}.start",
            f"{start!r} is not earliest, latest, 'mysql-bin.000003:4' or 'gtid:<set>'",
        )
    snapshot = table.get("snapshot", "never")
    if snapshot not in ("never", "initial"):
        raise checker.fail(f"{where}.snapshot", f"{snapshot!r} is not 'never' or 'initial'")
    if snapshot == "initial" and "start" in table:
        raise checker.fail(
            f"{where}.start",
            "a source with snapshot = 'initial' streams from where its snapshot begins; "
            "remove start",
        )
    chunk = table.get("snapshot_chunk", 2048)
    if not 1 <= chunk <= 100_000:
        raise checker.fail(f"{where}.snapshot_chunk", "must be between 1 and 100000 rows")
    signal_db, dot, signal_name = table.get("signal_table", "aesop.signals").partition(".")
    if not (signal_db and dot and signal_name):
        raise checker.fail(f"{where}.signal_table", "must be db.table")
    if start.startswith("gtid:"):
        try:
            GtidSet.parse(start[len("gtid:") :])
        except ValueError as exc:
            raise checker.fail(f"{where}.start", f"{start!r}: {exc}") from None
    include = tuple(table.get("include", ()))
    exclude = tuple(table.get("exclude", ()))
    for pattern in include + exclude:
        if "." not in pattern:
            raise checker.fail(f"{where}.include", f"{pattern!r} must be a db.table glob")
    return SourceSettings(
        name=name,
        mysql=checker.mysql_url(f"{where}.mysql", table["mysql"]),
        server_id=server_id,
        include=include,
        exclude=exclude,
        start=start,
        topic=table.get("topic", f"aesop.{name}"),
        snapshot=snapshot,
        snapshot_chunk=chunk,
        signal_table=(signal_db, signal_name),
        snapshot_new_tables=table.get("snapshot_new_tables", False),
    )


def _consumer(checker: _Checker, index: int, raw: Any) -> ConsumerSettings:
    where = _label("[[consumer]]", index, raw)
    table = checker.table(where, raw, CONSUMER_KEYS)
    name = table["name"]
    if not NAME_RE.match(name):
        raise checker.fail(f"{where}.name", "must match [a-z0-9_-]+")
    if not table["topics"]:
        raise checker.fail(f"{where}.topics", "must name at least one topic")
    handler = table["handler"]
    if not HANDLER_RE.match(handler):
        raise checker.fail(f"{where}.handler", "must be mysql, route or 'package.module:function'")
    mysql = table.get("mysql")
    if handler == "mysql" and not mysql:
        raise checker.fail(f"{where}.mysql", 'is required when handler = "mysql"')
    if "tombstones" in table and handler != "route":
        raise checker.fail(f"{where}.tombstones", 'applies only to handler = "route"')
    for topic in table["topics"]:
        if not TOPIC_RE.match(topic):
            raise checker.fail(f"{where}.topics", f"{topic!r} is not a valid Kafka topic name")
    return ConsumerSettings(
        name=name,
        topics=tuple(table["topics"]),
        handler=handler,
        mysql=checker.mysql_url(f"{where}.mysql", mysql) if mysql else None,
        tombstones=table.get("tombstones", False),
    )


def _lag(checker: _Checker, raw: Any) -> LagSettings:
    table = checker.table("[lag]", raw, LAG_KEYS)
    warn = float(table.get("warn_seconds", LagSettings.warn_seconds))
    critical = float(table.get("critical_seconds", LagSettings.critical_seconds))
    if not warn > 0:
        raise checker.fail("[lag].warn_seconds", f"must be above 0, got {warn:g}")
    if critical < warn:
        raise checker.fail(
            "[lag].critical_seconds", f"must be at least warn_seconds ({warn:g}), got {critical:g}"
        )
    unread = float(table.get("unread_seconds", LagSettings.unread_seconds))
    if not unread >= 5:
        raise checker.fail(
            "[lag].unread_seconds", f"must be at least 5 (relays report every 2 s), got {unread:g}"
        )
    stalled = float(table.get("stalled_seconds", LagSettings.stalled_seconds))
    if not stalled >= 5:
        raise checker.fail("[lag].stalled_seconds", f"must be at least 5, got {stalled:g}")
    return LagSettings(
        warn_seconds=warn, critical_seconds=critical, unread_seconds=unread, stalled_seconds=stalled
    )


def _smtp(checker: _Checker, raw: Any) -> SmtpSettings:
    from croniter import croniter

    table = checker.table("[smtp]", raw, SMTP_KEYS)
    port = table.get("port", 25)
    if not 0 < port < 65536:
        raise checker.fail("[smtp].port", f"must be a TCP port (1..65535), got {port}")
    if ("user" in table) != ("password" in table):
        raise checker.fail("[smtp].password", "user and password go together; set both or neither")
    for key, address in [("from", table["from"]), *(("to", a) for a in table["to"])]:
        if not EMAIL_RE.match(address):
            raise checker.fail(f"[smtp].{key}", f"{address!r} is not an email address")
    if not table["to"]:
        raise checker.fail("[smtp].to", "must name at least one address")
    schedule = table.get("schedule", HOURLY)
    if schedule and not croniter.is_valid(schedule):
        raise checker.fail(
            "[smtp].schedule",
            f'{schedule!r} is not a cron expression like "0 * * * *" ("" sends none)',
        )
    timeout = float(table.get("timeout", 30.0))
    if not timeout > 0:
        raise checker.fail("[smtp].timeout", f"must be above 0, got {timeout:g}")
    return SmtpSettings(
        host=table["host"],
        port=port,
        starttls=table.get("starttls", False),
        user=table.get("user"),
        password=table.get("password"),
        sender=table["from"],
        to=tuple(table["to"]),
        schedule=schedule,
        timeout=timeout,
    )


def _unique(checker: _Checker, section: str, key: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise checker.fail(f"{section}.{key}", f"{value!r} is used twice; each must be unique")
        seen.add(value)


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read and check the config: path from ``AESOP_CONFIG`` (default ./aesop.toml)."""
    env = os.environ if env is None else env
    file = Path(path or env.get("AESOP_CONFIG") or "aesop.toml")
    checker = _Checker(file)
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such config file; create it or set AESOP_CONFIG to its path"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None

    unknown = sorted(set(document) - {"aesop", "source", "consumer", "lag", "smtp"})
    if unknown:
        hint = "; put it under [aesop]" if unknown[0] in AESOP_KEYS else ""
        raise checker.fail(
            unknown[0],
            f"unknown section; known are [aesop], [[source]], [[consumer]], [lag], [smtp]{hint}",
        )
    top = checker.table(
        "[aesop]", document.get("aesop", {}), {k: (t, False) for k, t in AESOP_KEYS.items()}
    )
    overrides = _env_overrides(checker, env)
    top = {**top, **overrides}

    def check(key: str, ok: bool, message: str) -> None:
        if key in top and not ok:
            raise checker.fail(_aesop_key(key, overrides), message)

    check("id", NAME_RE.match(top.get("id", "")) is not None, "must match [a-z0-9_-]+")
    check("kafka", KAFKA_RE.match(top.get("kafka", "")) is not None,
          "must look like kafka://host:9092[,host:9092]")  # fmt: skip
    check("zookeeper", ZOOKEEPER_RE.match(top.get("zookeeper", "")) is not None,
          'must look like host:2181[,host:2181][/chroot], or "" to disable')  # fmt: skip
    check("partitions", 1 <= top.get("partitions", 8) <= 1024, "must be between 1 and 1024")
    check("replication_factor", 1 <= top.get("replication_factor", 3) <= 32,
          "must be between 1 and 32 (brokers holding each partition)")  # fmt: skip
    check("min_insync_replicas", 1 <= top.get("min_insync_replicas", 2) <= 32,
          "must be between 1 and 32")  # fmt: skip
    check("min_insync_replicas",
          top.get("min_insync_replicas", 2) <= top.get("replication_factor", 3),
          f"must not exceed replication_factor ({top.get('replication_factor', 3)})")  # fmt: skip
    if "min_insync_replicas" not in top:  # the default is capped at a smaller factor
        top["min_insync_replicas"] = min(2, top.get("replication_factor", 3))
    check("session_timeout", 6 <= top.get("session_timeout", 45) <= 300,
          "must be between 6 and 300 (seconds)")  # fmt: skip
    check("web_port", 0 < top.get("web_port", 6066) < 65536, "must be a TCP port (1..65535)")
    zk_root = top.get("zk_root", "/aesop")
    check("zk_root", zk_root.startswith("/") and not zk_root.endswith("/"),
          "must start with / and not end with /")  # fmt: skip

    raw_sources = document.get("source", [])
    raw_consumers = document.get("consumer", [])
    if not isinstance(raw_sources, list) or not isinstance(raw_consumers, list):
        raise checker.fail("source", "write sources as [[source]] and consumers as [[consumer]]")
    sources = tuple(_source(checker, i, raw) for i, raw in enumerate(raw_sources))
    consumers = tuple(_consumer(checker, i, raw) for i, raw in enumerate(raw_consumers))
    _unique(checker, "[[source]]", "name", [s.name for s in sources])
    _unique(checker, "[[source]]", "server_id", [s.server_id for s in sources])
    _unique(checker, "[[source]]", "topic", [s.topic for s in sources])
    _unique(checker, "[[consumer]]", "name", [c.name for c in consumers])
    lag = _lag(checker, document.get("lag", {}))
    smtp = _smtp(checker, document["smtp"]) if "smtp" in document else None
    return Settings(path=file, sources=sources, consumers=consumers, lag=lag, smtp=smtp, **top)
