"""Prometheus metrics of a worker, served as ``GET /metrics``."""

__all__ = ["AesopCollector"]

from metrics.collector import AesopCollector
