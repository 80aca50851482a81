"""Tiny models and hand-made batches for the objective tests."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from soulcli.data.encode import IGNORE_INDEX, EncodedItem, pad_batch
from soulcli.models.builtin import build_model
from soulcli.objectives import UnlearnBatch

PAD, BOS, EOS = 0, 1, 2
VOCAB = 96

Pairs = list[tuple[list[int], list[int]]]


def qa_batch(pairs: Pairs, index: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``[BOS] + prompt + answer + [EOS]`` items, labels on answer + EOS."""
    items = [
        EncodedItem([BOS, *p, *a, EOS], [IGNORE_INDEX] * (1 + len(p)) + [*a, EOS]) for p, a in pairs
    ]
    batch = pad_batch(items, PAD)
    batch["index"] = torch.tensor(index, dtype=torch.long)
    return batch


class BigramLM(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: log-probabilities computable by hand."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        self.table = nn.Parameter(
            torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])

    def logp(self) -> list[list[float]]:
        """Row-wise log-softmax of the table in plain Python floats (an independent path)."""
        rows = self.table.detach().double().tolist()
        out = []
        for row in rows:
            top = max(row)
            lse = top + math.log(sum(math.exp(v - top) for v in row))
            out.append([v - lse for v in row])
        return out


class _SpecialIds:
    """What ``build_model`` reads from a tokenizer: the vocabulary size and the special ids."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD

    def __len__(self) -> int:
        return VOCAB


def tiny_llama(seed: int = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    """The built-in architecture at 2 layers, 32 wide; ``attn="eager"`` where a test
    differentiates twice (SDPA's CPU kernel has no double backward)."""
    model = build_model(
        _SpecialIds(),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        seed=seed,
    )
    model.set_attn_implementation(attn)
    return model


def random_pairs(n: int, gen: torch.Generator, vocab: int = VOCAB) -> Pairs:
    def tokens(lo: int, hi: int) -> list[int]:
        length = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(3, vocab, (length,), generator=gen).tolist()

    return [(tokens(2, 5), tokens(1, 4)) for _ in range(n)]


def random_batches(
    n_batches: int = 2, size: int = 3, seed: int = 0, vocab: int = VOCAB
) -> list[UnlearnBatch]:
    """Forget items 0.., each with a refusal and an alternate answer, and retain items 100..,
    all random tokens."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        index = list(range(b * size, (b + 1) * size))
        forget = random_pairs(size, gen, vocab)
        refusal = [(p, a) for (p, _), (_, a) in zip(forget, random_pairs(size, gen, vocab))]
        retain = random_pairs(size, gen, vocab)
        alternate = [(p, a) for (p, _), (_, a) in zip(forget, random_pairs(size, gen, vocab))]
        batches.append(
            UnlearnBatch(
                forget=qa_batch(forget, index),
                retain=qa_batch(retain, [100 + i for i in index]),
                forget_refusal=qa_batch(refusal, index),
                forget_alternate=qa_batch(alternate, index),
            )
        )
    return batches


@pytest.fixture
def make_llama() -> Callable[..., LlamaForCausalLM]:
    return tiny_llama


@pytest.fixture
def make_batches() -> Callable[..., list[UnlearnBatch]]:
    return random_batches


@pytest.fixture
def make_qa_batch() -> Callable[..., dict[str, torch.Tensor]]:
    return qa_batch


@pytest.fixture
def make_bigram() -> Callable[..., BigramLM]:
    return BigramLM
