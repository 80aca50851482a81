"""`make bench`: every benchmark in turn; figures land in bench/out/*.json (see bench/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZO_CELLS = [x for kv in ("lr_grid=[3e-3,1e-2]", "unlearn.epochs=40", "unlearn.eval_every=104",
                         "unlearn.max_grad_norm=null")
            for x in ("--set", f"compare.per_optimizer.zo.{kv}")]
BENCHES = [
    ["bench/bench_demo.py"],
    ["bench/bench_optim.py"],
    ["bench/bench_unlearn_step.py"],
    ["bench/bench_objectives_memory.py"],
    ["bench/bench_eval.py"],
    ["bench/bench_generate.py"],
    ["bench/bench_eval_memory.py"],
    ["bench/bench_compare.py"],
    # issue 13's figures: four optimizers x GradDiff / NPO, 3 seeds, relearning and quantization
    # attacks on each selected setting; MeZO (zo) with its own lr grid, a 5x step budget (a
    # zeroth-order step moves along one random direction) and no gradient clipping
    ["bench/bench_compare.py", "--tag", "robustness", "--optimizers", "adamw,signum,sophiag,zo",
     "--objectives", "graddiff,npo", "--lr-grid", "3e-5,1e-4", "--attacks", "relearn,quantize",
     "--set", "threads=1", "--set", "compare.include_influence=false",
     *ZO_CELLS],
    ["bench/bench_tasks.py"],
    ["bench/bench_keep.py"],
]


def main() -> None:
    for cmd in BENCHES:
        print(f"== {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, *cmd, *sys.argv[1:]], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
