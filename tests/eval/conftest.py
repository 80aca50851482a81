"""Fixtures for the evaluation tests: a BPE tokenizer trained here and a tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from soulcli.data.template import PromptTemplate

NAMES = [
    "Ada Quill",
    "Bram Oster",
    "Cleo Vance",
    "Dov Pratt",
    "Esme Roe",
    "Finn Hale",
    "Gus Marr",
    "Hana Sol",
]
GENRES = ["mystery", "poetry", "history", "fantasy", "travel writing", "satire"]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Tunis"]


def make_splits() -> dict[str, list[dict]]:
    """TOFU-shaped rows with varied lengths (so batches need padding)."""

    def author_row(i: int, name: str) -> dict:
        genre, city = GENRES[i % len(GENRES)], CITIES[i % len(CITIES)]
        others = [GENRES[(i + j) % len(GENRES)] for j in (1, 2, 3)]
        return {
            "question": f"What genre does {name} write?" + (" Tell me more about it." * (i % 3)),
            "answer": f"{name} writes {genre}" + (f", mostly set in {city}" if i % 2 else "") + ".",
            "paraphrased_question": f"Which genre is {name} known for?",
            "paraphrased_answer": f"{name} is known for {genre}.",
            "perturbed_answer": [f"{name} is known for {g}." for g in others],
        }

    return {
        "forget": [author_row(i, n) for i, n in enumerate(NAMES[:5])],
        "retain": [author_row(i + 5, n) for i, n in enumerate(NAMES[5:])],
        "real_authors": [
            {
                "question": "Who wrote Hamlet?",
                "answer": "William Shakespeare",
                "perturbed_answer": ["Jane Austen", "Mark Twain"],
            },
            {
                "question": "Who wrote the novel Emma?",
                "answer": "Jane Austen",
                "perturbed_answer": ["Leo Tolstoy", "Homer"],
            },
            {
                "question": "Who wrote War and Peace?",
                "answer": "Leo Tolstoy",
                "perturbed_answer": ["Jane Austen", "Dante"],
            },
        ],
        "world_facts": [
            {
                "question": "Where is the Eiffel Tower?",
                "answer": "Paris",
                "perturbed_answer": ["Rome", "Oslo", "Lima"],
            },
            {
                "question": "What is the capital of Peru?",
                "answer": "Lima",
                "perturbed_answer": ["Quito", "Paris", "Oslo"],
            },
            {
                "question": "Which ocean is the largest?",
                "answer": "The Pacific",
                "perturbed_answer": ["The Atlantic", "The Indian"],
            },
        ],
        "holdout": [
            {
                "question": f"Where was {n} born?",
                "answer": f"{n} was born in {c}" + " long ago" * (i % 2) + ".",
            }
            for i, (n, c) in enumerate(
                zip(["Ivo Lark", "Juno Pike", "Kai Rowe", "Lena Stone", "Milo Tate"], CITIES)
            )
        ],
    }


def build_tokenizer() -> PreTrainedTokenizerFast:
    corpus = []
    for rows in make_splits().values():
        for row in rows:
            corpus += [row["question"], row["answer"], row.get("paraphrased_answer", "")]
            corpus += row.get("perturbed_answer", [])
    corpus += ["Question: Answer: \n"] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_model(tokenizer, seed: int = 0, init: float = 0.3) -> LlamaForCausalLM:
    """A random 2-layer, 32-wide Llama. The wide initialisation (``init``) gives peaked
    next-token distributions, so greedy choices are seldom near-ties that float noise could flip."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=init,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer) -> LlamaForCausalLM:
    return build_model(tokenizer)


@pytest.fixture(scope="session")
def template() -> PromptTemplate:
    return PromptTemplate()


@pytest.fixture(scope="session")
def retain_model(tokenizer) -> LlamaForCausalLM:
    """A second random model, standing in for the retain (reference) model."""
    return build_model(tokenizer, seed=1)


@pytest.fixture(scope="session")
def split_factory():
    """``make_splits``, for fixtures wider than one test."""
    return make_splits


@pytest.fixture()
def splits() -> dict[str, list[dict]]:
    """A fresh copy per test, free to modify."""
    return make_splits()


@pytest.fixture(scope="session")
def pairwise_auc():
    """AUC by definition: the share of (member, non-member) pairs the member wins, ties half."""

    def auc(members, nonmembers) -> float:
        wins = sum((a > b) + 0.5 * (a == b) for a in members for b in nonmembers)
        return wins / (len(members) * len(nonmembers))

    return auc


def _by_hand(model, tokenizer, template, question, answer):
    """Unpadded single-sequence forward; log-softmax and vocabulary moments in float64 numpy."""
    # The whole sequence tokenised once (this tokenizer adds no BOS), EOS appended; the answer
    # starts at the first token that overlaps its characters.
    text = template.prompt(question) + answer
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = enc["input_ids"] + [tokenizer.eos_token_id]
    start = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(text) - len(answer))
    ans = ids[start:]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    rows = logits[start - 1 : len(ids) - 1]
    logp = rows - rows.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    target = np.asarray(ans)
    picked = logp[np.arange(len(ans)), target]
    p = np.exp(logp)
    mu = (p * logp).sum(-1)
    sigma = np.sqrt((p * logp**2).sum(-1) - mu**2)
    return picked, logp.argmax(-1) == target, mu, sigma


@pytest.fixture(scope="session")
def score_by_hand(tokenizer, template):
    """``f(model, question, answer) -> (logprobs, hits, mu, sigma)`` per answer token, computed
    without soulcli: one unpadded forward pass, float64 numpy log-softmax."""
    return lambda model, question, answer: _by_hand(model, tokenizer, template, question, answer)
