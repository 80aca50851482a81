"""Benchmark: `soul evaluate` against open-unlearning's TOFU evaluation, side by side on one machine.

The same model folder (by default the built-in target), the real TOFU forget10 files, 200-token
greedy generation, one thread each, both from a precomputed retain-model result (soulcli's
``--reference eval.json``, open-unlearning's ``retain_logs_path``), run in alternating order for
``--rounds`` rounds; each run a fresh process from scratch (open-unlearning's dataset cache and
outputs removed). Records wall seconds, forward passes and token positions pushed (scoring and
generation; open-unlearning's counted by ``open_unlearning/sitecustomize.py``), the ratio per
round, and both tools' headline values. Writes ``bench/out/vs_open_unlearning.json``.

Set-up, once (open-unlearning's pinned stack in its own venv; no hub access needed):

    bench/open_unlearning/setup.sh OU_CLONE OU_HOME TARGET_DIR RETAIN_DIR
    python bench/bench_vs_open_unlearning.py --ou-home OU_HOME --model TARGET_DIR \
        --reference RETAIN_DIR --data ../shared/data/tofu

The metrics open-unlearning's ``tofu.yaml`` computes are a subset of soulcli's (soulcli also runs
the membership attacks where a holdout split exists, exact memorisation and the truth ratios of
every split); privleak is left out of open-unlearning's run because the TOFU folder has no
``holdout10``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench" / "open_unlearning"
OUT = ROOT / "bench" / "out" / "vs_open_unlearning.json"
# the same quantities under each tool's name
SAME = {"forget_truth_ratio": "forget_truth_ratio", "forget_Q_A_Prob": "forget_prob",
        "forget_Q_A_ROUGE": "forget_rougeL_recall", "forget_quality": "forget_quality",
        "model_utility": "model_utility", "extraction_strength": "extraction_strength"}


def run(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return seconds, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ou-home", type=Path, required=True, help="the folder bench/open_unlearning/setup.sh set up")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True, help="the retain model folder")
    ap.add_argument("--data", type=Path, required=True, help="a folder of the real TOFU files")
    ap.add_argument("--recipe", default="recipes/tofu_sophia.yaml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "vs_open_unlearning")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    soul = str(Path(sys.executable).with_name("soul"))
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ou_eval = [str(HERE / "run_eval.sh"), str(args.ou_home)]
    # untimed: each tool's retain-model result, once
    ref = args.work / "reference.json"
    if not ref.is_file():
        run([soul, "evaluate", "--model", str(args.reference), "--data", str(args.data), "--recipe", args.recipe,
             "--reference", str(args.reference), "--set", "threads=1", "--output", str(ref)], one_thread)
    retain_log = args.ou_home / "saves" / "reference" / "TOFU_EVAL.json"
    if not retain_log.is_file():
        run(ou_eval + [args.reference.name, str(args.data)])
        (args.ou_home / "saves" / "reference").mkdir(parents=True, exist_ok=True)
        (args.ou_home / "saves" / args.reference.name / "TOFU_EVAL.json").rename(retain_log)

    rounds = []
    for r in range(args.rounds):
        row = {}
        for tool in (("soul", "ou") if r % 2 == 0 else ("ou", "soul")):
            if tool == "soul":
                out = args.work / f"soul{r}.json"
                seconds, _ = run([soul, "evaluate", "--model", str(args.model), "--data", str(args.data),
                                  "--recipe", args.recipe, "--reference", str(ref), "--set", "threads=1",
                                  "--output", str(out)], one_thread)
                res = json.loads(out.read_text())
                st = res["stats"]
                row["soul"] = {"seconds": seconds, "scoring_positions": st["tokens_scored"],
                               "scoring_passes": st["score_passes"], "seconds_scoring": st["seconds_scoring"],
                               "values": {k: res["metrics"][k]["value"] for k in SAME.values() if k in res["metrics"]}}
            else:
                seconds, proc = run(ou_eval + [args.model.name, str(args.data), str(retain_log)])
                line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("[count] json "))
                summary = json.loads((args.ou_home / "saves" / args.model.name / "TOFU_SUMMARY.json").read_text())
                row["ou"] = {"seconds": seconds, **json.loads(line[len("[count] json "):]),
                             "values": {k: summary.get(k) for k in SAME}}
            print(f"round {r} {tool}: {seconds:.1f} s", flush=True)
        row["ratio"] = row["ou"]["seconds"] / row["soul"]["seconds"]
        rounds.append(row)
    ratios = [r["ratio"] for r in rounds]
    last = rounds[-1]
    bench = {
        "rounds": rounds,
        "ratio_ou_over_soul": {"per_round": ratios, "median": statistics.median(ratios), "min": min(ratios)},
        "scoring_positions": {"soul": last["soul"]["scoring_positions"], "ou": last["ou"]["scoring_positions"]},
        "same_quantities": {ou: {"open_unlearning": last["ou"]["values"].get(ou), "soulcli": last["soul"]["values"].get(s)}
                            for ou, s in SAME.items()},
        "model": str(args.model), "data": str(args.data), "threads": 1,
        "versions": {"python": platform.python_version()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(bench, indent=2) + "\n")
    for r, row in enumerate(rounds):
        print(f"round {r}: open-unlearning {row['ou']['seconds']:.1f} s ({row['ou']['scoring_positions']:,} scoring "
              f"positions, {row['ou']['scoring_passes']} passes), soulcli {row['soul']['seconds']:.1f} s "
              f"({row['soul']['scoring_positions']:,} positions, {row['soul']['scoring_passes']} passes): "
              f"{row['ratio']:.2f}x")
    print(f"median {bench['ratio_ou_over_soul']['median']:.2f}x; wrote {OUT}")


if __name__ == "__main__":
    main()
