"""The `make demo` pipeline from an empty cache, timed, plus the training loop's throughput.

Runs the demo's two commands (`soul finetune`, then `soul compare-optimizers` with the
Makefile's DEMO_ARGS: AdamW and SophiaG with the recipe's GradDiff, a 10-step relearning attack
on each selected model) and writes bench/out/demo.json: wall seconds of each stage, the tokens
per second of the training loop on the default model, and the demo's table (target, AdamW,
SophiaG: forget quality, model utility, forget ROUGE-L, forget ROUGE-L after relearning).
Run: .venv/bin/python bench/bench_demo.py
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SHOWN = ("forget_quality", "model_utility", "forget_rougeL_recall")


def demo_args() -> list[str]:
    """The Makefile's DEMO_ARGS (continuation lines joined), so the demo is written once."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return shlex.split(re.search(r"^DEMO_ARGS\s*=(.*)$", text, re.M).group(1))


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
    run = Path(tempfile.mkdtemp(prefix="soul-bench-run-")) / "demo"
    try:
        common = ["--recipe", recipe, "--set", f"cache_dir={cache}", *sys.argv[1:]]  # e.g. --set threads=1
        ft = soul("finetune", *common)
        cmp = soul("compare-optimizers", *common, *demo_args(), "--output", str(run))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(run.parent, ignore_errors=True)
    models = ft["result"]["models"]
    target = cmp["result"]["target"]
    table = {"target": {k: target.get(k) for k in SHOWN}}
    for s in cmp["result"]["selected"]:
        table[s["optimizer"]] = {"step": s["step"], **{k: s[k]["mean"] for k in SHOWN},
                                 "relearn10.forget_rougeL_recall": s["attacks"]["relearn10.forget_rougeL_recall"]["mean"]}
    figures = {
        "recipe": recipe,
        "overrides": sys.argv[1:],
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "finetune_seconds": round(ft["seconds"], 1),
        "compare_seconds": round(cmp["seconds"], 1),
        "demo_seconds": round(ft["seconds"] + cmp["seconds"], 1),
        "train_tokens_per_second": {k: v["tokens_per_second"] for k, v in models.items()},
        "parameters": models["target"]["parameters"],
        "table": table,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
