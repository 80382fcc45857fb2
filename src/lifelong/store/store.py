"""A model store: immutable, checksummed version directories plus an index in a database.

    STORE/
      store.json          marks the folder as a store: its id and the database URL of its index
      index.db            the index (SQLite, WAL), unless the store was made with --db postgresql://...
      versions/<uuid>/    one version: a run directory (config.json, run.json, checkpoints/, results.json)
                          plus data.json (the sample ids per experience) and MANIFEST.json (SHA-256 of
                          every file); files are made read-only
      staging/<uuid>/     work in progress (a candidate being trained, a version being copied): never read

Adding a version: the directory is completed and checksummed in `staging/`, renamed into `versions/`
(atomic on one file system), then its row is committed. A crash before the commit leaves a directory no
row names (invisible; `gc` removes it); the commit is one transaction, so there is never a row without its
directory. Every read of a version checks its files against MANIFEST.json and MANIFEST.json against the
digest in the index: a tampered or truncated version is refused, and the message says which.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from lifelong.atomic import atomic_write_json, fsync_dir, read_json
from lifelong.errors import ConfigError, StateError
from lifelong.store import index as ix
from lifelong.store.gate import GatePolicy

STORE_FILE = "store.json"
MANIFEST = "MANIFEST.json"
DATA_FILE = "data.json"
FORMAT = "lifelong-store"
PID_FILE = ".writer.pid"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_user() -> str:
    """Who makes a change: $LIFELONG_USER, else the login name and host."""
    given = os.environ.get("LIFELONG_USER")
    if given:
        return given
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass
class Version:
    """One version as the index records it."""

    number: int
    parent: int | None
    directory: str
    status: str  # candidate | promoted | rejected (promoted: passed, or forced, and made current once)
    origin: str  # import | update | forget
    architecture: str
    kind: str
    created: str
    creator: str
    config: dict[str, Any]
    methods: list[str]
    data: list[dict[str, Any]]
    metrics: dict[str, Any]
    gate: dict[str, Any] | None
    sharded: bool
    manifest_sha256: str
    promoted: bool = False  # the version served now
    tags: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"v{self.number}"

    def summary(self) -> dict[str, Any]:
        """What `store list --json` prints for it."""
        return {
            "version": self.number,
            "parent": self.parent,
            "promoted": self.promoted,
            "created": self.created,
            "status": self.status,
            "origin": self.origin,
            "creator": self.creator,
            "tags": self.tags,
            "experiences": len(self.data),
            "metric": self.metrics.get("metric"),
            "mean": self.metrics.get("mean"),
        }

    def as_dict(self) -> dict[str, Any]:
        out = self.summary()
        out.update(
            directory=self.directory,
            architecture=self.architecture,
            kind=self.kind,
            config=self.config,
            methods=self.methods,
            data=self.data,
            metrics=self.metrics,
            gate=self.gate,
            sharded=self.sharded,
            manifest_sha256=self.manifest_sha256,
        )
        return out


def _row_to_version(row: Any, promoted: int | None, tag_names: dict[int, list[str]]) -> Version:
    return Version(
        number=row.number,
        parent=row.parent,
        directory=row.directory,
        status=row.status,
        origin=row.origin,
        architecture=row.architecture,
        kind=row.kind,
        created=row.created,
        creator=row.creator,
        config=json.loads(row.config),
        methods=json.loads(row.methods),
        data=json.loads(row.data),
        metrics=json.loads(row.metrics),
        gate=None if row.gate is None else json.loads(row.gate),
        sharded=bool(row.sharded),
        manifest_sha256=row.manifest_sha256,
        promoted=row.number == promoted,
        tags=sorted(tag_names.get(row.number, [])),
    )


# --- files -------------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> str:
    """Checksum every file of `directory` into MANIFEST.json (fsynced), make them read-only; return the
    manifest's own SHA-256, which the index records."""
    files = {}
    total = 0
    for path in _files(directory):
        if path == directory / PID_FILE:
            continue
        rel = path.relative_to(directory).as_posix()
        files[rel] = file_digest(path)
        total += path.stat().st_size
        with path.open("rb") as f:
            os.fsync(f.fileno())
    for sub in sorted({p.parent for p in _files(directory)} | {directory}):
        fsync_dir(sub)
    digest = atomic_write_json(directory / MANIFEST, {"files": files, "bytes": total})
    for path in _files(directory):
        if path == directory / PID_FILE:
            continue
        path.chmod(0o444)  # immutable by convention: a write needs a deliberate chmod
    return digest


def verify_directory(directory: Path, manifest_sha256: str, label: str) -> None:
    """Refuse a version whose files differ from what was recorded (edited, truncated, missing, added)."""
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise StateError(f"{label}: its directory {directory} is missing; restore it from a backup")
    if not manifest_path.is_file() or file_digest(manifest_path) != manifest_sha256:
        raise StateError(
            f"{label}: {manifest_path} is missing or was changed after the version was written; the version "
            "cannot be trusted (restore it from a backup)"
        )
    recorded = read_json(manifest_path, "version manifest")["files"]
    present = {p.relative_to(directory).as_posix() for p in _files(directory)}
    missing = sorted(set(recorded) - present)
    extra = sorted(present - set(recorded))
    if missing:
        raise StateError(f"{label}: file {missing[0]} is missing from {directory}; restore it from a backup")
    if extra:
        raise StateError(
            f"{label}: file {extra[0]} was added to {directory} after the version was written; versions are "
            "immutable (remove it, or restore the directory from a backup)"
        )
    for rel, digest in recorded.items():
        if file_digest(directory / rel) != digest:
            raise StateError(
                f"{label}: file {rel} in {directory} was changed or truncated after the version was written "
                "(its SHA-256 differs from the manifest); restore it from a backup"
            )


def copy_run(source: Path, dest: Path) -> None:
    """A writable copy of a run or version directory (no manifest, no read-only modes)."""
    shutil.copytree(
        source,
        dest,
        copy_function=shutil.copyfile,
        ignore=shutil.ignore_patterns(MANIFEST, ".*.tmp", "tensorboard", "mlflow.db"),
    )


# --- the store ---------------------------------------------------------------------------------------------


class Store:
    """A model store (see the module docstring). `Store.init(path, db=None)` makes one; `Store(path)` opens
    one."""

    def __init__(self, path: str | Path, lock_timeout: float = ix.DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = Path(path).expanduser().resolve()
        marker = self.path / STORE_FILE
        if not marker.is_file():
            what = "does not exist" if not self.path.exists() else "is not a lifelong store (no store.json)"
            raise StateError(f"{self.path} {what}; make a store with `lifelong store init {self.path}`")
        info = read_json(marker, "store description")
        if not isinstance(info, dict) or info.get("format") != FORMAT or "id" not in info:
            raise StateError(f"{marker} is not a lifelong store description; is {self.path} a store?")
        self.id: str = info["id"]
        url = info.get("db") or ix.sqlite_url(self.path)
        self.url = os.environ.get("LIFELONG_STORE_DB", url) if info.get("db") else url
        self.index = ix.Index(self.url, lock_timeout, label=f"store {self.path}")
        self.index.check(self.id, self.path)

    def gate_policy(self) -> GatePolicy:
        """The store's default gate (set at `init`; `update` may override it per call)."""
        gate = read_json(self.path / STORE_FILE, "store description").get("gate") or {}
        return GatePolicy(**gate)

    @classmethod
    def init(cls, path: str | Path, db: str | None = None, gate: GatePolicy | None = None) -> Store:
        """Make a store at `path` (a new or empty folder) with its index in SQLite inside it, or in the
        database `db` (e.g. postgresql://user@host:5432/lifelong). The database is reached and its tables
        made before anything is written to `path`."""
        path = Path(path).expanduser().resolve()
        if (path / STORE_FILE).exists():
            raise StateError(f"{path} is already a store; use it, or choose another folder")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StateError(f"{path} exists and is not an empty folder; choose a new or empty folder")
        store_id = uuid.uuid4().hex
        if db is not None:
            index = ix.Index(db)  # reachable, with the driver, before any file exists
            index.create(store_id)
            index.engine.dispose()
        path.mkdir(parents=True, exist_ok=True)
        try:
            if db is None:
                local = ix.Index(ix.sqlite_url(path))
                local.create(store_id)
                local.engine.dispose()
            for sub in ("versions", "staging"):
                (path / sub).mkdir(exist_ok=True)
            policy = asdict(gate or GatePolicy())
            description = {"format": FORMAT, "format_version": 1, "id": store_id, "db": db, "gate": policy}
            atomic_write_json(path / STORE_FILE, description)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path)

    # --- reading -----------------------------------------------------------------------------------------

    def _tags(self, connection: Connection) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name, version in connection.execute(select(ix.tags.c.name, ix.tags.c.version)):
            out.setdefault(int(version), []).append(name)
        return out

    def versions(self) -> list[Version]:
        with self.index.read() as connection:
            promoted = ix.promoted_number(connection)
            tags = self._tags(connection)
            rows = connection.execute(select(ix.versions).order_by(ix.versions.c.number)).all()
        return [_row_to_version(r, promoted, tags) for r in rows]

    def promoted(self) -> Version | None:
        with self.index.read() as connection:
            number = ix.promoted_number(connection)
        return None if number is None else self.version(number)

    def version(self, ref: int | str) -> Version:
        """A version by number (3, "3", "v3"), tag name, or "promoted" / "latest"."""
        with self.index.read() as connection:
            number = self._resolve(connection, ref)
            promoted = ix.promoted_number(connection)
            tags = self._tags(connection)
            row = connection.execute(select(ix.versions).where(ix.versions.c.number == number)).one()
        return _row_to_version(row, promoted, tags)

    def _resolve(self, connection: Connection, ref: int | str) -> int:
        known = [int(n) for (n,) in connection.execute(select(ix.versions.c.number))]
        if not known:
            raise StateError(
                f"store {self.path} holds no version yet (`lifelong store import` or `lifelong update`)"
            )
        if isinstance(ref, str):
            word = ref.strip()
            if word == "promoted":
                number = ix.promoted_number(connection)
                if number is None:
                    raise StateError(f"store {self.path} has no promoted version")
                return number
            if word == "latest":
                return max(known)
            tagged = connection.execute(select(ix.tags.c.version).where(ix.tags.c.name == word)).first()
            if tagged is not None:
                return int(tagged[0])
            digits = word[1:] if word[:1] in ("v", "V") else word
            if not digits.isdigit():
                raise StateError(
                    f"no version or tag {ref!r} in store {self.path}; versions are "
                    f"v{min(known)}..v{max(known)} (`lifelong store list {self.path}`)"
                )
            ref = int(digits)
        if ref not in known:
            raise StateError(f"store {self.path} has no version {ref}; it holds v{min(known)}..v{max(known)}")
        return int(ref)

    def directory(self, version: Version, verify: bool = True) -> Path:
        """The version's directory, its files checked against the manifest first."""
        path = self.path / "versions" / version.directory
        if verify:
            verify_directory(path, version.manifest_sha256, f"version {version.number} of store {self.path}")
        return path

    def new_staging(self) -> Path:
        """A fresh folder in staging/ for a version being made, marked with this process's id (so `gc`
        leaves it alone while the process lives)."""
        path = self.path / "staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        (path / PID_FILE).write_text(str(os.getpid()))
        return path

    # --- writing -----------------------------------------------------------------------------------------

    def add_version(
        self,
        staged: Path,
        *,
        parent: int | None,
        origin: str,
        architecture: str,
        kind: str,
        config: dict[str, Any],
        methods: list[str],
        data: list[dict[str, Any]],
        metrics: dict[str, Any],
        gate: dict[str, Any] | None,
        promote: bool,
        reason: str,
        sharded: bool = False,
        expected_promoted: int | None = None,
        deletion: dict[str, Any] | None = None,
        who: str | None = None,
    ) -> Version:
        """Publish the finished directory `staged` (inside staging/) as the next version, and promote it
        when `promote`. `expected_promoted`: the promoted version the candidate was made from; if another
        writer promoted something else meanwhile, the candidate is still recorded but not promoted."""
        who = who or current_user()
        digest = write_manifest(staged)
        published = self.path / "versions" / staged.name
        try:
            with self.index.write() as connection:
                _publish(staged, published)
                (published / PID_FILE).unlink(missing_ok=True)
                number = ix.next_number(connection)
                current = ix.promoted_number(connection)
                raced = promote and parent is not None and current != expected_promoted
                refused = gate is not None and not gate.get("passed", True)
                status = "rejected" if refused else "promoted" if promote and not raced else "candidate"
                connection.execute(
                    insert(ix.versions).values(
                        number=number,
                        parent=parent,
                        directory=published.name,
                        manifest_sha256=digest,
                        status=status,
                        origin=origin,
                        architecture=architecture,
                        kind=kind,
                        created=now(),
                        creator=who,
                        config=json.dumps(config, sort_keys=True),
                        methods=json.dumps(methods),
                        data=json.dumps(data),
                        metrics=json.dumps(metrics),
                        gate=None if gate is None else json.dumps(gate),
                        sharded=sharded,
                    )
                )
                detail: dict[str, Any] = {"origin": origin, "parent": parent}
                if raced:
                    detail["not_promoted"] = (
                        f"another writer promoted v{current} while this candidate was made from "
                        f"v{expected_promoted}"
                    )
                ix.add_log(connection, who, "add", number, detail, now())
                if promote and not raced:
                    _promote(connection, number, who, reason, forced=False)
                if deletion is not None:  # the deletion log and the version that carries it out: one commit
                    connection.execute(
                        insert(ix.deletions).values(
                            time=now(),
                            who=who,
                            mode=deletion["mode"],
                            ids=json.dumps(sorted(deletion["ids"])),
                            parent=parent,
                            version=number,
                            audit=json.dumps(deletion["audit"]),
                        )
                    )
                _before_commit(number)
        except BaseException:
            # the row was not committed: the directory is unlisted; remove it now (gc would, later)
            shutil.rmtree(published, ignore_errors=True)
            raise
        return self.version(number)

    def promote(
        self, ref: int | str, force: bool = False, reason: str = "", who: str | None = None
    ) -> Version:
        """Make `ref` the served version. A version the gate refused needs `force` (logged)."""
        who = who or current_user()
        target = self.version(ref)
        self.directory(target)  # refuse a damaged version before serving it
        if target.promoted:
            return target
        failed = target.gate is not None and not target.gate.get("passed", True)
        if failed and not force:
            raise StateError(
                f"version {target.number} failed the gate "
                f"({(target.gate or {}).get('reason', 'see store show')}); promote it anyway with --force "
                "(the override is logged)"
            )
        with self.index.write() as connection:
            _promote(
                connection,
                target.number,
                who,
                reason or ("forced past the gate" if failed else "promote"),
                failed,
            )
            ix.add_log(connection, who, "promote", target.number, {"forced": failed, "reason": reason}, now())
        return self.version(target.number)

    def rollback(self, who: str | None = None) -> tuple[Version, Version]:
        """Serve the version promoted before the current one again; returns (from, to)."""
        who = who or current_user()
        with self.index.write() as connection:
            rows = connection.execute(
                select(ix.promotions.c.id, ix.promotions.c.version)
                .where(ix.promotions.c.rolled_back.is_(False))
                .order_by(ix.promotions.c.id.desc())
            ).all()
            if not rows:
                raise StateError(f"store {self.path} has no promoted version to roll back")
            current = int(rows[0].version)
            earlier = [r for r in rows[1:] if int(r.version) != current]
            if not earlier:
                raise StateError(
                    f"version {current} is the first version promoted in store {self.path}: there is nothing "
                    "earlier to roll back to"
                )
            # undo every promotion of the current version above the earlier one
            undo = [r.id for r in rows if r.id > earlier[0].id]
            connection.execute(
                update(ix.promotions).where(ix.promotions.c.id.in_(undo)).values(rolled_back=True)
            )
            target = int(earlier[0].version)
            ix.add_log(connection, who, "rollback", target, {"from": current, "to": target}, now())
        return self.version(current), self.version(target)

    def tag(self, ref: int | str, name: str, who: str | None = None) -> Version:
        if not name or name.strip() != name or name in ("promoted", "latest") or name.lstrip("vV").isdigit():
            raise ConfigError(
                f"tag name {name!r} is not allowed: it must be non-empty, without surrounding spaces, and "
                "not 'promoted', 'latest' or a version number"
            )
        target = self.version(ref)
        who = who or current_user()
        with self.index.write() as connection:
            connection.execute(delete(ix.tags).where(ix.tags.c.name == name))
            connection.execute(insert(ix.tags).values(name=name, version=target.number))
            ix.add_log(connection, who, "tag", target.number, {"tag": name}, now())
        return self.version(target.number)

    def gc(self, who: str | None = None) -> dict[str, Any]:
        """Remove what no committed row names: directories of writes that crashed before their commit, and
        abandoned staging folders. Versions themselves are never removed (they are the lineage)."""
        removed, freed = [], 0
        with self.index.write() as connection:
            listed = {d for (d,) in connection.execute(select(ix.versions.c.directory))}
            for sub in ("versions", "staging"):
                root = self.path / sub
                if not root.is_dir():
                    continue
                for entry in sorted(root.iterdir()):
                    if sub == "versions" and entry.name in listed:
                        continue
                    if sub == "staging" and _in_use(entry):
                        continue
                    freed += sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                    removed.append(f"{sub}/{entry.name}")
            ix.add_log(connection, who or current_user(), "gc", None, {"removed": removed}, now())
        return {"removed": removed, "bytes_freed": freed}

    def log(self) -> list[dict[str, Any]]:
        with self.index.read() as connection:
            rows = connection.execute(select(ix.log).order_by(ix.log.c.id)).all()
        return [
            {"time": r.time, "who": r.who, "action": r.action, "version": r.version, **json.loads(r.detail)}
            for r in rows
        ]

    def deletions(self) -> list[dict[str, Any]]:
        with self.index.read() as connection:
            rows = connection.execute(select(ix.deletions).order_by(ix.deletions.c.id)).all()
        return [
            {
                "time": r.time,
                "who": r.who,
                "mode": r.mode,
                "ids": json.loads(r.ids),
                "parent": r.parent,
                "version": r.version,
                "audit": json.loads(r.audit),
            }
            for r in rows
        ]

    def deleted_ids(self) -> set[str]:
        return {i for d in self.deletions() for i in d["ids"]}


def _in_use(staging_dir: Path) -> bool:
    """A staging folder a live process is writing (its pid file names a running process)."""
    pid_file = staging_dir / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(staged: Path, published: Path) -> None:
    """Move the checksummed directory from staging into versions/ (one rename) and make it durable."""
    os.replace(staged, published)
    fsync_dir(published.parent)
    fsync_dir(staged.parent)


def _before_commit(number: int) -> None:
    """The last moment before a version's row commits (crash tests stop the process here)."""


def _promote(connection: Connection, number: int, who: str, reason: str, forced: bool) -> None:
    previous = ix.promoted_number(connection)
    connection.execute(
        insert(ix.promotions).values(version=number, time=now(), who=who, reason=reason, forced=forced)
    )
    ix.set_status(connection, number, "promoted")
    if previous is not None and previous != number:
        ix.add_log(connection, who, "retire", previous, {"replaced_by": number}, now())
