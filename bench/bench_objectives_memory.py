"""Peak memory of unlearning with each objective, relative to GradDiff, on the default model.

NPO/DPO keep the starting model's per-sequence log-likelihoods (computed once before training)
instead of a second model in memory. Each objective runs in its own process (fresh allocator,
clean baseline); the figure is the peak RSS growth during `unlearn_model` (sampled) and the
process's max RSS. Writes bench/out/objectives_memory.json.
Run: .venv/bin/python bench/bench_objectives_memory.py [--objectives graddiff,npo,dpo]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys
from rich.console import Console
from soulcli.engine.memory import PeakMemory
from soulcli.engine.progress import Reporter
from soulcli.recipe import load_recipe
from soulcli.workflows.unlearn import prepare_model, unlearn_model
import transformers; transformers.utils.logging.disable_progress_bar()
recipe = load_recipe(sys.argv[1], sys.argv[2:])
rep = Reporter(Console(stderr=True), quiet=True)
run = prepare_model(recipe, rep, "cpu")
run.cache_key = "bench-nocache"
with PeakMemory("cpu") as pm:
    rec = unlearn_model(run, rep)
print(json.dumps({"peak_growth_mb": pm.peak_mb, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": rec["seconds"], "steps": rec["steps"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/tofu_sophia.yaml")
    ap.add_argument("--objectives", default="graddiff,npo,dpo,kl,simnpo")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    out = {}
    for obj in args.objectives.split(","):
        sets = [f"unlearn.objective={obj}", "unlearn.epochs=1", *args.set]
        proc = subprocess.run([sys.executable, "-c", CHILD, args.recipe, *sets], cwd=ROOT, capture_output=True,
                              text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{obj} failed")
        out[obj] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(obj, out[obj], flush=True)
    base = out["graddiff"]
    for obj, r in out.items():
        r["max_rss_ratio_vs_graddiff"] = r["max_rss_mb"] / base["max_rss_mb"]
        r["peak_growth_ratio_vs_graddiff"] = r["peak_growth_mb"] / max(base["peak_growth_mb"], 1e-9)
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "objectives_memory.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: {"max_rss_ratio": round(v["max_rss_ratio_vs_graddiff"], 3),
                          "peak_growth_ratio": round(v["peak_growth_ratio_vs_graddiff"], 3)} for k, v in out.items()},
                     indent=2))


if __name__ == "__main__":
    main()
