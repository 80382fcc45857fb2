"""The model store with its index on a real PostgreSQL server (started by the `postgres` fixture): the same
lifecycle as on SQLite, and the errors a team meets (a server that is down, a database of another store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_store import LENIENT, cli, files_config, write_tables

from lifelong.errors import StateError
from lifelong.store import Store
from lifelong.store.forget import forget
from lifelong.store.update import update


def test_lifecycle_on_postgres(tmp_path: Path, postgres) -> None:
    url = postgres.new_database()
    made = json.loads(cli("store", "init", tmp_path / "store", "--db", url, "--json").stdout)
    assert made["db"] == url
    store = Store(tmp_path / "store")
    assert not (tmp_path / "store" / "index.db").exists()  # the index is on the server

    data = write_tables(tmp_path / "data", [("a", 40, 0)])
    more = write_tables(tmp_path / "more", [("b", 40, 1)], seed=1)
    update(store, files_config(data), progress=False)
    second = update(store, files_config(more), policy=LENIENT, progress=False)
    assert (second.version.number, second.version.parent, second.version.promoted) == (2, 1, True)
    listed = json.loads(cli("store", "list", tmp_path / "store", "--json").stdout)
    assert [v["version"] for v in listed] == [1, 2]

    store.tag(1, "first")
    assert store.version("first").number == 1
    old, new = store.rollback()
    assert (old.number, new.number) == (2, 1) and store.promoted().number == 1
    store.promote(2)
    data_json = json.loads((store.directory(store.version(2)) / "data.json").read_text())
    ids = data_json["experiences"][1]["train_ids"]
    gone = forget(store, ids[:2], "approximate", steps=10, progress=False)
    assert gone.version.number == 3 and store.promoted().number == 3
    assert store.deletions()[0]["ids"] == sorted(ids[:2])

    # a second Store object (another process of the team) sees the same index
    again = Store(tmp_path / "store")
    assert [v.number for v in again.versions()] == [1, 2, 3]
    assert store.gc()["removed"] == []


def test_database_errors(tmp_path: Path, postgres) -> None:
    url = postgres.new_database()
    Store.init(tmp_path / "one", db=url)
    with pytest.raises(StateError, match="index of another store"):
        Store.init(tmp_path / "two", db=url)
    assert not (tmp_path / "two").exists()
    down = url.replace(f":{postgres.port}/", ":1/")
    with pytest.raises(StateError, match="cannot reach the database .*start the server"):
        Store.init(tmp_path / "three", db=down)
    assert not (tmp_path / "three").exists()
    # a store whose server is down says so when it is opened
    description = json.loads((tmp_path / "one" / "store.json").read_text())
    (tmp_path / "one" / "store.json").write_text(json.dumps({**description, "db": down}))
    err = cli("store", "list", tmp_path / "one", expect=2).stderr
    assert "cannot reach the database" in err and "start the server" in err
