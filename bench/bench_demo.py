"""The `make demo` pipeline from an empty cache, timed, plus the training loop's throughput.

Writes bench/out/demo.json: wall seconds of each stage (finetune both models, unlearn with its
evaluation), the tokens per second of the training loop on the default model, and the demo's
quality figures (target vs unlearned forget/retain ROUGE-L). Run: .venv/bin/python bench/bench_demo.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def soul(*args: str) -> dict:
    exe = Path(sys.executable).with_name("soul")
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), *args, "--json"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"soul {' '.join(args)} failed with {proc.returncode}")
    return {"seconds": time.perf_counter() - t0, "result": json.loads(proc.stdout)}


def main() -> None:
    recipe = os.environ.get("RECIPE", "recipes/tofu_sophia.yaml")
    cache = Path(tempfile.mkdtemp(prefix="soul-bench-cache-"))
    run = Path(tempfile.mkdtemp(prefix="soul-bench-run-")) / "run"
    try:
        common = ["--recipe", recipe, "--set", f"cache_dir={cache}"]
        ft = soul("finetune", *common)
        un = soul("unlearn", *common, "--output", str(run))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(run.parent, ignore_errors=True)
    models = ft["result"]["models"]
    target = ft["result"]["target_metrics"]
    after = un["result"]["metrics"]
    figures = {
        "recipe": recipe,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "finetune_seconds": round(ft["seconds"], 1),
        "unlearn_seconds": round(un["seconds"], 1),
        "demo_seconds": round(ft["seconds"] + un["seconds"], 1),
        "train_tokens_per_second": {k: v["tokens_per_second"] for k, v in models.items()},
        "parameters": models["target"]["parameters"],
        "target": {k: target.get(k) for k in ("forget_rougeL_recall", "retain_rougeL_recall", "forget_quality",
                                              "model_utility")},
        "unlearned": {k: after.get(k) for k in ("forget_rougeL_recall", "retain_rougeL_recall", "forget_quality",
                                                "model_utility")},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
