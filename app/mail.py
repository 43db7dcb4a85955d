"""The lag report as a table a person reads, and as an email sent through [smtp]."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import Any

import orjson

from app.errors import AesopError
from app.lag.report import LagReport
from app.settings import Settings, SmtpSettings


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header, *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def down_services(report: LagReport) -> list[str]:
    """One line per unreachable service: ``mysql (source shop): cannot reach ...``."""
    services = report.services
    lines = [
        f"mysql (source {name}): {state.error}"
        for name, state in services.mysql.items()
        if not state.ok
    ]
    lines += [f"{name}: {state.error}"
              for name, state in (("kafka", services.kafka), ("zookeeper", services.zookeeper))
              if not state.ok]  # fmt: skip
    return lines


def render(report: LagReport) -> str:
    """The report as plain text: services, a row per source, a row per consumer partition."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.ts_ms / 1000))
    limits = report.thresholds
    lines = [
        f"aesop lag at {when}: {report.status} "
        f"(warn at {limits.warn_seconds:g}s, critical at {limits.critical_seconds:g}s)",
        "",
    ]
    down = down_services(report)
    reachable = (
        "MySQL, Kafka and ZooKeeper" if report.services.zookeeper_enabled else "MySQL and Kafka"
    )
    lines += [f"DOWN {line}" for line in down] or [f"services: {reachable} reachable"]
    lines.append(report.positions.line())
    lines.append("")
    sources = []
    for s in report.sources:
        mysql, checkpoint, behind = s.mysql, s.checkpoint, s.behind
        sources.append([
            s.name, s.state,
            mysql and f"{mysql.file}:{mysql.pos}",
            checkpoint and f"{checkpoint.file}:{checkpoint.pos}",
            behind.bytes, behind.scn, behind.seconds, s.status,
        ])  # fmt: skip
    lines += _table(
        ["SOURCE", "STATE", "MYSQL", "CHECKPOINT", "BYTES", "SCN", "SECONDS", "STATUS"], sources
    )
    consumers = []
    for c in report.consumers:
        consumers.append([c.name, "(all)", None, None, None, None,
                          c.events_behind, c.seconds_behind, c.status])  # fmt: skip
        for p in c.partitions:
            consumers.append([
                "", f"{p.topic}/{p.partition}", p.scn, p.row, p.offset,
                p.end_offset, p.events_behind, p.seconds_behind, "",
            ])  # fmt: skip
    lines.append("")
    lines += _table(
        ["CONSUMER", "PARTITION", "SCN", "ROW", "OFFSET", "END", "EVENTS", "SECONDS", "STATUS"],
        consumers,
    )
    notes = [f"{kind} {e.name}: {e.error}" for kind, entries in
             (("source", report.sources), ("consumer", report.consumers))
             for e in entries if e.error]  # fmt: skip
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def message(settings: Settings, smtp: SmtpSettings, report: LagReport) -> EmailMessage:
    """The email: the table as the body, the JSON report attached."""
    email = EmailMessage()
    email["Subject"] = f"aesop lag: {report.status} ({settings.id})"
    email["From"] = smtp.sender
    email["To"] = ", ".join(smtp.to)
    email.set_content(render(report))
    email.add_attachment(
        orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2),
        maintype="application",
        subtype="json",
        filename="lag.json",
    )
    return email


def _send(smtp: SmtpSettings, email: EmailMessage) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context())
        if smtp.user is not None and smtp.password is not None:
            client.login(smtp.user, smtp.password)
        client.send_message(email)


async def send(settings: Settings, report: LagReport) -> None:
    """Mail the report to [smtp].to; an SMTP failure is one AesopError line."""
    smtp = settings.smtp
    if smtp is None:
        raise AesopError(f"{settings.path}: no [smtp] section; add one to send the lag by email")
    try:
        await asyncio.to_thread(_send, smtp, message(settings, smtp, report))
    except (smtplib.SMTPException, OSError) as exc:
        raise AesopError(
            f"cannot send the lag email through {smtp.host}:{smtp.port} "
            f"({type(exc).__name__}: {exc}); check [smtp] in {settings.path}"
        ) from None
