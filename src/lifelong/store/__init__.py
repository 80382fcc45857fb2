"""Versions of a model: a store of immutable, checksummed state directories with an index in a database
(SQLite built in, PostgreSQL for teams), updates gated on regressions and negative flips, rollback, and
deletion of training data (exact or approximate, audited). See docs/store.md."""

from lifelong.store.store import Store, Version

__all__ = ["Store", "Version"]
