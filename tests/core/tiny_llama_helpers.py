"""A tiny random-init Llama and QA batches of unequal answer lengths (accumulation and
precision tests)."""

from __future__ import annotations

import torch
from rich.console import Console
from transformers import LlamaConfig, LlamaForCausalLM

from soulcli.data.encode import IGNORE_INDEX, EncodedItem, pad_batch
from soulcli.engine.progress import Reporter

QUIET = Reporter(Console(quiet=True), quiet=True)
STEPS = 3


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def items(n: int, seed: int) -> list[EncodedItem]:
    """QA items with prompts of 2-4 and answers of 1-9 tokens (very unequal answer lengths)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 64, (2 + i % 3,), generator=g).tolist()
        answer = torch.randint(3, 64, (1 + (4 * i) % 9,), generator=g).tolist()
        out.append(EncodedItem([1, *prompt, *answer, 2], [IGNORE_INDEX] * (1 + len(prompt)) + [*answer, 2]))
    return out


def batch(pool: list[EncodedItem], idx: list[int]) -> dict[str, torch.Tensor]:
    b = pad_batch([pool[i] for i in idx], 0)
    b["index"] = torch.tensor(idx)
    return b


FORGET, RETAIN = items(12, 1), items(12, 2)
PLAN = [([0, 1, 2, 3], [4, 5, 6, 7]), ([4, 5, 6, 7], [8, 9, 10, 11]), ([8, 9, 10, 11], [0, 1, 2, 3])]


