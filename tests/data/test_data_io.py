"""Atomic benchmark folders: an interrupted write never leaves a complete-looking folder."""

from __future__ import annotations

import pytest

from soulcli.data import io
from soulcli.data.io import atomic_dir, write_benchmark_dir
from soulcli.errors import UserError


def test_atomic_dir_success_and_failure(tmp_path):
    target = tmp_path / "bench"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "full.json").write_text("{}\n")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary sibling is gone too
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        (tmp / "full.json").write_text("{}\n")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "full.json").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]


def test_atomic_dir_replacing(tmp_path):
    target = tmp_path / "bench"
    target.mkdir()
    with atomic_dir(target) as tmp:  # an empty folder may be replaced
        (tmp / "a").write_text("1")
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["a"]  # the old folder is intact
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        with atomic_dir(tmp_path / "file", overwrite=True):
            pass


def test_interrupted_benchmark_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = io.write_jsonl

    def flaky(path, records):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, records)

    monkeypatch.setattr(io, "write_jsonl", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_benchmark_dir({"full": [{"question": "q", "answer": "a"}],
                             "forget10": [{"question": "q", "answer": "a"}]}, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "benchmark", "has space"])
def test_bad_split_names(tmp_path, name):
    with pytest.raises(UserError, match="invalid split name"):
        write_benchmark_dir({name: []}, tmp_path / "b")
