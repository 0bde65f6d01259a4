import json
from pathlib import Path

import pytest

from data_schemas.atomic import atomic_open, atomic_path, remove_stale_tmp, write_json_atomic


def test_atomic_open_leaves_nothing_when_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_keeps_old_file_when_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_open(target) as f:
        f.write("new")
        raise ValueError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert list(target.parent.iterdir()) == [target]


def test_write_json_atomic_and_stale_tmp_cleanup(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2], "b": 1}
    (tmp_path / "shard.parquet.123.tmp").write_bytes(b"partial")
    removed = remove_stale_tmp(tmp_path)
    assert [p.name for p in removed] == ["shard.parquet.123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
