"""Benchmarks of the relay against the local stack (`make bench`)."""
