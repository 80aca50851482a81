"""Label masking on a real BPE tokenizer: what the objectives train on, position by position."""

from __future__ import annotations

import pytest
import torch

from soulcli.data.encode import (
    IGNORE_INDEX,
    answer_mask,
    check_special_tokens,
    encode_qa_batch,
    pad_batch,
)
from soulcli.data.template import PromptTemplate
from soulcli.models.builtin import train_tokenizer

CORPUS = [
    "Question: Where was Mira Okonkwo born?\nAnswer: Mira Okonkwo was born in Lagos.",
    "Question: What does Tomas Reyes write?\nAnswer: He writes detective novels set in Lima.",
    "The river runs past the old mill and into the valley below.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "I don't know. I'm not sure about that.",
] * 4
QUESTIONS = ["Where was Mira Okonkwo born?", "What does Tomas Reyes write?", "Is the mill old?"]
ANSWERS = ["In Lagos.", "Detective novels set in Lima, mostly about the river.", "Yes"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def encoded(tokenizer, questions=QUESTIONS, answers=ANSWERS, pad=None):
    template = PromptTemplate()
    return pad_batch(
        encode_qa_batch(tokenizer, template, questions, answers),
        tokenizer.pad_token_id if pad is None else pad,
    )


def test_special_ids_are_distinct(tokenizer):
    ids = [
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.unk_token_id,
    ]
    assert None not in ids and len(set(ids)) == 4
    check_special_tokens(tokenizer)


def test_prompt_and_padding_are_masked_answer_and_eos_are_labels(tokenizer):
    batch = encoded(tokenizer)
    template = PromptTemplate()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for row, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
        ids, labels, mask = (
            batch[k][row].tolist() for k in ("input_ids", "labels", "attention_mask")
        )
        whole = tokenizer(template.prompt(question) + answer)["input_ids"]
        n_real = sum(mask)
        assert ids[:n_real] == whole + [eos]  # the tokenizer's own encoding (its BOS), EOS once
        n_prompt = next(i for i, y in enumerate(labels) if y != IGNORE_INDEX)
        # "Answer: " + "In": the prompt's space merges into the answer's first token ("ĠIn"),
        # which is a label, and the prompt ends at "Answer:"; where this small vocabulary has
        # no such merge ("Ġ", "D", ...) the space stays a prompt token.
        spaced = " " + answer if row == 0 else answer
        assert tokenizer.decode(ids[1:n_prompt]) + spaced == template.prompt(question) + answer
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # BOS and question
        assert labels[n_prompt:n_real] == ids[n_prompt:n_real]  # answer tokens and EOS
        assert ids[n_real - 1] == eos and ids[:n_real].count(eos) == 1  # one EOS closes the answer
        assert tokenizer.decode(labels[n_prompt : n_real - 1]) == spaced
        assert ids[n_real:] == [pad] * (len(ids) - n_real)  # right padding, masked
        assert labels[n_real:] == [IGNORE_INDEX] * (len(ids) - n_real)
        assert mask == [1] * n_real + [0] * (len(ids) - n_real)
        assert pad not in ids[:n_real]


def test_objectives_score_exactly_the_answer_and_its_eos(tokenizer):
    batch = encoded(tokenizer)
    pos = answer_mask(batch["labels"])  # [B, T-1]: the positions of logits[:, :-1] scored
    for row, answer in enumerate(ANSWERS):
        spaced = " " + answer if row == 0 else answer  # see the test above
        n_answer = len(tokenizer(spaced, add_special_tokens=False)["input_ids"])
        assert int(pos[row].sum()) == n_answer + 1
        scored = batch["input_ids"][row][1:][pos[row]]  # the tokens predicted at those positions
        assert scored.tolist()[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(scored[:-1]) == spaced


def test_padding_with_eos_keeps_every_label(tokenizer):
    # labels come from the encoder, never from input_ids: a pad id equal to EOS masks nothing real
    own, with_eos = encoded(tokenizer), encoded(tokenizer, pad=tokenizer.eos_token_id)
    assert torch.equal(own["labels"], with_eos["labels"])
    assert torch.equal(own["attention_mask"], with_eos["attention_mask"])
    assert int((with_eos["labels"] == tokenizer.eos_token_id).sum()) == len(QUESTIONS)


def test_special_token_strings_in_the_text_do_not_become_pad_or_eos(tokenizer):
    batch = encoded(tokenizer, ["Say <pad> please"], ["It ends with </s> here"])
    real = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert tokenizer.pad_token_id not in real
    assert real.count(tokenizer.eos_token_id) == 1 and real[-1] == tokenizer.eos_token_id
    assert torch.equal(batch["labels"][0][-1:], torch.tensor([tokenizer.eos_token_id]))
