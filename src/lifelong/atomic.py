"""Files written atomically (a temporary file in the same folder, fsynced, then renamed: a reader sees the old
file or the new one, never half of one) and JSON read back with a clear error. No torch here: the report and
other light commands write files too, and must start fast."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lifelong.errors import StateError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` to `path` atomically; return its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results and reports are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def atomic_write_json(path: str | Path, obj: Any) -> str:
    return atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode()
    )


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(
            f"{what} {path} is damaged (not valid JSON: {e}); restore it from a backup"
        ) from None
