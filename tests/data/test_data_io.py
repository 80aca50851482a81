"""Atomic folders and files (an interrupted write never leaves a complete-looking result),
strict JSON, content fingerprints."""

from __future__ import annotations

import json
import shutil

import pytest

from soulcli.data import io
from soulcli.data.io import (atomic_dir, atomic_write, files_fingerprint, to_json, write_benchmark_dir,
                             write_json, write_jsonl)
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


def test_write_json_is_strict_json(tmp_path):
    """NaN and infinities become null (json.loads in strict mode, and other languages, reject
    bare NaN); paths become strings; UTF-8 text is kept; nested containers are walked."""
    path = write_json(tmp_path / "out" / "r.json", {
        "loss": float("nan"), "nested": [1.5, float("inf"), {"x": -float("inf")}], "t": (2.0, 3),
        "path": tmp_path / "a", "name": "Zoë",
    })
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text and "Zoë" in text and text.endswith("}\n")
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} written"))
    assert strict == {"loss": None, "nested": [1.5, None, {"x": None}], "t": [2.0, 3],
                      "path": str(tmp_path / "a"), "name": "Zoë"}
    assert to_json([float("nan"), 1.0]) == "[null, 1.0]"


def test_write_jsonl_rows_are_strict(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": 0.5}])
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1, "loss": null}\n{"step": 2, "loss": 0.5}\n'


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "cell.json"
    atomic_write(path, "old")
    assert atomic_write(path, b"\x00new") == path and path.read_bytes() == b"\x00new"

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "half")
    assert path.read_bytes() == b"\x00new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.json"]  # no temporary left


def test_files_fingerprint_follows_content_not_place(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "full.json").write_text('{"q": 1}\n')
    (a / "benchmark.json").write_text("{}")  # the manifest is not content
    (a / "notes.txt").write_text("x")
    key = files_fingerprint(a, (".json",))
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    (b / "benchmark.json").write_text('{"other": 1}')
    (b / "notes.txt").write_text("y")
    assert files_fingerprint(b, (".json",)) == key
    (b / "full.json").write_text('{"q": 2}\n')
    assert files_fingerprint(b, (".json",)) != key
