"""`--resume`: a micro run really killed (SIGKILL) or interrupted (SIGINT) part-way and resumed
from its checkpoint ends with the same weights and metrics rows, bit for bit, as a run that was
never stopped; for AdamW, for SophiaG with GNB curvature (its default), for zo (its directions
drawn from the run seed and the step count), and for finetune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soulcli.engine import checkpoint

from conftest import MICRO

# 6 epochs of the 8 forget items in batches of 4: 12 steps; GNB every 2 steps
UNLEARN = ("--set", "unlearn.epochs=6", "--set", "eval.metrics=[exact_memorization]")
OPTIMIZERS = {"adamw": ("--set", "optimizer.name=adamw", "--set", "optimizer.args={}"), "sophiag": (),
              "zo": ("--set", "optimizer.name=zo", "--set", "optimizer.args={}")}


def _start(soul, command: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "soulcli.cli", command, "--recipe", str(MICRO), *args,
            "--set", f"cache_dir={soul.cache}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, ready, what: str):
    deadline = time.monotonic() + 120
    while (found := ready()) is None:
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after 120 s"
        time.sleep(0.002)
    return found


def _step(path: Path | None) -> int | None:
    return int(path.name.removeprefix("step-")) if path is not None else None


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "step_seconds")} for row in rows]


def _assert_same_run(folder: Path, reference: Path, weights: str = "model/model.safetensors") -> None:
    got, want = load_file(folder / weights), load_file(reference / weights)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert _rows(folder) == _rows(reference)


@pytest.fixture(scope="module")
def reference(soul, pipeline, tmp_path_factory):
    """The uninterrupted (checkpoint-free) run of each optimizer, made once."""
    made: dict[str, Path] = {}

    def get(optimizer: str) -> Path:
        if optimizer not in made:
            out = tmp_path_factory.mktemp("reference") / optimizer
            res = soul("unlearn", "-o", str(out), *UNLEARN, *OPTIMIZERS[optimizer])
            assert res.exit_code == 0, res.output
            made[optimizer] = out
        return made[optimizer]

    return get


@pytest.mark.parametrize("optimizer", ["adamw", "sophiag", "zo"])
def test_a_killed_unlearn_resumes_bit_identically(soul, reference, tmp_path, optimizer):
    run, args = tmp_path / "run", (*UNLEARN, *OPTIMIZERS[optimizer], "--set", "unlearn.save_every=1")
    ckpts = checkpoint.checkpoint_dir(run)
    proc = _start(soul, "unlearn", "-o", str(run), *args)
    _wait_for(proc, lambda: checkpoint.latest(ckpts) if (_step(checkpoint.latest(ckpts)) or 0) >= 3 else None,
              "a checkpoint of step 3")
    proc.kill()
    proc.wait(timeout=30)
    killed_at = _step(checkpoint.latest(ckpts))
    assert proc.returncode == -signal.SIGKILL and 3 <= killed_at < 12 and not run.exists()

    res = soul("unlearn", "-o", str(run), *args, "--resume")
    assert res.exit_code == 0, res.output
    assert f"Resuming from {ckpts / f'step-{killed_at:08d}'} (step {killed_at} of 12)" in res.output
    _assert_same_run(run, reference(optimizer))
    assert [row["step"] for row in _rows(run)] == list(range(1, 13))
    assert not ckpts.exists()  # removed once the run is in place


def test_sigint_saves_a_checkpoint_exits_130_and_resume_finishes(soul, reference, tmp_path):
    run, args = tmp_path / "run", (*UNLEARN, "--set", "unlearn.save_every=5")
    proc = _start(soul, "unlearn", "-o", str(run), *args)

    def two_rows():
        logs = list(tmp_path.glob(".run.tmp-*/metrics.jsonl"))
        return logs if logs and len(logs[0].read_text().splitlines()) >= 2 else None

    _wait_for(proc, two_rows, "two metrics rows")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    step = _step(checkpoint.latest(checkpoint.checkpoint_dir(run)))
    saved = checkpoint.checkpoint_dir(run) / f"step-{step:08d}"
    assert line.startswith(f"interrupted at step {step}; checkpoint saved to {saved}; resume with `soul unlearn ")
    assert line.endswith(" --resume`") and 2 <= step < 12 and not run.exists()

    res = soul("unlearn", "-o", str(run), *args, "--resume")
    assert res.exit_code == 0, res.output
    _assert_same_run(run, reference("sophiag"))


def test_resume_refuses_a_missing_checkpoint_and_another_recipes(soul, pipeline, tmp_path):
    run = tmp_path / "run"
    res = soul("unlearn", "-o", str(run), *UNLEARN, "--resume")
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"error: --resume: no checkpoint in {checkpoint.checkpoint_dir(run)}; run without --resume "
        "(set save_every to write checkpoints)")
    ckpts = checkpoint.checkpoint_dir(run)
    # lr 1e30: the loss is nan at step 2 (test_cli_outputs); step 1's checkpoint is kept
    res = soul("unlearn", "-o", str(run), *UNLEARN, "--set", "optimizer.lr=1e30", "--set", "unlearn.save_every=1")
    assert res.exit_code == 4, res.output
    kept = ckpts / "step-00000001"
    assert checkpoint.latest(ckpts) == kept and not run.exists()
    assert res.stderr.startswith(f"diverged: the loss became nan at step 2 (lr 1e+30); the checkpoint of step 1 "
                                 f"is kept in {kept}: lower the learning rate")
    res = soul("unlearn", "-o", str(run), *UNLEARN, "--set", "seed=1", "--resume")
    assert res.exit_code == 2 and "was written by another recipe or seed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_killed_finetune_resumes_bit_identically(soul, pipeline, tmp_path):
    args = ("--which", "target", "--set", "finetune.epochs=2", "--set", "eval.metrics=[exact_memorization]")
    whole = tmp_path / "whole"
    res = soul("finetune", "-o", str(whole), *args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    ckpts = checkpoint.checkpoint_dir(run / "target")
    proc = _start(soul, "finetune", "-o", str(run), *args, "--set", "finetune.save_every=1")
    _wait_for(proc, lambda: checkpoint.latest(ckpts) if (_step(checkpoint.latest(ckpts)) or 0) >= 5 else None,
              "a checkpoint of step 5")
    proc.kill()
    proc.wait(timeout=30)
    total = json.loads((whole / "target" / "training.json").read_text())["steps"]
    assert 5 <= _step(checkpoint.latest(ckpts)) < total

    res = soul("finetune", "-o", str(run), *args, "--set", "finetune.save_every=1", "--resume")
    assert res.exit_code == 0, res.output
    _assert_same_run(run / "target", whole / "target", weights="model.safetensors")
    assert not ckpts.exists()
