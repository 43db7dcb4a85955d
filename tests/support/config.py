"""A test's aesop configuration file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.support.stack import KAFKA, ZOOKEEPER, free_port


@dataclass
class SourceSpec:
    """What a test config says about one source."""

    name: str
    include: list[str]
    server_id: int
    start: str
    topic: str
    exclude: list[str] = field(default_factory=list)
    mysql: str = "mysql://root@127.0.0.1:3306"
    snapshot: str | None = None  # written only when set, as "start" when not empty
    snapshot_chunk: int | None = None
    snapshot_new_tables: bool | None = None

    def toml(self) -> str:
        text = (
            "[[source]]\n"
            f'name = "{self.name}"\nmysql = "{self.mysql}"\nserver_id = {self.server_id}\n'
            f"include = {orjson.dumps(self.include).decode()}\n"
            f"exclude = {orjson.dumps(self.exclude).decode()}\n"
            f'topic = "{self.topic}"\n'
        )
        if self.start:
            text += f'start = "{self.start}"\n'
        if self.snapshot is not None:
            text += f'snapshot = "{self.snapshot}"\n'
        if self.snapshot_chunk is not None:
            text += f"snapshot_chunk = {self.snapshot_chunk}\n"
        if self.snapshot_new_tables is not None:
            text += f"snapshot_new_tables = {str(self.snapshot_new_tables).lower()}\n"
        return text


def write_config(
    path: Path,
    app_id: str,
    sources: Iterable[SourceSpec],
    extra: str = "",
    zookeeper: str = ZOOKEEPER,
    partitions: int = 4,
) -> Path:
    text = (
        f'[aesop]\nid = "{app_id}"\nkafka = "kafka://{KAFKA}"\nzookeeper = "{zookeeper}"\n'
        f'zk_root = "/aesop-test/{app_id}"\nweb_port = {free_port()}\npartitions = {partitions}\n\n'
    )
    text += "\n".join(s.toml() for s in sources) + extra
    path.write_text(text)
    return path


@dataclass(frozen=True)
class ConfigFactory:
    """A test's aesop TOML, written under its temporary directory, for app id ``t<unique>``.

    Topics, consumer groups and ZooKeeper nodes named after that id belong to the test, and
    ``drop_test_resources`` removes them after it. The ``make_config`` fixture is one.
    """

    directory: Path
    unique: str

    @property
    def app_id(self) -> str:
        return f"t{self.unique}"

    def __call__(
        self,
        sources: Iterable[SourceSpec] = (),
        extra: str = "",
        *,
        zookeeper: str = ZOOKEEPER,
        partitions: int = 4,
        name: str = "aesop.toml",
    ) -> Path:
        return write_config(
            self.directory / name, self.app_id, sources, extra, zookeeper, partitions
        )
