"""The copyright-removal task (MUSE format) on the built-in books corpus, as `make bench` records it.

Runs `soul finetune` (target and retrain), evaluates both, then `soul compare-optimizers` with
recipes/muse_sophia.yaml's settings (AdamW, Signum, SophiaG; GradDiff; the recipe's lr grid
on seed 0, the selected lr on seeds 0-2), and writes bench/out/muse.json and bench/out/muse.md:
forget VerbMem, forget KnowMem, retain KnowMem, PrivLeak and leak BLEU for the target, the
retrain model and each optimizer's selected setting (mean, min, max over seeds), with the time
per step (and its ratio to AdamW's) and the time of one full evaluation.
Run: .venv/bin/python bench/bench_muse.py [--recipe R] [--seeds 0,1,2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("forget_verbmem_rougeL", "forget_knowmem_rougeL", "retain_knowmem_rougeL", "privleak",
           "forget_leak_bleu")


def soul(*args: str) -> dict:
    exe = Path(sys.executable).with_name("soul")
    proc = subprocess.run([str(exe), *args, "--json"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout)


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/muse_sophia.yaml")
    ap.add_argument("--optimizers", default="adamw,signum,sophiag")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--output", default=str(ROOT / "bench" / "out" / "muse_compare"))
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    sets = [x for s in args.set for x in ("--set", s)]
    base = ["--recipe", args.recipe, *sets]

    t0 = time.perf_counter()
    finetuned = soul("finetune", *base)
    finetune_s = time.perf_counter() - t0
    retrain = finetuned["models"]["retain"]["path"]
    t0 = time.perf_counter()
    retrain_eval = soul("evaluate", "--model", retrain, "--output", str(Path(args.output).with_suffix(".retrain.json")),
                        *base)
    eval_s = time.perf_counter() - t0
    if Path(args.output).exists():
        shutil.rmtree(args.output)  # a timed run computes every cell
    t0 = time.perf_counter()
    res = soul("compare-optimizers", *base, "--optimizers", args.optimizers, "--seeds", args.seeds,
               "--seed-policy", "selected", "--output", args.output)
    compare_s = time.perf_counter() - t0
    cells = json.loads((Path(args.output) / "results.json").read_text())["cells"]
    per_step: dict[str, list[float]] = {}
    for c in cells:
        per_step.setdefault(c["optimizer"], []).append(c["time_per_step"])
    adamw = statistics.mean(per_step["adamw"]) if "adamw" in per_step else None

    rows = [("target", "-", "-", {k: {"mean": finetuned["target_metrics"][k]} for k in METRICS}, None),
            ("retrain", "-", "-", {k: {"mean": retrain_eval.get(k)} for k in METRICS}, None)]
    for s in sorted(res["selected"], key=lambda s: s["optimizer"]):
        rows.append((s["optimizer"], f"{s['lr']:g}", str(s["step"]), {k: s[k] for k in METRICS},
                     statistics.mean(per_step[s["optimizer"]])))
    lines = [f"Rule: {res['rule']}.", "",
             "| model | lr | step | " + " | ".join(METRICS) + " | s/step (x AdamW) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- |"]
    for name, lr, step, vals, sps in rows:
        cells_txt = []
        for k in METRICS:
            v = vals.get(k) or {}
            spread = f" [{fmt(v['min'])}, {fmt(v['max'])}]" if v.get("min") is not None and len(args.seeds) > 1 else ""
            cells_txt.append(fmt(v.get("mean")) + spread)
        cost = "-" if sps is None else f"{sps:.3f} ({sps / adamw:.2f}x)" if adamw else f"{sps:.3f}"
        lines.append(f"| {name} | {lr} | {step} | " + " | ".join(cells_txt) + f" | {cost} |")
    out = {"recipe": args.recipe, "seeds": args.seeds, "overrides": args.set, "cpu_count": os.cpu_count(),
           "threads": next((s.split("=", 1)[1] for s in args.set if s.startswith("threads=")), "torch default"),
           "finetune_seconds": round(finetune_s, 1),
           "evaluation_seconds": round(eval_s, 1), "compare_seconds": round(compare_s, 1),
           "target": finetuned["target_metrics"], "retrain": {k: retrain_eval.get(k) for k in METRICS},
           "selected": res["selected"], "rule": res["rule"],
           "time_per_step": {k: statistics.mean(v) for k, v in per_step.items()},
           "time_per_step_vs_adamw": {k: statistics.mean(v) / adamw for k, v in per_step.items()} if adamw else {}}
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "muse.json").write_text(json.dumps(out, indent=2))
    (ROOT / "bench" / "out" / "muse.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"finetune {finetune_s:.0f} s, one evaluation (retrain model, cold) {eval_s:.1f} s, "
          f"comparison {compare_s:.0f} s")


if __name__ == "__main__":
    main()
