"""app.settings.load(): valid configs, AESOP_* overrides, one-line errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import ConfigError
from app.settings import MySQLURL, load

SPEC_EXAMPLE = """
[aesop]
id = "aesop"                          # Faust app id; prefix of internal topics
kafka = "kafka://127.0.0.1:9092"
zookeeper = "127.0.0.1:2181"          # "" disables the ZooKeeper mirror
zk_root = "/aesop"
web_port = 6066

[[source]]
name = "shop"                         # [a-z0-9_-]+
mysql = "mysql://repl:secret@127.0.0.1:3306"
server_id = 5401                      # the id the reader presents as a replica
include = ["shop.*"]                  # db.table globs; default: everything but system schemas
exclude = ["shop.audit_*"]
start = "earliest"
topic = "aesop.shop"                  # default "aesop.<name>"

[[consumer]]
name = "orders-to-replica"            # the Kafka consumer group
topics = ["aesop.shop", "aesop.billing"]   # one or several relays
handler = "mysql"                     # mysql | route | "package.module:function"
mysql = "mysql://root@127.0.0.1:3306/replica"   # for handler = "mysql"
"""
SOURCE = '[[source]]\nname = "shop"\nmysql = "mysql://root@127.0.0.1"\nserver_id = 5401\n'
SMTP = '[smtp]\nhost = "127.0.0.1"\nfrom = "aesop@example.com"\nto = ["ops@example.com"]\n'
CONSUMER = '[[consumer]]\nname = "c"\ntopics = ["aesop.shop"]\nhandler = "route"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aesop.toml"
    path.write_text(text)
    return path


def test_the_spec_example_loads(tmp_path: Path) -> None:
    settings = load(write(tmp_path, SPEC_EXAMPLE), env={})
    assert (settings.id, settings.kafka, settings.zookeeper, settings.zk_root) == (
        "aesop", "kafka://127.0.0.1:9092", "127.0.0.1:2181", "/aesop",
    )  # fmt: skip
    assert settings.web_port == 6066 and settings.zookeeper_enabled
    (source,) = settings.sources
    assert source.name == "shop" and source.server_id == 5401 and source.start == "earliest"
    assert source.mysql == MySQLURL("127.0.0.1", 3306, "repl", "secret", None)
    assert (source.include, source.exclude, source.topic) == (
        ("shop.*",), ("shop.audit_*",), "aesop.shop",
    )  # fmt: skip
    (consumer,) = settings.consumers
    assert consumer.name == "orders-to-replica" and consumer.handler == "mysql"
    assert consumer.topics == ("aesop.shop", "aesop.billing")
    assert consumer.mysql == MySQLURL("127.0.0.1", 3306, "root", "", "replica")
    assert settings.source("shop") is source


def test_defaults(tmp_path: Path) -> None:
    settings = load(write(tmp_path, SOURCE), env={})
    assert (settings.id, settings.kafka, settings.zookeeper, settings.zk_root) == (
        "aesop", "kafka://127.0.0.1:9092", "127.0.0.1:2181", "/aesop",
    )  # fmt: skip
    assert (settings.web_port, settings.partitions, settings.consumers) == (6066, 8, ())
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    (source,) = settings.sources
    assert (source.include, source.exclude, source.start, source.topic) == (
        (), (), "earliest", "aesop.shop",
    )  # fmt: skip
    assert source.mysql == MySQLURL("127.0.0.1", 3306, "root", "", None)


def test_an_empty_file_is_a_valid_config_without_sources(tmp_path: Path) -> None:
    settings = load(write(tmp_path, ""), env={})
    assert settings.sources == () and settings.consumers == ()


@pytest.mark.parametrize(
    "start", ["earliest", "latest", "mysql-bin.000003:4", "binlog.000123:99", "gtid:0-1-57"]
)
def test_start_forms(tmp_path: Path, start: str) -> None:
    settings = load(write(tmp_path, SOURCE + f'start = "{start}"\n'), env={})
    assert settings.sources[0].start == start


def test_mysql_url_is_percent_decoded_and_the_password_never_shown(tmp_path: Path) -> None:
    text = SOURCE.replace("mysql://root@127.0.0.1", "mysql://re%40pl:p%3Ass%2Fw0rd@db.local:3307/x")
    url = load(write(tmp_path, text), env={}).sources[0].mysql
    assert url == MySQLURL("db.local", 3307, "re@pl", "p:ss/w0rd", "x")
    assert "p:ss/w0rd" not in repr(url) and "p:ss/w0rd" not in str(url)
    assert str(url) == "mysql://re@pl@db.local:3307/x"
    assert url.connect_args() == {
        "host": "db.local", "port": 3307, "user": "re@pl", "password": "p:ss/w0rd",
        "database": "x",
    }  # fmt: skip


def test_several_sources_and_consumers(tmp_path: Path) -> None:
    text = (
        SOURCE
        + SOURCE.replace('"shop"', '"billing"').replace("5401", "5402")
        + CONSUMER
        + CONSUMER.replace('"c"', '"d"').replace('"route"', '"pkg.mod:fun"')
    )
    settings = load(write(tmp_path, text), env={})
    assert [s.name for s in settings.sources] == ["shop", "billing"]
    assert [s.topic for s in settings.sources] == ["aesop.shop", "aesop.billing"]
    assert [(c.name, c.handler, c.mysql) for c in settings.consumers] == [
        ("c", "route", None), ("d", "pkg.mod:fun", None),
    ]  # fmt: skip


def test_environment_overrides_top_level_scalars(tmp_path: Path) -> None:
    env = {
        "AESOP_ID": "other",
        "AESOP_KAFKA": "kafka://k1:9092,k2:9092",
        "AESOP_ZOOKEEPER": "z1:2181,z2:2181/chroot",
        "AESOP_ZK_ROOT": "/elsewhere",
        "AESOP_WEB_PORT": "7000",
        "AESOP_PARTITIONS": "3",
        "AESOP_SOMETHING_ELSE": "ignored",
    }
    settings = load(write(tmp_path, SPEC_EXAMPLE), env=env)
    assert (settings.id, settings.kafka, settings.zookeeper, settings.zk_root) == (
        "other", "kafka://k1:9092,k2:9092", "z1:2181,z2:2181/chroot", "/elsewhere",
    )  # fmt: skip
    assert (settings.web_port, settings.partitions) == (7000, 3)
    assert settings.sources[0].name == "shop"  # [[source]] is not touched by the environment


def test_an_empty_zookeeper_disables_the_mirror(tmp_path: Path) -> None:
    settings = load(write(tmp_path, SPEC_EXAMPLE), env={"AESOP_ZOOKEEPER": ""})
    assert settings.zookeeper == "" and not settings.zookeeper_enabled


def test_the_path_comes_from_aesop_config_else_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "named.toml"
    named.write_text('[aesop]\nid = "named"\n')
    assert load(env={"AESOP_CONFIG": str(named)}).id == "named"
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[aesop]\nid = "local"\n')
    settings = load(env={})
    assert settings.id == "local" and settings.path == Path("aesop.toml")
    assert load(named, env={"AESOP_CONFIG": "ignored.toml"}).id == "named"


def test_lag_thresholds_and_smtp_have_defaults_and_keep_the_password_out_of_repr(
    tmp_path: Path,
) -> None:
    plain = load(write(tmp_path, SOURCE), env={})
    assert (plain.lag.warn_seconds, plain.lag.critical_seconds, plain.smtp) == (60.0, 300.0, None)
    assert (plain.lag.unread_seconds, plain.lag.stalled_seconds) == (10.0, 30.0)
    text = SMTP + 'port = 2525\nstarttls = true\nuser = "u"\npassword = "Hunter2"\n'
    text += "\n[lag]\nwarn_seconds = 5\ncritical_seconds = 7.5\nunread_seconds = 30\n"
    text += "stalled_seconds = 12\n"
    settings = load(write(tmp_path, text), env={})
    assert (settings.lag.warn_seconds, settings.lag.critical_seconds) == (5.0, 7.5)
    assert (settings.lag.unread_seconds, settings.lag.stalled_seconds) == (30.0, 12.0)
    smtp = settings.smtp
    assert smtp is not None
    assert (smtp.host, smtp.port, smtp.starttls, smtp.user, smtp.password) == (
        "127.0.0.1",
        2525,
        True,
        "u",
        "Hunter2",
    )
    assert (smtp.sender, smtp.to, smtp.schedule) == ("aesop@example.com", ("ops@example.com",),
                                                     "0 * * * *")  # fmt: skip
    assert "Hunter2" not in repr(settings)
    quiet = load(write(tmp_path, SMTP + 'schedule = ""\n'), env={})
    assert quiet.smtp is not None and quiet.smtp.schedule == ""


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load(write(tmp_path, SOURCE), env={})
    with pytest.raises(AttributeError):
        settings.kafka = "x"  # type: ignore[misc]


# Each bad config: its text, the environment, and what the one-line error must say after
# "<path>: ".
BAD = [
    # unknown keys and sections
    ('[aesop]\nkafak = "x"\n', {}, "[aesop].kafak: unknown key; known keys are id, kafka"),
    (SOURCE + 'includes = ["a.*"]\n', {}, "[[source]] 'shop'.includes: unknown key"),
    ('[[source]]\nnmae = "shop"\n', {}, "[[source]] #1.nmae: unknown key"),
    (CONSUMER + "group = 1\n", {}, "[[consumer]] 'c'.group: unknown key"),
    ("[sources]\n", {}, "sources: unknown section; known are [aesop], [[source]], [[consumer]], "
     "[lag], [smtp]"),
    ('kafka = "x:9092"\n', {}, "kafka: unknown section; known are [aesop], [[source]], "
     "[[consumer]], [lag], [smtp]; put it under [aesop]"),
    ('[source]\nname = "shop"\n', {}, "source: write sources as [[source]]"),
    ('aesop = "x"\n', {}, "[aesop]: must be a table"),
    ('source = ["x"]\n', {}, "[[source]] #1: must be a table"),
    # types
    ('[aesop]\nweb_port = "6066"\n', {}, "[aesop].web_port: must be an integer, got '6066'"),
    ("[aesop]\npartitions = true\n", {}, "[aesop].partitions: must be an integer, got True"),
    ("[aesop]\nkafka = 9092\n", {}, "[aesop].kafka: must be a string, got 9092"),
    (SOURCE.replace("5401", '"5401"'), {}, "[[source]] 'shop'.server_id: must be an integer"),
    (SOURCE + 'include = "shop.*"\n', {}, "[[source]] 'shop'.include: must be a list"),
    (SOURCE + "include = [1]\n", {}, "[[source]] 'shop'.include: must be a list of non-empty"),
    (SOURCE + 'exclude = [""]\n', {}, "[[source]] 'shop'.exclude: must be a list of non-empty"),
    ("[[source]]\nname = 5\n", {}, "[[source]] #1.name: must be a string, got 5"),
    # values
    ('[aesop]\nid = "My App"\n', {}, "[aesop].id: must match [a-z0-9_-]+"),
    ('[aesop]\nkafka = "kafka://host:port:x"\n', {}, "[aesop].kafka: must look like kafka://"),
    ('[aesop]\nzookeeper = "zk:abc"\n', {}, "[aesop].zookeeper: must look like host:2181"),
    ('[aesop]\nzk_root = "aesop"\n', {}, "[aesop].zk_root: must start with /"),
    ('[aesop]\nzk_root = "/aesop/"\n', {}, "[aesop].zk_root: must start with / and not end"),
    ("[aesop]\nweb_port = 0\n", {}, "[aesop].web_port: must be a TCP port"),
    ("[aesop]\nweb_port = 70000\n", {}, "[aesop].web_port: must be a TCP port"),
    ("[aesop]\npartitions = 0\n", {}, "[aesop].partitions: must be between 1 and 1024"),
    ("[aesop]\nreplication_factor = 0\n", {}, "[aesop].replication_factor: must be between 1"),
    ("[aesop]\nmin_insync_replicas = 0\n", {}, "[aesop].min_insync_replicas: must be between"),
    (SOURCE.replace('"shop"', '"Shop"'), {}, "[[source]] 'Shop'.name: must match [a-z0-9_-]+"),
    (SOURCE.replace('"shop"', '"a.b"'), {}, "[[source]] 'a.b'.name: must match"),
    (SOURCE.replace("5401", "0"), {}, "[[source]] 'shop'.server_id: must be between 1 and"),
    (SOURCE.replace("5401", "4294967296"), {}, "[[source]] 'shop'.server_id: must be between"),
    (SOURCE + 'start = "first"\n', {}, "[[source]] 'shop'.start: 'first' is not earliest"),
    (SOURCE + 'start = "mysql-bin:4"\n', {}, "[[source]] 'shop'.start: 'mysql-bin:4' is not"),
    (SOURCE + 'include = ["shop"]\n', {}, "[[source]] 'shop'.include: 'shop' must be a db.table"),
    (CONSUMER.replace('"route"', '"nope"'), {}, "[[consumer]] 'c'.handler: must be mysql, route"),
    (CONSUMER.replace('"route"', '"mysql"'), {}, "[[consumer]] 'c'.mysql: is required when"),
    (CONSUMER.replace('["aesop.shop"]', "[]"), {}, "[[consumer]] 'c'.topics: must name at least"),
    # mysql URLs
    (SOURCE.replace("mysql://", "postgres://"), {}, "[[source]] 'shop'.mysql: must look like "
     "mysql://user:password@host:3306[/db]"),
    (SOURCE.replace("mysql://root@127.0.0.1", "mysql:///db"), {},
     "[[source]] 'shop'.mysql: must look"),
    (SOURCE.replace("127.0.0.1", "127.0.0.1:abc"), {}, "[[source]] 'shop'.mysql: bad port"),
    (SOURCE.replace("127.0.0.1", "127.0.0.1:0"), {}, "[[source]] 'shop'.mysql: bad port 0"),
    (SOURCE.replace("127.0.0.1", "127.0.0.1:70000"), {}, "[[source]] 'shop'.mysql: bad port"),
    # duplicates
    (SOURCE + SOURCE.replace("5401", "5402"), {}, "[[source]].name: 'shop' is used twice"),
    (SOURCE + SOURCE.replace('"shop"', '"b"'), {}, "[[source]].server_id: 5401 is used twice"),
    (SOURCE + 'topic = "t"\n' + SOURCE.replace('"shop"', '"b"').replace("5401", "2")
     + 'topic = "t"\n', {}, "[[source]].topic: 't' is used twice"),
    (CONSUMER + CONSUMER, {}, "[[consumer]].name: 'c' is used twice"),
    # missing keys
    (SOURCE.replace("server_id = 5401\n", ""), {}, "[[source]] 'shop'.server_id: is required"),
    (SOURCE.replace('mysql = "mysql://root@127.0.0.1"\n', ""), {}, "[[source]] 'shop'.mysql: is"),
    ('[[source]]\nmysql = "mysql://h"\nserver_id = 1\n', {}, "[[source]] #1.name: is required"),
    (CONSUMER.replace('handler = "route"\n', ""), {}, "[[consumer]] 'c'.handler: is required"),
    # syntax
    ('[aesop\nid = "x"\n', {}, "not valid TOML (Expected ']' at the end of a table declaration "
     "(at line 1, column 7))"),
    ('[aesop]\nid = "x"\nid = "y"\n', {}, "not valid TOML"),
    # [lag] and [smtp]
    ("[lag]\nwarn = 5\n", {}, "[lag].warn: unknown key; known keys are critical_seconds"),
    ('[lag]\nwarn_seconds = "5"\n', {}, "[lag].warn_seconds: must be a number, got '5'"),
    ("[lag]\nwarn_seconds = true\n", {}, "[lag].warn_seconds: must be a number, got True"),
    ("[lag]\nwarn_seconds = 0\n", {}, "[lag].warn_seconds: must be above 0, got 0"),
    ("[lag]\nwarn_seconds = 10\ncritical_seconds = 5.5\n", {},
     "[lag].critical_seconds: must be at least warn_seconds (10), got 5.5"),
    ("[lag]\nunread_seconds = 2\n", {},
     "[lag].unread_seconds: must be at least 5 (relays report every 2 s), got 2"),
    ("[lag]\nstalled_seconds = 4.5\n", {}, "[lag].stalled_seconds: must be at least 5, got 4.5"),
    (SMTP + "tls = true\n", {}, "[smtp].tls: unknown key; known keys are from, host"),
    (SMTP.replace('host = "127.0.0.1"\n', ""), {}, "[smtp].host: is required"),
    (SMTP.replace('to = ["ops@example.com"]\n', ""), {}, "[smtp].to: is required"),
    (SMTP + "port = 0\n", {}, "[smtp].port: must be a TCP port (1..65535), got 0"),
    (SMTP + 'starttls = "yes"\n', {}, "[smtp].starttls: must be true or false, got 'yes'"),
    (SMTP + 'user = "u"\n', {}, "[smtp].password: user and password go together"),
    (SMTP.replace("aesop@example.com", "aesop"), {}, "[smtp].from: 'aesop' is not an email"),
    (SMTP.replace('["ops@example.com"]', "[]"), {}, "[smtp].to: must name at least one"),
    (SMTP.replace('["ops@example.com"]', '["ops"]'), {}, "[smtp].to: 'ops' is not an email"),
    (SMTP + 'schedule = "hourly"\n', {}, "[smtp].schedule: 'hourly' is not a cron expression"),
    (SMTP + "timeout = -1\n", {}, "[smtp].timeout: must be above 0, got -1"),
    # the environment
    ("", {"AESOP_WEB_PORT": "notanumber"},
     "AESOP_WEB_PORT (overrides [aesop].web_port): must be an integer, got 'notanumber'"),
    ("", {"AESOP_PARTITIONS": "8.5"}, "AESOP_PARTITIONS (overrides [aesop].partitions): must be"),
    ("", {"AESOP_ID": "Bad Id"}, "AESOP_ID (overrides [aesop].id): must match [a-z0-9_-]+"),
    ("", {"AESOP_ZK_ROOT": "x"}, "AESOP_ZK_ROOT (overrides [aesop].zk_root): must start with /"),
    ("", {"AESOP_WEB_PORT": "0"}, "AESOP_WEB_PORT (overrides [aesop].web_port): must be a TCP"),
    ("", {"AESOP_ZOOKEEPER": "zk:abc"}, "AESOP_ZOOKEEPER (overrides [aesop].zookeeper): must"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "env", "expected"), BAD)
def test_a_bad_config_is_one_line_naming_the_file_and_key(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, env=env)
    message = str(caught.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message
    assert caught.value.exit_code == 2


def test_a_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    assert str(caught.value) == (
        f"{path}: no such config file; create it or set AESOP_CONFIG to its path"
    )


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "aesop.toml"
    path.write_bytes(b'[aesop]\nid = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    assert str(caught.value).startswith(f"{path}: cannot read (")
    assert "\n" not in str(caught.value)


def test_a_secret_in_a_bad_url_is_not_echoed(tmp_path: Path) -> None:
    text = SOURCE.replace("mysql://root@127.0.0.1", "mysqll://root:Hunter2@127.0.0.1")
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), env={})
    assert "Hunter2" not in str(caught.value)
