"""Atomic folders and files (an interrupted write never leaves a complete-looking result),
strict JSON, content fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from soulcli.data import io
from soulcli.data.io import (atomic_dir, atomic_write, check_writable_dir, files_fingerprint, to_json, write_benchmark_dir,
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
    assert sorted(p.name for p in target.iterdir()) == [".soulcli.json", "a"]  # the mark: soulcli wrote it
    assert json.loads((target / ".soulcli.json").read_text())["pid"] == os.getpid()
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == [".soulcli.json", "a"]  # the old folder is intact
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [".soulcli.json", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no lock or temporary left
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        with atomic_dir(tmp_path / "file", overwrite=True):
            pass


def test_a_users_folder_is_never_replaced(tmp_path):
    """Not without --overwrite, and not with it: only a folder carrying soulcli's mark is."""
    user = tmp_path / "thesis"
    (user / "src").mkdir(parents=True)
    (user / "thesis.tex").write_bytes(b"\\documentclass{article}\n")
    (user / "src" / "main.py").write_bytes(b"print(1)\n")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already exists and is not empty.*--overwrite"):
        with atomic_dir(user):
            pytest.fail("the block must not run")
    with pytest.raises(UserError, match="not written by soulcli"):
        with atomic_dir(user, overwrite=True):
            pytest.fail("the block must not run")
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_write_problems_are_refused_before_the_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file"):
        check_writable_dir(tmp_path / "afile" / "run")
    with pytest.raises(UserError, match="too long for the file system"):
        check_writable_dir(tmp_path / ("r" * 250))
    assert check_writable_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # checking creates nothing


_HOLD = """
import sys, time
from soulcli.data.io import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    target = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(target)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"another soulcli process \\(pid {holder.pid}\\) is writing"):
            with atomic_dir(target):
                pytest.fail("the block must not run")
        assert not target.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with atomic_dir(target) as tmp:  # released: the next run proceeds
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_second_builder_waits_for_the_first_and_reuses_its_entry(tmp_path):
    """build_once: the second builder of one cache entry waits (threads hold separate lock
    descriptions, as processes do), then finds the entry done; only one build runs."""
    import threading
    import time

    out = tmp_path / "entry"
    builds, logs = [], []
    building = threading.Event()

    def build() -> None:
        building.set()
        time.sleep(0.3)
        out.mkdir()
        builds.append(threading.current_thread().name)

    first = threading.Thread(target=io.build_once, args=(out, out.is_dir, build, "thing", logs.append),
                             name="first")
    first.start()
    assert building.wait(10)
    assert io.build_once(out, out.is_dir, build, "thing", logs.append) is False
    first.join()
    assert builds == ["first"]
    assert logs == [f"waiting for soulcli process {os.getpid()}, which is building {out}",
                    f"reused cached thing {out} built by another process"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # the lock file is removed
    assert io.build_once(out, out.is_dir, build, "thing", logs.append) is False and len(logs) == 2


def test_content_hash_streams_files_to_the_same_digest(tmp_path):
    import hashlib

    (tmp_path / "w.bin").write_bytes(bytes(range(256)) * 9000)  # over two 1 MiB chunks
    (tmp_path / "a.json").write_text("{}")
    expected = hashlib.sha256(b"a.json\0{}\0w.bin\0" + bytes(range(256)) * 9000 + b"\0").hexdigest()
    assert io.content_hash(tmp_path, ["w.bin", "a.json"]) == "sha256:" + expected


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.tmp-{dead.pid}-0123abcd"
    live = tmp_path / f".run.tmp-{os.getpid()}-4567cdef"
    other = tmp_path / f".other.tmp-{dead.pid}-0123abcd"  # another target's: not ours to judge
    for folder in (stale, live, other):
        (folder / "model").mkdir(parents=True)
    logged = []
    with atomic_dir(tmp_path / "run", log=logged.append) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "run"])
    assert logged == [f"removed {stale}, left by a run that was killed"]


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
