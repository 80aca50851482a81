"""Benchmark: peak memory of the evaluation at a real vocabulary (128k tokens, Llama 3's size).

Each configuration runs in its own process (peak RSS, ``ru_maxrss``, is per process) on a
random 2-layer, 64-wide Llama whose output layer has ``--vocab`` rows, over the synthetic
TOFU-shaped items of ``bench_eval.py`` (408 scored pairs) at ``--batch-size``:

* ``scoring``: ``score_pairs`` of every pair with Min-K%++'s statistics (the worst case: every
  position's full-vocabulary moments);
* ``evaluate``: the whole TOFU suite through ``evaluate_model`` (scoring and generation).

Each runs twice, with the answer positions scored in chunks (the default, about
``soulcli.eval.scoring.CHUNK_ELEMENTS`` logits at a time: only those positions' hidden states
go through the output layer) and in one chunk (every answer position of a batch through the
output layer at once); the two must give the same values. ``--compare-src DIR`` adds the same configurations run on another checkout's
``src`` (e.g. an earlier commit's), whose metric values may differ by design. Writes
``bench/out/eval_memory.json``.

    python bench/bench_eval_memory.py [--vocab 128000] [--batch-size 32] [--compare-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "eval_memory.json"
SRC = HERE.parent / "src"


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(what: str, vocab: int, batch_size: int, one_chunk: bool) -> dict:
    """One configuration, in this process: its peak RSS and the values it computed."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(HERE))
    from bench_eval import synthetic_splits
    from soulcli.data.template import PromptTemplate
    from soulcli.eval import EvalConfig, evaluate_model
    from soulcli.eval import scoring
    from soulcli.models.builtin import train_tokenizer
    from soulcli.tasks import TofuData, TofuTask

    splits = synthetic_splits()
    template = PromptTemplate()
    corpus = [template.prompt("")] + [t for rows in splits.values() for r in rows
                                     for t in (r["question"], r["answer"], *r.get("perturbed_answer", []))]
    tokenizer = train_tokenizer(corpus, vocab_size=1000, min_frequency=1)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if one_chunk and hasattr(scoring, "CHUNK_ELEMENTS"):
        scoring.CHUNK_ELEMENTS = 1 << 62
    suite = TofuTask(TofuData(template=template)).suite(EvalConfig())
    cfg = EvalConfig(batch_size=batch_size, max_new_tokens=16)
    before = _rss_mb()
    t0 = time.perf_counter()
    if what == "scoring":
        pairs = [scoring.Pair(template.prompt(r["question"]), a) for rows in splits.values() for r in rows
                 for a in (r["answer"], *r.get("perturbed_answer", []))]
        scored = scoring.score_pairs(model, tokenizer, pairs, batch_size=batch_size,
                                     with_stats=[True] * len(pairs))
        scores = getattr(scored, "scores", scored)  # an earlier src (--compare-src) returns the list
        values = {"logprobs": np.concatenate([s.logprobs for s in scores]).tolist(),
                  "mu": np.concatenate([s.mu for s in scores]).tolist(),
                  "sigma": np.concatenate([s.sigma for s in scores]).tolist()}
    else:
        result = evaluate_model(model, tokenizer, suite, splits, cfg)
        values = {name: entry.get("value") for name, entry in result["metrics"].items()}
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": peak, "rss_before_mb": before, "growth_mb": peak - before,
            "seconds": seconds, "values": values}


def run(src: Path, what: str, args: argparse.Namespace, one_chunk: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--vocab", str(args.vocab),
           "--batch-size", str(args.batch_size)] + (["--one-chunk"] if one_chunk else [])
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for key, x in a.items():
        y = b[key]
        xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
        for u, v in zip(xs, ys):
            if u is not None and v is not None:
                worst = max(worst, abs(u - v))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compare-src", type=Path, help="another checkout's src/ to measure too")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", choices=("scoring", "evaluate"), help=argparse.SUPPRESS)
    parser.add_argument("--one-chunk", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.vocab, args.batch_size, args.one_chunk)))
        return 0

    out: dict = {"vocab": args.vocab, "batch_size": args.batch_size, "configurations": {}}
    for what in ("scoring", "evaluate"):
        chunked = run(SRC, what, args, one_chunk=False)
        whole = run(SRC, what, args, one_chunk=True)
        row = {"chunked": chunked, "one_chunk": whole,
               "peak_ratio": chunked["peak_rss_mb"] / whole["peak_rss_mb"],
               "max_abs_difference": _max_difference(chunked["values"], whole["values"])}
        if args.compare_src:
            row["compare_src"] = run(args.compare_src, what, args, one_chunk=False)
            row["peak_ratio_vs_compare_src"] = chunked["peak_rss_mb"] / row["compare_src"]["peak_rss_mb"]
        out["configurations"][what] = row
        line = (f"{what}: peak {chunked['peak_rss_mb']:.0f} MB chunked vs {whole['peak_rss_mb']:.0f} MB in one "
                f"chunk ({row['peak_ratio']:.2f}x; before evaluating {chunked['rss_before_mb']:.0f} MB), "
                f"max |difference| {row['max_abs_difference']:.1e}")
        if args.compare_src:
            line += f"; {args.compare_src}: {row['compare_src']['peak_rss_mb']:.0f} MB"
        print(line, flush=True)
        if what == "scoring":  # thousands of per-position numbers: only their difference is kept
            for part in ("chunked", "one_chunk", "compare_src"):
                row.get(part, {}).pop("values", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
