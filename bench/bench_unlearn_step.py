"""Whole unlearning step time, SophiaG (GNB curvature every `hessian_interval` steps) vs AdamW,
and optimizer state bytes, on the default model. Ratios come from runs interleaved in one
process (AdamW, SophiaG, AdamW, SophiaG, ...), so machine noise hits both alike.
Writes bench/out/unlearn_step.json. Run: .venv/bin/python bench/bench_unlearn_step.py
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.numel() > 1:
                total += v.numel() * v.element_size()
    return total


def main() -> None:
    import transformers
    from rich.console import Console

    from soulcli.engine.progress import Reporter
    from soulcli.recipe import load_recipe
    from soulcli.workflows import unlearn as U

    transformers.utils.logging.disable_progress_bar()
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/tofu_sophia.yaml")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    rep = Reporter(Console(stderr=True), quiet=True)
    times: dict[str, list[float]] = {"adamw": [], "sophiag": []}
    plain: dict[str, list[float]] = {"adamw": [], "sophiag": []}  # untrimmed means
    states: dict[str, int] = {}
    for _ in range(args.rounds):
        for name in ("adamw", "sophiag"):
            args_set = [f"optimizer.name={name}", f"unlearn.max_steps={args.steps}", "unlearn.epochs=100",
                        "optimizer.args={}" if name == "adamw" else "optimizer.args.rho=10", *args.set]
            recipe = load_recipe(args.recipe, args_set)
            run = U.prepare_model(recipe, rep, "cpu")
            model = run.model
            captured = {}
            orig = U.build_optimizer_for

            def spy(r, m):
                opt, curv = orig(r, m)
                captured["opt"] = opt
                return opt, curv

            U.build_optimizer_for = spy
            try:
                rec = U.unlearn_model(run, rep)
            finally:
                U.build_optimizer_for = orig
            steps = [r["step_seconds"] for r in rec["rows"]][2:]  # drop warm-up steps
            # mean over whole hessian_interval cycles (GNB steps included), trimmed of the
            # slowest cycle so one burst of machine noise does not decide the round
            k = recipe.optimizer.hessian_interval
            cycles = sorted(statistics.mean(steps[i:i + k]) for i in range(0, len(steps) - k + 1, k))
            times[name].append(statistics.mean(cycles[:-1] if len(cycles) > 2 else cycles))
            whole = steps[: len(steps) // k * k]  # whole cycles, nothing dropped
            plain[name].append(statistics.mean(whole))
            states[name] = state_bytes(captured["opt"])
            print(name, f"{times[name][-1] * 1000:.1f} ms/step", flush=True)
    ratio = [s / a for s, a in zip(times["sophiag"], times["adamw"])]
    n_params = sum(p.numel() for p in model.parameters())
    out = {
        "recipe": args.recipe, "steps_per_run": args.steps, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "parameters": n_params,
        "step_ms": {k: [round(v * 1000, 2) for v in vs] for k, vs in times.items()},
        "sophiag_over_adamw_per_round": [round(r, 3) for r in ratio],
        "sophiag_over_adamw_median": round(statistics.median(ratio), 3),
        "untrimmed_step_ms": {k: [round(v * 1000, 2) for v in vs] for k, vs in plain.items()},
        "untrimmed_ratio_of_means_after_round_1": round(
            statistics.mean(plain["sophiag"][1:] or plain["sophiag"])
            / statistics.mean(plain["adamw"][1:] or plain["adamw"]), 3),
        "state_bytes": states, "state_bytes_ratio": states["sophiag"] / states["adamw"],
        "fp32_buffers_per_parameter": {k: v / (4 * n_params) for k, v in states.items()},
    }
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "unlearn_step.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
