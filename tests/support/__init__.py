"""Helpers for tests against the real stack, one module per concept.

- ``stack``: where the stack listens, the checkout, waiting on a condition, stopping and
  starting a service by its script;
- ``config``: a test's aesop TOML (``SourceSpec``, ``write_config``; the ``make_config``
  fixture in ``tests/conftest.py`` writes one under the test's temporary directory);
- ``workers``: ``faust -A app worker`` processes of a test, their data directories;
- ``mysql``: SQL on the stack's MariaDB and the server's own listing of its binlog;
- ``servers``: throwaway MariaDB servers a test starts with options of its own;
- ``kafka``: reading, waiting on and deleting topics;
- ``zookeeper``: reading and deleting nodes;
- ``load``: a writer thread and the exactly-once check of what it wrote.
"""
