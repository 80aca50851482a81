"""Optimizer step cost on the parameter shapes of a ~4M-parameter Llama.

Times ``optimizer.step()`` alone (gradients are preset, no forward/backward) for torch's AdamW
(fused, foreach, per-tensor loop) and for soulcli's optimizers (plain per-parameter rules; SophiaG
and SophiaH through their one-pass CPU kernel) with the hyperparameters the
engine uses by default (``diagnostics_every=20``: win rate and update norm are computed on one
step in twenty, so each figure is a mean over blocks of twenty consecutive steps). SophiaG is also
timed with diagnostics off and on every step, and the authors' per-tensor loop is timed for
context. Every ratio is taken within this one run: the optimizers are timed in interleaved
rounds and each figure is the median over rounds, so a busy machine slows all of them alike.
Other processes still distort multi-threaded timings (a parallel region waits for a worker
that lost its core), so the fastest AdamW and SophiaG are timed once more on one thread by
process CPU time, which other processes barely touch.

Writes bench/out/optim.json and prints the same figures.

    python bench/bench_optim.py [--rounds 15] [--block 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from soulcli.optim import build_optimizer, state_bytes
from soulcli.optim.base import DIAGNOSTICS_EVERY

OUT = Path(__file__).parent / "out" / "optim.json"


def llama_parameters() -> list[torch.nn.Parameter]:
    config = LlamaConfig(hidden_size=256, num_hidden_layers=4, intermediate_size=688,
                         vocab_size=2048, num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    params = list(LlamaForCausalLM(config).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def authors_loop(params: list[torch.nn.Parameter], lr: float = 1e-4, b1: float = 0.965,
                 rho: float = 0.04, bs: int = 146) -> Callable[[], None]:
    """SophiaG as the authors' released class runs it: a Python loop over tensors."""
    m = [torch.zeros_like(p) for p in params]
    h = [torch.rand_like(p) * 1e-4 for p in params]

    @torch.no_grad()
    def step() -> None:
        for p, mi, hi in zip(params, m, h):
            mi.mul_(b1).add_(p.grad, alpha=1 - b1)
            ratio = (mi.abs() / (rho * bs * hi + 1e-15)).clamp(None, 1)
            p.addcmul_(mi.sign(), ratio, value=-lr)

    return step


def candidates(params: list[torch.nn.Parameter]) -> dict[str, torch.optim.Optimizer | Callable]:
    out: dict[str, torch.optim.Optimizer | Callable] = {
        "torch_adamw_fused": torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True),
        "torch_adamw_foreach": torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=True),
        "torch_adamw_loop": torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=False),
    }
    for name in ("adamw", "sgd", "signum", "lion", "sophiag", "sophiah", "adahessian"):
        out[name] = build_optimizer(name, params, lr=1e-4)
    out["sophiag_no_diagnostics"] = build_optimizer("sophiag", params, lr=1e-4,
                                                    diagnostics_every=0)
    out["sophiag_diagnostics_every_step"] = build_optimizer("sophiag", params, lr=1e-4,
                                                            diagnostics_every=1)
    out["sophiag_authors_loop"] = authors_loop(params)
    for opt in out.values():
        if hasattr(opt, "update_hessian"):
            opt.update_hessian(bs=146)  # realistic curvature; not timed
    return out


def measure(steps: dict[str, Callable[[], None]], rounds: int, block: int,
            clock: Callable[[], float]) -> dict[str, float]:
    """Median ms per step over interleaved rounds of ``block`` consecutive steps each."""
    for step in steps.values():  # warm up: state allocation, chunk plans, kernels
        for _ in range(block):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = clock()
            for _ in range(block):
                step()
            times[name].append((clock() - start) / block * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=DIAGNOSTICS_EVERY,
                        help="steps per timed block (a multiple of diagnostics_every)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.block % DIAGNOSTICS_EVERY:
        parser.error(f"--block must be a multiple of diagnostics_every ({DIAGNOSTICS_EVERY}) so "
                     "every block holds the same number of diagnostic steps")
    if args.threads:
        torch.set_num_threads(args.threads)

    params = llama_parameters()
    opts = candidates(params)
    steps = {name: getattr(opt, "step", opt) for name, opt in opts.items()}
    ms = measure(steps, args.rounds, args.block, time.perf_counter)
    fastest_adamw = min(("torch_adamw_fused", "torch_adamw_foreach", "torch_adamw_loop"),
                        key=ms.__getitem__)
    base = ms[fastest_adamw]
    # the same two on one thread, by process CPU time: insensitive to other processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu = measure({k: steps[k] for k in (fastest_adamw, "sophiag")}, args.rounds, args.block,
                  time.process_time)
    one_wall = measure({k: steps[k] for k in (fastest_adamw, "sophiag")}, args.rounds, args.block,
                       time.perf_counter)
    torch.set_num_threads(threads)
    adamw_state = state_bytes(opts["torch_adamw_fused"])
    sophia_state = state_bytes(opts["sophiag"])
    report = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "rounds": args.rounds,
        "steps_per_block": args.block,
        "engine_default": f"diagnostics_every={DIAGNOSTICS_EVERY} (win rate / update norm "
                          f"on one step in {DIAGNOSTICS_EVERY})",
        "fastest_torch_adamw": fastest_adamw,
        "step_ms_median": {k: round(v, 4) for k, v in ms.items()},
        "ratio_to_fastest_torch_adamw": {k: round(v / base, 3) for k, v in ms.items()},
        "one_thread_cpu_ms": {k: round(v, 4) for k, v in cpu.items()},
        "one_thread_cpu_ratio_sophiag": round(cpu["sophiag"] / cpu[fastest_adamw], 3),
        "one_thread_wall_ms": {k: round(v, 4) for k, v in one_wall.items()},
        "one_thread_wall_ratio_sophiag": round(one_wall["sophiag"] / one_wall[fastest_adamw], 3),
        "note_cpu_time": "process CPU time also counts idle worker threads spinning after a "
                         "parallel region (numba's and torch's OpenMP pools), so the wall-clock "
                         "ratios are the measure",
        "state_bytes": {"torch_adamw_fused": adamw_state, "sophiag": sophia_state,
                        "ratio_sophiag_to_adamw": round(sophia_state / adamw_state, 6)},
        "acceptance": {"sophiag_over_fastest_adamw": round(ms["sophiag"] / base, 3),
                       "limit": 1.0},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['parameters']:,} parameters in {report['tensors']} tensors, "
          f"{threads} threads, torch {report['torch']}; median of {args.rounds} "
          f"rounds of {args.block} steps")
    print(f"{'optimizer':34s} {'ms/step':>9s} {'x ' + fastest_adamw:>24s}")
    for name in sorted(ms, key=ms.__getitem__):
        print(f"{name:34s} {ms[name]:9.3f} {ms[name] / base:24.2f}")
    print(f"one thread, CPU time: {fastest_adamw} {cpu[fastest_adamw]:.3f} ms, sophiag "
          f"{cpu['sophiag']:.3f} ms, ratio {report['one_thread_cpu_ratio_sophiag']:.2f}")
    sb = report["state_bytes"]
    print(f"state bytes: torch AdamW {sb['torch_adamw_fused']:,}  SophiaG {sb['sophiag']:,}  "
          f"(ratio {sb['ratio_sophiag_to_adamw']})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
