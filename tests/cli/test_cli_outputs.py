"""Outputs are never lost: a user's folder is never replaced, two runs into one folder cannot
race, and a diverged run (NaN/inf) is never saved as a result."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from soulcli.data.io import OUTPUT_MARK


def _error_line(res, code: int, prefix: str = "error: ") -> str:
    assert res.exit_code == code, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), res.stderr
    return lines[0]


def _tree(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_users_folder_survives_unlearn(soul, pipeline, tmp_path):
    user = tmp_path / "work"
    (user / "src").mkdir(parents=True)
    (user / "thesis.tex").write_text("\\documentclass{article}\n")
    (user / "src" / "main.py").write_text("print('hi')\n")
    before = _tree(user)
    line = _error_line(soul("unlearn", "-o", str(user)), 2)
    assert f"output folder {user} already exists and is not empty" in line and "--overwrite" in line
    line = _error_line(soul("unlearn", "-o", str(user), "--overwrite"), 2)
    assert "was not written by soulcli" in line
    assert _tree(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no lock, no temporary left


def test_overwrite_replaces_an_earlier_run(soul, pipeline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    (run / "old.txt").write_text("from the earlier run")
    assert "already exists" in _error_line(soul("unlearn", "-o", str(run)), 2)
    assert (run / "old.txt").is_file()
    out = soul.json("unlearn", "-o", str(run), "--overwrite")
    assert out["run_dir"] == str(run) and out["skipped_steps"] == 0
    assert not (run / "old.txt").exists() and (run / "summary.json").is_file() and (run / OUTPUT_MARK).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


_HOLD = """
import sys
from soulcli.data.io import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_into_the_same_folder_is_refused(soul, pipeline, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "locked"
        line = _error_line(soul("unlearn", "-o", str(run)), 2)
        assert f"another soulcli process (pid {first.pid}) is writing {run}" in line
    finally:
        first.stdin.close()
        first.wait(timeout=30)
    assert not run.exists()


def test_a_diverged_run_exits_4_and_saves_nothing(soul, pipeline, tmp_path):
    # lr 1e6 stays finite in micro's 2 clipped steps (updates are bounded by lr); 1e30 overflows
    line = _error_line(soul("unlearn", "--set", "optimizer.lr=1e30", "-o", str(tmp_path / "run")), 4,
                       prefix="diverged: ")
    assert line.startswith("diverged: the loss became nan at step 2 (lr 1e+30)") and "lower the learning rate" in line
    assert list(tmp_path.iterdir()) == []


def test_skipped_steps_are_counted_and_a_nan_gate_fails(soul, pipeline, tmp_path):
    run = tmp_path / "run"
    out = soul.json("unlearn", "--set", "optimizer.lr=1e30", "--set", "unlearn.on_nonfinite=skip",
                    "--set", "unlearn.epochs=2", "-o", str(run))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == out["steps"] == 4 and summary["skipped_steps"] == 3
    assert "3 of 4 steps were skipped" in summary["warnings"][0]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped", 0) for r in rows] == [0, 1, 1, 1] and rows[1]["loss"] is None
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values())
    # the model's probabilities are NaN (weights near 1e30): a gate on them must fail, not pass
    res = soul("evaluate", str(run), "--metrics", "forget_prob", "--fail-under", "forget_prob=0",
               "--json", recipe=None)
    assert res.exit_code == 3, res.output
    assert "forget_prob is nan, not a finite number" in res.stderr
    printed = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} printed"))
    assert printed["forget_prob"] is None and printed["null_reasons"]["forget_prob"] == "not a finite number"


def test_evaluate_some_metrics_keeps_the_others(soul, pipeline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    before = json.loads((run / "eval.json").read_text())["metrics"]
    soul.json("evaluate", str(run), "--metrics", "forget_prob", recipe=None)
    after = json.loads((run / "eval.json").read_text())["metrics"]
    assert list(after) == list(before) and len(after) > 10
    assert after["model_utility"] == before["model_utility"]
    assert math.isclose(after["forget_prob"]["value"], before["forget_prob"]["value"], rel_tol=1e-6)
