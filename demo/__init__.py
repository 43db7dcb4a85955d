"""The demo: a sample shop database, a load generator, and a worker whose events you watch."""
