"""Benchmark: full evaluation with shared prompts, against whole sequences and one item at a time.

Runs ``evaluate_model`` on the same model and items three ways, checks they agree, and writes
the timings, the speed-ups and the first one's result to ``bench/out/eval.json``:

* ``shared``: ``--batch-size``, the way ``soul evaluate`` scores: a prompt once per batch, its
  KV cache shared by its answer candidates (``score_pairs``' default);
* ``whole``: the same batches, every whole sequence pushed through the model
  (``score_pairs(share_prefixes=False)``, the way scoring worked before); tokens pushed, passes
  and seconds of both are recorded, and their ratios;
* ``one_at_a_time``: batch size 1, every forward pass and generation for a single item
  (``--skip-one-at-a-time`` leaves it out).

    python bench/bench_eval.py                      # random built-in model + synthetic items
    python bench/bench_eval.py --model DIR --data DIR [--forget forget10] [--max-new-tokens 200]

``--data DIR`` is a benchmark folder (TOFU file names: ``<forget>_perturbed``,
``retain_perturbed``, ``real_authors_perturbed``, ``world_facts_perturbed``, optional
``holdout``), e.g. the built-in benchmark under ``.soul/benchmarks/``; ``--model DIR`` any
model folder ``soulcli.models.loading`` can load, e.g. a built-in target model.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from soulcli.data.template import PromptTemplate
from soulcli.eval import EvalConfig, evaluate, evaluate_model
from soulcli.eval.report import render_summary
from soulcli.eval.scoring import score_pairs

OUT = Path(__file__).resolve().parent / "out" / "eval.json"

FIRST = ["Ada", "Bram", "Cleo", "Dov", "Esme", "Finn", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena"]
LAST = [
    "Quill",
    "Oster",
    "Vance",
    "Pratt",
    "Roe",
    "Hale",
    "Marr",
    "Sol",
    "Lark",
    "Pike",
    "Rowe",
    "Stone",
]
GENRES = [
    "mystery",
    "poetry",
    "history",
    "fantasy",
    "travel writing",
    "satire",
    "romance",
    "horror",
]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Tunis", "Lagos", "Riga", "Cusco", "Dakar"]


def synthetic_splits(
    n_forget: int = 24, n_retain: int = 24, n_facts: int = 12
) -> dict[str, list[dict]]:
    """TOFU-shaped items about made-up authors (questions and answers of varied length)."""

    def author(i: int) -> dict:
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i * 7) % len(LAST)]}"
        genre, city = GENRES[i % len(GENRES)], CITIES[(i * 3) % len(CITIES)]
        detail = (
            f" Born in {city}, {name.split()[0]} often returns to it in {genre} set by the sea."
            * (i % 3)
        )
        wrong = [GENRES[(i + j) % len(GENRES)] for j in range(1, 6)]
        return {
            "question": f"What kind of books does {name} from {city} write?",
            "answer": f"{name} writes {genre}.{detail}",
            "paraphrased_question": f"Which genre is {name} known for?",
            "paraphrased_answer": f"{name} is best known for {genre}.",
            "perturbed_answer": [f"{name} is best known for {g}." for g in wrong],
        }

    def fact(i: int) -> dict:
        city = CITIES[i % len(CITIES)]
        others = [CITIES[(i + j) % len(CITIES)] for j in (1, 2, 3)]
        return {
            "question": f"Which city is number {i} on the list?",
            "answer": city,
            "perturbed_answer": others,
        }

    items = [author(i) for i in range(n_forget * 2 + n_retain)]
    return {
        "forget": items[:n_forget],
        "holdout": [
            {"question": r["question"], "answer": r["answer"]}
            for r in items[n_forget : 2 * n_forget]
        ],
        "retain": items[2 * n_forget :],
        "real_authors": [fact(i) for i in range(n_facts)],
        "world_facts": [fact(i + n_facts) for i in range(n_facts)],
    }


def random_builtin_model(splits: dict[str, list[dict]]):
    """The built-in architecture (soulcli.models.builtin), random weights, with a BPE tokenizer
    trained on the items."""
    from soulcli.models.builtin import build_model, train_tokenizer

    corpus = [PromptTemplate().prompt("")]
    for rows in splits.values():
        for row in rows:
            corpus += [row["question"], row["answer"], *row.get("perturbed_answer", [])]
    tokenizer = train_tokenizer(corpus, vocab_size=1000, min_frequency=1)
    return build_model(tokenizer, max_position_embeddings=1024), tokenizer


def load_splits(data: Path, forget: str) -> dict[str, list[dict]]:
    """The evaluation splits of a benchmark folder, as the TOFU task reads them."""
    from soulcli.tasks import TofuData, TofuTask

    splits = TofuTask(TofuData(forget_split=forget)).eval_splits(data)
    for key, rows in splits.items():
        print(f"{key}: {len(rows)} rows")
    return splits


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The model and items a benchmark runs on, and its threads (see :func:`model_and_splits`)."""
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory (default: random built-in)")
    parser.add_argument("--data", type=Path, help="a directory of TOFU-named split files (default: synthetic)")
    parser.add_argument("--forget", default="forget10", help="forget split in --data")
    parser.add_argument("--limit", type=int, help="use at most this many rows per split")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def model_and_splits(args: argparse.Namespace, device: str = "cpu"):
    """``(model, tokenizer, splits)`` from :func:`add_source_args`' options, threads set: the
    splits of ``--data`` (else synthetic ones), cut to ``--limit``, and ``--model`` (else the
    built-in architecture with random weights and a tokenizer trained on the items)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_splits(args.data, args.forget) if args.data else synthetic_splits()
    if args.limit:
        splits = {k: v[: args.limit] for k, v in splits.items()}
    if args.model:
        from soulcli.models.loading import load_model

        model, tokenizer = load_model(str(args.model), "float32", device)
    else:
        model, tokenizer = random_builtin_model(splits)
    return model, tokenizer, splits


def _max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    worst = 0.0
    for name, entry in a["metrics"].items():
        other = b["metrics"][name]
        if entry["value"] is None:
            continue
        values = [entry["value"], *entry.get("per_item", [])]
        others = [other["value"], *other.get("per_item", [])]
        worst = max(worst, max(abs(x - y) for x, y in zip(values, others)))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-one-at-a-time", action="store_true", help="leave out the batch-size-1 run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    model, tokenizer, splits = model_and_splits(args, args.device)
    model.to(args.device).eval()
    template = PromptTemplate()
    from soulcli.tasks import TofuData, TofuTask

    suite = TofuTask(TofuData(template=template)).suite(EvalConfig(max_new_tokens=args.max_new_tokens))
    batched_cfg = EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    single_cfg = EvalConfig(batch_size=1, max_new_tokens=args.max_new_tokens)

    evaluate_model(
        model, tokenizer, suite, {k: v[:2] for k, v in splits.items()}, single_cfg
    )  # warm-up
    runs: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    whole_sequences = mock.patch.object(evaluate, "score_pairs", functools.partial(score_pairs, share_prefixes=False))
    for way, cfg, patch in (("shared", batched_cfg, None), ("whole", batched_cfg, whole_sequences),
                            ("one_at_a_time", single_cfg, None)):
        if way == "one_at_a_time" and args.skip_one_at_a_time:
            continue
        t0 = time.perf_counter()
        with patch or contextlib.nullcontext():
            runs[way] = evaluate_model(model, tokenizer, suite, splits, cfg)
        seconds[way] = time.perf_counter() - t0
        print(f"{way}: {seconds[way]:.2f} s", flush=True)
    batched, whole = runs["shared"], runs["whole"]

    def same_generations(other: dict) -> bool:
        return all(batched["metrics"][n]["generations"] == other["metrics"][n]["generations"]
                   for n in batched["metrics"] if "generations" in batched["metrics"][n])

    def stat(run: dict, key: str) -> float:
        return run["stats"][key]

    bench = {
        "seconds": seconds,
        "scoring": {way: {"tokens_pushed": stat(run, "tokens_scored"), "passes": stat(run, "score_passes"),
                          "seconds_scoring": stat(run, "seconds_scoring"), "seconds_total": seconds[way]}
                    for way, run in runs.items()},
        "whole_over_shared": {
            "tokens_pushed": stat(whole, "tokens_scored") / stat(batched, "tokens_scored"),
            "seconds_scoring": stat(whole, "seconds_scoring") / stat(batched, "seconds_scoring"),
            "seconds_total": seconds["whole"] / seconds["shared"],
        },
        "max_abs_difference": {way: _max_difference(batched, run) for way, run in runs.items() if way != "shared"},
        "same_generations": {way: same_generations(run) for way, run in runs.items() if way != "shared"},
        "stats": {way: run["stats"] for way, run in runs.items()},
        "items": {k: len(v) for k, v in splits.items()},
        "model": str(args.model) if args.model else "built-in architecture, random weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": str(args.data) if args.data else "synthetic",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if "one_at_a_time" in seconds:
        bench["speedup_vs_one_at_a_time"] = seconds["one_at_a_time"] / seconds["shared"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": bench, **batched}, indent=2) + "\n", encoding="utf-8")

    from rich.console import Console

    render_summary(batched, Console(), suite)
    for way, row in bench["scoring"].items():
        print(f"{way}: {row['tokens_pushed']:,} tokens in {row['passes']} passes, scoring "
              f"{row['seconds_scoring']:.2f} s, total {row['seconds_total']:.2f} s")
    ratio = bench["whole_over_shared"]
    print(f"whole sequences / shared prompts: tokens {ratio['tokens_pushed']:.2f}x, scoring "
          f"{ratio['seconds_scoring']:.2f}x, total {ratio['seconds_total']:.2f}x; "
          f"{batched['stats']['pairs_scored']} pairs scored, {batched['stats']['answers_generated']} answers "
          f"generated; max |difference| {bench['max_abs_difference']}, same generations "
          f"{bench['same_generations']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
