"""Benchmark: greedy generation, soulcli's loop against Hugging Face ``generate``, same prompts.

Generates the greedy answer to every question of the TOFU splits (the prompts `soul evaluate`'s
ROUGE metrics generate from, the TOFU template, ``--max-new-tokens``, stop string
``"\\nQuestion:"``) three ways and checks that all give the same texts:

* ``hf_generate``: ``model.generate`` on left-padded batches of ``--batch-size`` (how
  ``soulcli.eval.generation`` generated before it had its own loop): every row stays in its
  batch until the longest answer ends;
* ``soulcli``: :func:`soulcli.eval.generation.generate_texts` at the same batch size (finished
  rows leave the batch, only the last position through the output layer);
* ``soulcli_large``: the same at ``--large-batch-size`` (the built-in recipes'
  ``eval.generate_batch_size``, 128).

Writes the seconds, the new tokens and the ratios to ``bench/out/generate.json``.

    python bench/bench_generate.py                                  # random built-in model, synthetic items
    python bench/bench_generate.py --model DIR --data DIR [--forget forget10] [--max-new-tokens 200]

A random model never emits EOS, so every answer runs to the budget: the worst case for
``generate`` and the case where dropping finished rows saves nothing. An unlearned model (say
a run's ``model/``) stops some answers early and runs others to the budget, as evaluations
during unlearning do.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import add_source_args, model_and_splits  # noqa: E402

from soulcli.data.encode import eval_mode, pad_id, pad_prompts, prompt_ids  # noqa: E402
from soulcli.data.template import PromptTemplate  # noqa: E402
from soulcli.eval.generation import cut_at_stop, generate_texts  # noqa: E402
from soulcli.eval.metric import QAPairing  # noqa: E402
from soulcli.eval.scoring import Pair, length_order  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "generate.json"


@torch.inference_mode()
def hf_generate(model, tokenizer, prompts: list[Pair], batch_size: int, max_new_tokens: int,
                stops: tuple[str, ...]) -> tuple[list[str], int]:
    """Greedy answers by ``model.generate`` on left-padded, length-sorted batches; also the
    positions generated (rows x steps, finished rows included)."""
    ids = [prompt_ids(tokenizer, p.prefix, p.continuation, p.specials) for p in prompts]
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id(tokenizer),
                              bos_token_id=tokenizer.bos_token_id, stop_strings=list(stops) or None)
    answers, positions = [""] * len(prompts), 0
    order = length_order([len(p) for p in ids])
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = pad_prompts([ids[i] for i in chunk], pad_id(tokenizer))
            out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 generation_config=config, tokenizer=tokenizer if stops else None)
            new = out[:, batch["input_ids"].shape[1]:]
            positions += new.numel()
            for i, row in zip(chunk, new.tolist()):
                row = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
                answers[i] = cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stops).strip()
    return answers, positions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--large-batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    model, tokenizer, splits = model_and_splits(args)
    template = PromptTemplate()
    stops = tuple(template.stop_strings)
    pairing = QAPairing(template)  # the pairs soul evaluate's ROUGE metrics generate from
    prompts = [pairing(r) for key in ("forget", "retain", "real_authors", "world_facts") for r in splits.get(key, [])]
    generate_texts(model, tokenizer, prompts[:4], max_new_tokens=4)  # warm-up

    texts, seconds = {}, {}
    t0 = time.perf_counter()
    texts["hf_generate"], hf_positions = hf_generate(model, tokenizer, prompts, args.batch_size,
                                                     args.max_new_tokens, stops)
    seconds["hf_generate"] = time.perf_counter() - t0
    for way, size in (("soulcli", args.batch_size), ("soulcli_large", args.large_batch_size)):
        t0 = time.perf_counter()
        texts[way] = generate_texts(model, tokenizer, prompts, batch_size=size, max_new_tokens=args.max_new_tokens,
                                    stop_strings=stops)
        seconds[way] = time.perf_counter() - t0
    for way in seconds:
        print(f"{way}: {seconds[way]:.2f} s", flush=True)
    differing = {way: sum(a != b for a, b in zip(texts[way], texts["hf_generate"])) for way in ("soulcli", "soulcli_large")}
    new_tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts["soulcli"])
    figures = {
        "model": str(args.model) if args.model else "random built-in (never emits EOS)",
        "data": str(args.data) if args.data else "synthetic",
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "large_batch_size": args.large_batch_size,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "speedup_same_batch": round(seconds["hf_generate"] / seconds["soulcli"], 2),
        "speedup_large_batch": round(seconds["hf_generate"] / seconds["soulcli_large"], 2),
        "hf_positions_generated": hf_positions,
        "answer_tokens": new_tokens,
        "answers_differing_from_hf": differing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0 if not any(differing.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
