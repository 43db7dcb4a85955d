"""The ``aesop`` command: check, lag, snapshot, worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import app.settings as settings_module
from app.errors import AesopError
from app.settings import MySQLURL, Settings
from tables.mirrored import NOT_JSON, Mirrored, ZooKeeperUnreachable, read_mirrored
from tables.paths import relay_path
from tables.positions import Checkpoint


def check_sources(settings: Settings, mirrored: Mirrored | None = None) -> list[str]:
    """Preflight every source from its mirrored checkpoint (if any); one line per source,
    errors first-class."""
    from relay import preflight

    mirrored = mirrored or Mirrored()
    lines = []
    for source in settings.sources:
        path = settings.zk_root + relay_path(source.name)
        if path in mirrored.bad:
            lines.append(f"error: source {source.name!r}: ZooKeeper {path}: {mirrored.bad[path]}")
            continue
        stored = mirrored.relays.get(source.name)
        checkpoint = None if stored is None else Checkpoint.from_json(stored)
        try:
            start, compression = preflight.check(source, checkpoint)
        except AesopError as exc:
            lines.append(ErrorLine(f"error: {exc}", exc.exit_code))
        else:
            origin = "checkpoint" if checkpoint else f"start = {source.start}"
            found = f"; binlog compression: {compression}" if compression else ""
            lines.append(
                f"ok: source {source.name!r}: reads from {start.position} ({origin}){found}"
            )
    return lines


class ErrorLine(str):
    """An ``error:`` line of ``aesop check``, with the exit code of its error (2: bad input,
    such as a GTID set the server cannot serve; 1: anything else)."""

    exit_code: int

    def __new__(cls, text: str, exit_code: int) -> ErrorLine:
        line = super().__new__(cls, text)
        line.exit_code = exit_code
        return line


def check_exit_code(lines: list[str]) -> int:
    """0 without an error line; else the highest exit code among them (1 unless told)."""
    codes = [getattr(line, "exit_code", 1) for line in lines if line.startswith("error")]
    return max(codes, default=0)


def check_consumers(settings: Settings) -> list[str]:
    """Every consumer's handler can be loaded, and a mysql destination answers."""
    from agents.handlers import load_function

    lines = []
    for consumer in settings.consumers:
        try:
            if consumer.handler == "mysql":
                assert consumer.mysql is not None
                _reach_destination(consumer.name, consumer.mysql)
            elif consumer.handler != "route":
                load_function(consumer)
        except AesopError as exc:
            lines.append(f"error: {exc}")
        else:
            topics = ", ".join(consumer.topics)
            lines.append(f"ok: consumer {consumer.name!r}: {consumer.handler} over {topics}")
    return lines


def _reach_destination(name: str, url: MySQLURL) -> None:
    import pymysql

    try:
        pymysql.connect(**url.connect_args(), connect_timeout=5).close()
    except pymysql.MySQLError as exc:
        raise AesopError(
            f"consumer {name!r}: destination {url} refused or unreachable ({exc.args[-1]}); "
            "is it running, and do the user, password and database exist?"
        ) from None


def mirrored_for_check(settings: Settings) -> Mirrored:
    """Relay checkpoints from the ZooKeeper mirror, read without a worker; a node that is not
    JSON, or ZooKeeper out of reach, is an error that stops the check. With the mirror off,
    the checkpoints come from the checkpoint table's Kafka changelog, as a worker reads them."""
    if not settings.zookeeper_enabled:
        return _changelogs_for_check(settings)
    try:
        mirrored = read_mirrored(settings)
    except ZooKeeperUnreachable:
        raise AesopError(
            f"cannot reach ZooKeeper at {settings.zookeeper}; is it running? "
            '(set zookeeper = "" to run without the mirror)'
        ) from None
    except Exception as exc:  # kazoo raises many kinds
        raise AesopError(
            f"cannot read ZooKeeper {settings.zookeeper} {settings.zk_root} ({exc!r}); "
            "is it healthy?"
        ) from None
    relays = {settings.zk_root + relay_path(source.name) for source in settings.sources}
    for path, why in mirrored.bad.items():
        if why == NOT_JSON and path in relays:  # heartbeats and positions are not checked
            raise AesopError(
                f"ZooKeeper {settings.zookeeper} {path} is not JSON; fix or delete that node"
            )
    return mirrored


def check_kafka(settings: Settings) -> list[str]:
    """Kafka's durability: aesop's topics against the replication settings, and unclean
    leader election on the brokers (see app.durability)."""
    from app import durability

    try:
        return durability.check_kafka(settings)
    except AesopError as exc:
        return [f"error: {exc}"]


def _changelogs_for_check(settings: Settings) -> Mirrored:
    from app.lag.probes import bootstrap_servers
    from tables.changelogs import read_changelogs

    if not settings.sources:
        return Mirrored()
    servers = bootstrap_servers(settings.kafka)
    try:
        return asyncio.run(asyncio.wait_for(read_changelogs(settings, servers), 30))
    except Exception as exc:
        text = str(exc.args[-1]) if exc.args else ""
        why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise AesopError(
            f"cannot read the relay checkpoints from Kafka at {settings.kafka} ({why}); "
            "is it running?"
        ) from None


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    lines = check_sources(settings, mirrored_for_check(settings)) + check_consumers(settings)
    lines += check_kafka(settings)
    for line in lines:
        print(line, file=sys.stderr if line.startswith("error") else sys.stdout)
    if not settings.sources and not settings.consumers:
        print(f"ok: {settings.path}: no [[source]] and no [[consumer]]; nothing to check")
    return check_exit_code(lines)


def cmd_lag(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when every lag is within the limit, 1 above it, 3 when a service is unreachable
    or no live worker reads a source."""
    import orjson

    from app import mail
    from app.lag import LagReport, build_report, unread_sources

    async def run() -> LagReport:
        report = await build_report(settings)
        if args.email:
            await mail.send(settings, report)
        return report

    if args.email and settings.smtp is None:
        raise AesopError(f"{settings.path}: no [smtp] section; add one to send the lag by email")
    report = asyncio.run(run())
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(mail.render(report))
    limit = settings.lag.critical_seconds if args.max_lag_seconds is None else args.max_lag_seconds
    down = mail.down_services(report) + unread_sources(report)
    lags = [(f"source {s.name}", s.behind.seconds) for s in report.sources]
    lags += [(f"consumer {c.name}", c.seconds_behind) for c in report.consumers]
    over = [
        f"{name} is {seconds:g}s behind (more than {limit:g}s)"
        for name, seconds in lags
        if seconds is not None and seconds > limit
    ]
    for line in down:
        print(f"aesop: {line}", file=sys.stderr)
    for line in over:
        print(f"aesop: {line}", file=sys.stderr)
    if down:
        return 3
    return 1 if over else 0


def cmd_snapshot(settings: Settings, args: argparse.Namespace) -> int:
    """Ask for an incremental snapshot; exit 0 once written (``--wait``: once done)."""
    from app import snapshot_cmd

    mirrored = mirrored_for_check(settings)
    after = snapshot_cmd.request(settings, args.source, args.tables, mirrored)
    snapshot_cmd.print_accepted(args.source, args.tables, after)
    if args.wait:
        snapshot_cmd.wait(
            settings, args.source, after, lambda: mirrored_for_check(settings), args.timeout
        )
        print(f"ok: source {args.source!r}: snapshot done")
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run a worker of these settings, as ``faust -A app worker`` would (it never returns)."""
    from app.factory import create_app

    worker_app = create_app(settings)
    sys.argv = ["aesop", "worker", "-l", args.loglevel]
    worker_app.main()
    return 0  # not reached: faust's command exits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aesop", description=__doc__)
    parser.add_argument("--config", help="config file (default: $AESOP_CONFIG or ./aesop.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="validate the config and every source")
    lag = commands.add_parser(
        "lag", help="relay and consumer lag from ZooKeeper, MySQL and Kafka (no worker needed)"
    )
    lag.add_argument("--json", action="store_true", help="print the report as JSON")
    lag.add_argument(
        "--max-lag-seconds",
        type=_seconds,
        help="exit 1 when any lag is above this (default: [lag] critical_seconds)",
    )
    lag.add_argument("--email", action="store_true", help="also send the report through [smtp]")
    snapshot = commands.add_parser(
        "snapshot", help="snapshot tables of a source while its relay streams (op r events)"
    )
    snapshot.add_argument("source", help="the [[source]]'s name")
    snapshot.add_argument("tables", nargs="+", metavar="DB.TABLE")
    snapshot.add_argument("--wait", action="store_true", help="return once it is done")
    snapshot.add_argument(
        "--timeout", type=_seconds, default=3600.0, help="with --wait: give up after (s)"
    )
    worker = commands.add_parser("worker", help="run a worker: relays and consumers")
    worker.add_argument("-l", "--loglevel", default="info")
    args = parser.parse_args(argv)
    # Library warnings (kazoo's reconnects) would reach stderr through logging's last
    # resort; the check reports each problem itself, in one line.
    logging.getLogger().addHandler(logging.NullHandler())
    # Handlers are imported as the worker (`python -m faust`) imports them: from the cwd too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings = settings_module.load(args.config)
        commands_by_name = {
            "check": cmd_check,
            "lag": cmd_lag,
            "snapshot": cmd_snapshot,
            "worker": cmd_worker,
        }
        return commands_by_name[args.command](settings, args)
    except AesopError as exc:
        print(f"aesop: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
