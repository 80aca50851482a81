"""`soul unlearn` under torchrun (2 CPU processes, gloo): DDP loss, shared curvature, rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import MICRO


def free_port() -> int:
    """A port nothing listens on now (a fixed one collides when two suites run at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks(soul, pipeline, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "soulcli.cli", "unlearn", "--recipe", str(MICRO), "--set", f"cache_dir={soul.cache}",
           "--output", str(run), "--json", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2
    # 8 forget items, 2 ranks, batch 4: one step, each rank its own 4 items
    assert summary["steps"] == 1
    single = [json.loads(x) for x in (pipeline["run"] / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # the GNB estimate covers both ranks' answer tokens (about twice one rank's batch)
    assert rows[0]["curvature_tokens"] > 1.5 * single[0]["curvature_tokens"]
    assert (run / "model" / "config.json").is_file() and (run / "eval.json").is_file()
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".ddp")]


def torchrun(soul, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "soulcli.cli", *args, "--set", f"cache_dir={soul.cache}", "--json", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)


def test_finetune_under_torchrun_with_fsdp(soul, pipeline, tmp_path):
    """`soul finetune` on 2 ranks with FSDP, each half of the one-process batch: rank 0 alone
    writes and reports, the gathered model is saved, and the logged losses (every rank's
    tokens) are the one-process run's."""
    proc = torchrun(soul, "finetune", "--recipe", str(MICRO), "--which", "target", "--output", str(tmp_path / "ft"),
                    "--set", "train.strategy=fsdp", "--set", "finetune.batch_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1
    target = Path(pipeline["finetuned"]["models"]["target"]["path"])
    single = [json.loads(x) for x in (target / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tmp_path / "ft" / "target" / "metrics.jsonl").read_text().splitlines()]
    assert [a["step"] for a in single] == [b["step"] for b in rows] == [10, 20, 30, 40, 50, 60, 70, 72]
    # measured 2026-12-02: at most 6e-7 apart
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(single, rows)) <= 1e-5
    from safetensors.torch import load_file

    one, two = (load_file(str(d / "model.safetensors")) for d in (target, tmp_path / "ft" / "target"))
    assert one.keys() == two.keys() and max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-4
