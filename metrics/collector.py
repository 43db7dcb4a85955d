"""aesop's own Prometheus series, read at scrape time from the relays and consumers.

Nothing is counted per change on a hot path: the relay adds its counts once per rows event
and batch (``relay.handoff.Batch.counts``), consumers keep their ``stats``, and this
collector turns both into series when Prometheus asks. Everything it reads lives on the
event loop, where the scrape runs, so it reads without locks and never blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.snapshot import INCREMENTAL, INITIAL
from relay.source import FAILED, READING, RETRYING, STARTING, STOPPED, STOPPING
from tables.paths import applied_key
from tables.positions import AppliedPosition

STATES = (STARTING, READING, RETRYING, FAILED, STOPPING, STOPPED)
SNAPSHOT_KINDS = (INITIAL, INCREMENTAL)
Family = CounterMetricFamily | GaugeMetricFamily


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class AesopCollector(Collector):
    """The relay and consumer series of one worker (the sources and partitions it runs)."""

    def __init__(
        self,
        relays: Any,
        consumers: Iterable[Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.relays = relays
        self.consumers = list(consumers)
        self.clock = clock
        # (consumer, topic, partition) -> when a scrape first saw changes waiting there.
        self._waiting_since: dict[tuple[str, str, int], float] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        now = self.clock()
        self._relay_samples(families, now)
        self._consumer_samples(families, now)
        unread = families[15]
        for source in self.relays.sources:
            unread.add_metric([source.name], self.relays.unread_for(source.name, now) or 0.0)
        self._snapshot_samples(families)
        return iter(families)

    @staticmethod
    def _families() -> list[Family]:
        return [
            _counter("aesop_relay_events_published",
                     "Change events Kafka acknowledged, per source, table (db.table) and op.",
                     ["source", "table", "op"]),
            _counter("aesop_relay_reconnects",
                     "Times the relay reconnected to its source after a failure.", ["source"]),
            _gauge("aesop_relay_state",
                   "1 for the relay's current state (starting, reading, retrying, failed, "
                   "stopped), 0 for the others.", ["source", "state"]),
            _gauge("aesop_relay_lag_seconds",
                   "Seconds from the binlog timestamp of the last change Kafka acknowledged "
                   "to that acknowledgement.", ["source"]),
            _gauge("aesop_relay_last_event_timestamp_seconds",
                   "Binlog timestamp of the last change Kafka acknowledged.", ["source"]),
            _gauge("aesop_relay_scn", "SCN of the last change Kafka acknowledged.", ["source"]),
            _gauge("aesop_relay_checkpoint_age_seconds",
                   "Seconds since the saved checkpoint was taken.", ["source"]),
            _counter("aesop_consumer_events_consumed",
                     "Messages the consumer took from Kafka.", ["consumer"]),
            _counter("aesop_consumer_events_applied",
                     "Changes the handler applied, per source, table (db.table) and op.",
                     ["consumer", "source", "table", "op"]),
            _counter("aesop_consumer_skipped",
                     "Changes skipped as already applied (at or below the partition's "
                     "applied (scn, row)).", ["consumer"]),
            _counter("aesop_consumer_dead_lettered",
                     "Messages sent to the consumer's dead-letter topic.", ["consumer"]),
            _counter("aesop_consumer_retries",
                     "Transient handler failures retried.", ["consumer"]),
            _gauge("aesop_consumer_applied_scn",
                   "SCN of the last change applied in the partition.",
                   ["consumer", "topic", "partition", "source"]),
            _gauge("aesop_consumer_lag_events",
                   "Messages in the partition after the last one processed.",
                   ["consumer", "topic", "partition"]),
            _gauge("aesop_consumer_lag_seconds",
                   "While messages wait in the partition: seconds since it last applied "
                   "one (or since a scrape first saw them waiting, if later); else 0.",
                   ["consumer", "topic", "partition"]),
            _gauge("aesop_source_unread_seconds",
                   "Seconds the source has gone without a live relay on any worker, as this "
                   "worker sees it (once past [lag] unread_seconds; else 0).", ["source"]),
            _gauge("aesop_snapshot_running",
                   "1 while a snapshot of the source is under way (by kind: initial or "
                   "incremental), as its saved checkpoint says; else 0.", ["source", "kind"]),
            _gauge("aesop_snapshot_tables_left",
                   "Tables of the snapshot under way not done yet, the one being read "
                   "included.", ["source"]),
            _gauge("aesop_snapshot_rows",
                   "Rows the snapshot under way has published (Kafka acknowledged), every "
                   "table.", ["source"]),
            _gauge("aesop_snapshot_table_rows",
                   "Rows of the table being read that the snapshot has published.",
                   ["source", "table"]),
            _gauge("aesop_snapshot_table_rows_estimate",
                   "The server's estimate of the rows of the table being read.",
                   ["source", "table"]),
            _gauge("aesop_snapshot_table_chunks",
                   "Chunks of the table being read that the snapshot has published.",
                   ["source", "table"]),
        ]  # fmt: skip

    def _relay_samples(self, families: list[Family], now: float) -> None:
        published, reconnects, state, lag, last_ts, scn, age = families[:7]
        for name, relay in sorted(self.relays.relays.items()):
            for (db, table, op), count in sorted(relay.published.items()):
                published.add_metric([name, f"{db}.{table}", op], count)
            reconnects.add_metric([name], relay.reconnects)
            for each in STATES:
                state.add_metric([name, each], 1.0 if relay.state == each else 0.0)
            if relay.lag_s is not None:
                lag.add_metric([name], relay.lag_s)
            if relay.last_commit_ts is not None:
                last_ts.add_metric([name], relay.last_commit_ts)
            if relay.acked is not None:
                scn.add_metric([name], relay.acked.scn)
            if relay.saved is not None:
                age.add_metric([name], max(0.0, now - relay.saved.ts_ms / 1000))

    def _snapshot_samples(self, families: list[Family]) -> None:
        running, left, rows, table_rows, estimate, chunks = families[16:22]
        for name, relay in sorted(self.relays.relays.items()):
            progress = None if relay.saved is None else relay.saved.snapshot
            for kind in SNAPSHOT_KINDS:
                under_way = progress is not None and progress.kind == kind
                running.add_metric([name, kind], 1.0 if under_way else 0.0)
            left.add_metric([name], 0.0 if progress is None else len(progress.tables))
            if progress is None:
                continue
            rows.add_metric([name], progress.rows)
            if progress.tables:
                table = ".".join(progress.tables[0])
                table_rows.add_metric([name, table], progress.done)
                chunks.add_metric([name, table], progress.chunks)
                if progress.estimate is not None:
                    estimate.add_metric([name, table], progress.estimate)

    def _consumer_samples(self, families: list[Family], now: float) -> None:
        consumed, applied, skipped, dead, retries, applied_scn, lag_events, lag_s = families[7:15]
        waiting: set[tuple[str, str, int]] = set()
        for runner in self.consumers:
            name, stats = runner.name, runner.stats
            consumed.add_metric([name], stats.consumed)
            for (source, table, op), count in sorted(stats.applied.items()):
                applied.add_metric([name, source, table, op], count)
            skipped.add_metric([name], stats.skipped)
            dead.add_metric([name], stats.dead_lettered)
            retries.add_metric([name], stats.retries)
            for topic, partition, document, highwater in self._partitions(runner):
                labels = [name, topic, str(partition)]
                position = AppliedPosition.from_json(document)
                if position is not None:
                    # None when the position came from the ZooKeeper mirror, which keeps no
                    # source: an empty label, as for a position without one, not "None".
                    applied_scn.add_metric([*labels, position.source or ""], position.scn)
                if highwater is None:
                    continue
                next_offset = (
                    0 if position is None or position.offset is None else position.offset + 1
                )
                behind = max(0, highwater - next_offset)
                lag_events.add_metric(labels, behind)
                if behind == 0:
                    lag_s.add_metric(labels, 0.0)
                    continue
                key = (name, topic, partition)
                waiting.add(key)
                since = self._waiting_since.setdefault(key, now)
                if document is not None:
                    since = max(since, document["ts_ms"] / 1000)
                lag_s.add_metric(labels, max(0.0, now - since))
        for key in set(self._waiting_since) - waiting:
            del self._waiting_since[key]

    def _partitions(
        self, runner: Any
    ) -> Iterator[tuple[str, int, dict[str, Any] | None, int | None]]:
        """Per partition of the consumer's topics this worker holds: the applied position
        (the ``applied`` table) and the partition's high watermark, where known."""
        app = runner.app
        if not app.started or app.should_stop:
            return
        consumer = app.consumer
        topics = set(runner.consumer.topics)
        try:
            assigned = sorted(tp for tp in consumer.assignment() if tp.topic in topics)
        except Exception:  # the Kafka consumer is not running (yet, or any more)
            return
        data = runner.applied.data
        for tp in assigned:
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched from yet, or revoked meanwhile
                highwater = None
            yield tp.topic, tp.partition, data.get(applied_key(tp.topic, tp.partition)), highwater
