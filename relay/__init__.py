"""The relay: binlog readers that publish change events to Kafka and checkpoint what was acked."""

__all__ = ["binlog", "service", "source", "worker"]
