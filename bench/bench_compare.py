"""The SOUL comparison on the built-in benchmark (forget10), timed, as `make bench` records it.

Runs `soul compare-optimizers` with the shipped recipe's settings over first- and second-order
optimizers, the three shipped objectives and >= 3 seeds, then writes bench/out/compare.json
(the selected rows with their spread over seeds, the time of the whole comparison, per-step
cost ratios versus AdamW) and bench/out/compare.md (the table for bench/README.md).
With ``--attacks relearn,quantize`` each selected setting is also attacked (compare's
``--attacks``: the model re-created at its step on every seed, relearned on 10% of the forget set
and evaluated after each of ``attack.relearn.steps``, quantized to each of ``attack.quantize.bits``)
and a second table gives forget quality and forget ROUGE-L before and after each attack (mean
[min, max] over seeds; issue 13's figures: ``--optimizers adamw,signum,sophiag,zo --objectives
graddiff,npo --attacks relearn,quantize``, zo with its own lr grid and step budget through
``compare.per_optimizer.zo``: ``make bench`` runs it as ``--tag robustness``).
Run: .venv/bin/python bench/bench_compare.py [--optimizers ...] [--objectives ...] [--lr-grid ...]
     [--attacks relearn,quantize] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fmt(v, digits=3):
    if v is None:
        return "-"
    return f"{v:.1e}" if 0 < abs(v) < 1e-2 else f"{v:.{digits}f}"


def attack_table(selected: list[dict], target: dict) -> list[str]:
    """Forget quality and forget ROUGE-L of each selected setting before and after each attack
    point (`soul attack`'s gate names: ``relearn10.forget_quality``, ``quantize4.forget_rougeL_recall``)."""
    points = sorted({k.split(".")[0] for s in selected for k in s.get("attacks", {}) if ".recovered." not in k},
                    key=lambda p: (not p.startswith("relearn"), int("".join(c for c in p if c.isdigit()) or 0)))
    head = ["before", *points]
    lines = [f"Attacks (target: FQ {fmt(target['forget_quality'])}, forget R-L {fmt(target['forget_rougeL_recall'])}); "
             "each cell FQ / forget R-L, mean over seeds [forget R-L min, max]:", "",
             "| objective | optimizer | " + " | ".join(head) + " |", "| --- | --- | " + " | ".join("---" for _ in head) + " |"]
    for s in sorted(selected, key=lambda s: (s["objective"], s["optimizer"])):
        a = s.get("attacks", {})
        cells = [f"{fmt(s['forget_quality']['mean'])} / {fmt(s['forget_rougeL_recall']['mean'])}"]
        for p in points:
            fq, rl = a.get(f"{p}.forget_quality") or {}, a.get(f"{p}.forget_rougeL_recall") or {}
            cells.append(f"{fmt(fq.get('mean'))} / {fmt(rl.get('mean'))} [{fmt(rl.get('min'))}, {fmt(rl.get('max'))}]")
        lines.append(f"| {s['objective']} | {s['optimizer']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/tofu_sophia.yaml")
    ap.add_argument("--optimizers", default="adamw,signum,sophiag,sophiah,adahessian")
    ap.add_argument("--objectives", default="graddiff,npo,po")
    ap.add_argument("--lr-grid", default="3e-5,1e-4,3e-4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--seed-policy", default="selected")
    ap.add_argument("--eval-every", default="26")
    ap.add_argument("--output", default=None, help="the comparison's folder (default: bench/out/TAG_run)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--attacks", default="", help="comma-separated attacks of each selected setting")
    ap.add_argument("--tag", default="compare",
                    help="name of the figures: bench/out/TAG.json and TAG.md (default: compare)")
    ap.add_argument("--resume", action="store_true",
                    help="keep finished cells of an earlier run (the time then is not a full run's)")
    args = ap.parse_args()
    args.output = args.output or str(ROOT / "bench" / "out" / f"{args.tag}_run")
    if not args.resume and Path(args.output).exists():
        import shutil

        shutil.rmtree(args.output)  # a timed run computes every cell
    exe = Path(sys.executable).with_name("soul")
    cmd = [str(exe), "compare-optimizers", "--recipe", args.recipe, "--optimizers", args.optimizers,
           "--objectives", args.objectives, "--lr-grid", args.lr_grid, "--seeds", args.seeds,
           "--seed-policy", args.seed_policy,
           "--set", f"unlearn.eval_every={args.eval_every}", "--output", args.output, "--json"]
    if args.attacks:
        cmd += ["--attacks", args.attacks]
    for s in args.set:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    res = json.loads(proc.stdout)
    full = json.loads((Path(args.output) / "results.json").read_text())
    cells = full["cells"]
    by_opt: dict[str, list[float]] = {}
    for c in cells:
        by_opt.setdefault(c["optimizer"], []).append(c["time_per_step"])
    adamw = statistics.mean(by_opt["adamw"]) if "adamw" in by_opt else None
    cost = {k: round(statistics.mean(v) / adamw, 3) for k, v in by_opt.items()} if adamw else {}
    target = res["target"]
    lines = [
        f"Target model: forget quality {fmt(target['forget_quality'])}, model utility "
        f"{fmt(target['model_utility'])}, forget ROUGE-L {fmt(target['forget_rougeL_recall'])}, retain "
        f"ROUGE-L {fmt(target['retain_rougeL_recall'])}.",
        "",
        f"Rule: {res['rule']}.",
        "",
        "| objective | type | optimizer | lr | step | FQ mean ± std [min, max] | MU mean ± std | forget R-L | retain R-L | win rate | s/step (x AdamW) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    so = {"sophiag", "sophiah", "adahessian", "influence"}
    for s in sorted(res["selected"], key=lambda s: (s["objective"], s["optimizer"] in so, s["optimizer"])):
        fq, mu = s["forget_quality"], s["model_utility"]
        lines.append(
            f"| {s['objective']} | {'SO' if s['optimizer'] in so else 'FO'} | {s['optimizer']} | "
            f"{'-' if s['lr'] is None else format(s['lr'], 'g')} | {s['step']} | "
            f"{fmt(fq['mean'])} ± {fmt(fq['std'])} [{fmt(fq['min'])}, {fmt(fq['max'])}]"
            f"{'' if s['meets_utility_rule'] else ' (utility rule not met)'} | "
            f"{fmt(mu['mean'])} ± {fmt(mu['std'])} | {fmt(s['forget_rougeL_recall']['mean'])} | "
            f"{fmt(s['retain_rougeL_recall']['mean'])} | {fmt(s['mean_win_rate'])} | "
            f"{fmt(s['time_per_step'])} ({cost.get(s['optimizer'], float('nan')):.2f}x) |")
    if args.attacks:
        lines += ["", *attack_table(res["selected"], target)]
    lines += ["", f"Whole comparison: {len(cells)} cells in {seconds:.0f} s."]
    out = {"seconds": seconds, "cells": len(cells), "step_cost_vs_adamw": cost, "target": target,
           "selected": res["selected"], "command": " ".join(cmd[1:])}
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / f"{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    (ROOT / "bench" / "out" / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
