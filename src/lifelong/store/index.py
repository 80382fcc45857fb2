"""The store's index: one database (SQLite inside the store by default, PostgreSQL for teams) that lists the
versions, their lineage, tags, promotions and deletions. The version directories hold the state; a row
here is what makes a directory a version, so a writer first puts a complete, checksummed directory in
place and then commits its row in one transaction: a crash before the commit leaves an unlisted directory
(removed by `gc`), never a row without its directory.

Writers are serialised: SQLite takes its write lock when the transaction begins (`BEGIN IMMEDIATE`, WAL
journal so readers never wait), PostgreSQL an advisory lock held to the end of the transaction. A second
writer waits up to `lock_timeout` seconds, then fails with a message naming the store; readers see the
last committed state throughout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc

from lifelong.errors import StateError

SCHEMA_VERSION = 1
WRITER_LOCK_KEY = 0x11FE_10C6  # PostgreSQL advisory lock of the store's writers
DEFAULT_LOCK_TIMEOUT = 60.0

metadata = MetaData()
store_meta = Table(
    "lifelong_store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
versions = Table(
    "lifelong_versions",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("parent", Integer, ForeignKey("lifelong_versions.number"), nullable=True),
    Column("directory", String(64), nullable=False, unique=True),
    Column("manifest_sha256", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # candidate | promoted | rejected
    Column("origin", String(16), nullable=False),  # import | update | forget
    Column("architecture", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created", String(40), nullable=False),
    Column("creator", String(200), nullable=False),
    Column("config", Text, nullable=False),
    Column("methods", Text, nullable=False),
    Column("data", Text, nullable=False),  # per experience: name, sizes, hashes, ids digest and count
    Column("metrics", Text, nullable=False),
    Column("gate", Text, nullable=True),
    Column("sharded", Boolean, nullable=False, default=False),
)
tags = Table(
    "lifelong_tags",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, ForeignKey("lifelong_versions.number"), nullable=False),
)
promotions = Table(
    "lifelong_promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", Integer, ForeignKey("lifelong_versions.number"), nullable=False),
    Column("time", String(40), nullable=False),
    Column("who", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("forced", Boolean, nullable=False, default=False),
    Column("rolled_back", Boolean, nullable=False, default=False),
)
deletions = Table(
    "lifelong_deletions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", String(40), nullable=False),
    Column("who", String(200), nullable=False),
    Column("mode", String(16), nullable=False),  # exact | approximate
    Column("ids", Text, nullable=False),  # JSON list
    Column("parent", Integer, ForeignKey("lifelong_versions.number"), nullable=False),
    Column("version", Integer, ForeignKey("lifelong_versions.number"), nullable=False),
    Column("audit", Text, nullable=False),
)
log = Table(
    "lifelong_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", String(40), nullable=False),
    Column("who", String(200), nullable=False),
    Column("action", String(32), nullable=False),
    Column("version", Integer, nullable=True),
    Column("detail", Text, nullable=False),
)


class StoreBusyError(StateError):
    """Another writer held the store for longer than the lock timeout."""


def sqlite_url(store_dir: Path) -> str:
    return f"sqlite:///{(store_dir / 'index.db').resolve()}"


def safe_url(url: str) -> str:
    """`url` with any password masked, for messages and listings."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _driver_url(url: str) -> str:
    # plain postgresql:// means psycopg 3 here (the `postgres` extra), not SQLAlchemy's default psycopg2
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Index:
    """The store's database. `Index(url)` connects (and says clearly when it cannot); `create()` makes the
    tables; `read()` and `write()` give a connection inside one transaction."""

    def __init__(self, url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, label: str = "") -> None:
        self.url = url
        self.label = label or "the store"
        self.lock_timeout = lock_timeout
        self.is_sqlite = url.startswith("sqlite")
        self.engine = self._engine()
        self._check_reachable()

    def _engine(self) -> Engine:
        url = _driver_url(self.url)
        if self.is_sqlite:
            engine = create_engine(url, connect_args={"timeout": self.lock_timeout})

            @event.listens_for(engine, "connect")
            def _connect(dbapi_connection: Any, _record: Any) -> None:
                # the driver's own transaction handling off: we issue BEGIN (IMMEDIATE for writers) below
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={int(self.lock_timeout * 1000)}")
                cursor.close()

            @event.listens_for(engine, "begin")
            def _begin(connection: Connection) -> None:
                writer = connection.get_execution_options().get("writer", False)
                connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

            return engine
        if url.startswith("postgresql"):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise StateError(
                    "a PostgreSQL store needs the psycopg driver: pip install 'lifelong[postgres]'"
                ) from None
            return create_engine(url, connect_args={"connect_timeout": 10}, pool_pre_ping=True)
        raise StateError(
            f"database URL {safe_url(self.url)!r} is not supported; use sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DATABASE"
        )

    def _check_reachable(self) -> None:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except sa_exc.OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            hint = (
                "start the server (e.g. `sudo service postgresql start`, or `pg_ctl -D DATADIR start`) and "
                "check the host, port, user and database in the URL"
                if not self.is_sqlite
                else "check that the store folder exists and is writable"
            )
            raise StateError(f"cannot reach the database {safe_url(self.url)}: {reason}; {hint}") from None

    # --- transactions ------------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction that sees one snapshot of the index from its first statement to its end: a
        version and whether it is promoted are read from the same state, while writers commit (SQLite's
        WAL read transactions are snapshots; PostgreSQL needs REPEATABLE READ, its default READ COMMITTED
        lets each statement see the latest commit)."""
        with self.engine.connect() as connection:
            if not self.is_sqlite:
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds the store's writer lock until it commits (or rolls back)."""
        try:
            with self.engine.connect().execution_options(writer=True) as connection:
                with connection.begin():
                    if not self.is_sqlite:
                        ms = int(self.lock_timeout * 1000)
                        connection.execute(text(f"SET LOCAL lock_timeout = {ms}"))
                        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITER_LOCK_KEY})
                    yield connection
        except sa_exc.OperationalError as e:
            message = str(e.orig or e).lower()
            if "locked" in message or "lock timeout" in message or "canceling statement" in message:
                raise StoreBusyError(
                    f"another process is writing to {self.label} (index {safe_url(self.url)}) and held it "
                    f"for more than {self.lock_timeout:g} s; try again when it has finished (or raise "
                    "the lock timeout)"
                ) from None
            raise

    # --- schema ------------------------------------------------------------------------------------------

    def create(self, store_id: str) -> None:
        """Make the tables and record which store they belong to; refuse a database that holds another
        store's index."""
        metadata.create_all(self.engine)
        with self.write() as connection:
            found = connection.execute(
                select(store_meta.c.value).where(store_meta.c.key == "store_id")
            ).scalar_one_or_none()
            if found is not None and found != store_id:
                raise StateError(
                    f"the database {safe_url(self.url)} already holds the index of another store "
                    f"(id {found}); give each store its own database"
                )
            if found is None:
                connection.execute(
                    insert(store_meta),
                    [
                        {"key": "store_id", "value": store_id},
                        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                    ],
                )

    def check(self, store_id: str, where: Path) -> None:
        """The tables exist and belong to the store in `where`."""
        try:
            with self.read() as connection:
                found = connection.execute(
                    select(store_meta.c.value).where(store_meta.c.key == "store_id")
                ).scalar_one_or_none()
        except sa_exc.ProgrammingError:
            found = None
        except sa_exc.OperationalError as e:
            if "no such table" not in str(e):
                raise
            found = None
        if found is None:
            raise StateError(
                f"the database {safe_url(self.url)} of store {where} holds no store index; run "
                f"`lifelong store init {where} --db URL` again with the right database"
            )
        if found != store_id:
            raise StateError(
                f"the database {safe_url(self.url)} holds the index of another store (id {found}, this "
                f"store is {store_id}); point store {where} at its own database"
            )


def next_number(connection: Connection) -> int:
    return int(connection.execute(select(func.coalesce(func.max(versions.c.number), 0))).scalar_one()) + 1


def promoted_number(connection: Connection) -> int | None:
    row = connection.execute(
        select(promotions.c.version)
        .where(promotions.c.rolled_back.is_(False))
        .order_by(promotions.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else int(row[0])


def add_log(
    connection: Connection, who: str, action: str, version: int | None, detail: dict, now: str
) -> None:
    connection.execute(
        insert(log).values(time=now, who=who, action=action, version=version, detail=json.dumps(detail))
    )


def set_status(connection: Connection, number: int, status: str) -> None:
    connection.execute(update(versions).where(versions.c.number == number).values(status=status))
