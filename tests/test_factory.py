"""The composition root, without a broker: what create_app wires, and the process settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agents import fetch
from agents.consumer import ConsumerRunner
from app import factory, logfilter
from app.errors import ConfigError, LibraryVersionError
from app.settings import Settings, load
from relay import _pmr_patches
from relay.service import RelayManager
from tables.zookeeper import ZooKeeperMirror

CONFIG = """
[aesop]
id = "{app_id}"
kafka = "kafka://127.0.0.1:1"
zookeeper = ""
web_port = 16099

[[source]]
name = "s1"
mysql = "mysql://root@127.0.0.1:1/"
server_id = 4242
include = ["db1.*"]

[[consumer]]
name = "c1"
topics = ["aesop.s1.db1.t"]
handler = "{handler}"
"""


def settings_of(
    tmp_path: Path, app_id: str, handler: str = "tests.sample_handlers:record"
) -> Settings:
    path = tmp_path / f"{app_id}.toml"
    path.write_text(CONFIG.format(app_id=app_id, handler=handler))
    return load(path, env={})


def test_assemble_wires_every_part_in_order_and_twice_in_one_process(tmp_path: Path) -> None:
    workers = [factory.assemble(settings_of(tmp_path, name)) for name in ("one", "two")]
    for worker in workers:
        app = worker.app
        services = app._extra_services  # what app.service() registered, in order
        assert [type(s) for s in services] == [ZooKeeperMirror, RelayManager, ConsumerRunner]
        assert services == [worker.store.zk, worker.relays, *worker.consumers]
        assert worker.relays.store is worker.store
        assert worker.store.topic == f"{app.conf.id}-source_to_checkpoint-changelog"
        assert worker.monitor.relays is worker.relays
        assert worker.monitor.consumers == worker.consumers
        views = ["/dashboard", "/health", "/lag", "/lag/history", "/metrics"]
        assert sorted(app.web.views) == views
    # Each app has a Prometheus registry of its own (a second one in the process used to
    # collide with the first's series in the global registry).
    first, second = (generate_latest(w.registry).decode() for w in workers)
    for text in (first, second):
        assert "# TYPE aesop_relay_state gauge" in text
        assert "# TYPE aesop_consumer_lag_events gauge" in text
        assert "# TYPE faust_messages_received_total counter" in text
        assert "process_cpu_seconds_total" in text


def test_a_handler_that_cannot_be_imported_is_a_config_error(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, "three", handler="tests.sample_handlers:no_such_function")
    with pytest.raises(ConfigError, match="has no function 'no_such_function'"):
        factory.create_app(settings)


def test_process_settings_are_made_at_worker_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    monkeypatch.setattr(fetch, "check_faust", lambda: made.append("faust"))
    monkeypatch.setattr(_pmr_patches, "apply", lambda: made.append("patches"))
    monkeypatch.setattr(logfilter, "install", lambda: made.append("log filter"))
    monkeypatch.setattr(sys, "setswitchinterval", lambda s: made.append(f"switch {s}"))
    app = factory.create_app(settings_of(tmp_path, "four"))
    assert made == []  # building the app changes nothing in the process
    app.on_worker_init.send()
    assert made == ["faust", "patches", "log filter", f"switch {factory.SWITCH_INTERVAL_S}"]


def test_the_binlog_patches_refuse_a_library_version_they_were_not_written_for() -> None:
    with pytest.raises(LibraryVersionError) as raised:
        _pmr_patches.check_version("1.0.9")
    message = str(raised.value)
    assert "mysql-replication 1.0.9 is installed" in message
    assert "\n" not in message
    _pmr_patches.check_version()  # the locked version passes


def test_the_consumers_refuse_a_faust_they_were_not_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(LibraryVersionError, match=r"^faust-streaming 0\.14\.0 is installed, "):
        fetch.check_faust("0.14.0")
    monkeypatch.delattr(fetch.faust_consumer.Consumer, "_wait_next_records")
    with pytest.raises(LibraryVersionError, match=r"it lacks Consumer\._wait_next_records"):
        fetch.check_faust()
    monkeypatch.undo()
    fetch.check_faust()
