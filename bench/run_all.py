"""`make bench`: every benchmark in turn; figures land in bench/out/*.json (see bench/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = [
    ["bench/bench_demo.py"],
    ["bench/bench_optim.py"],
    ["bench/bench_unlearn_step.py"],
    ["bench/bench_objectives_memory.py"],
    ["bench/bench_eval.py"],
    ["bench/bench_generate.py"],
    ["bench/bench_eval_memory.py"],
    ["bench/bench_compare.py"],
    ["bench/bench_tasks.py"],
    ["bench/bench_keep.py"],
]


def main() -> None:
    for cmd in BENCHES:
        print(f"== {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, *cmd, *sys.argv[1:]], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
