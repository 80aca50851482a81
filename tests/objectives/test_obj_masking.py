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
from soulcli.errors import UserError
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


def encoded(tokenizer, questions=QUESTIONS, answers=ANSWERS):
    template = PromptTemplate()
    return pad_batch(
        encode_qa_batch(tokenizer, template, questions, answers), tokenizer.pad_token_id
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
        n_prompt = 1 + len(
            tokenizer(template.prompt(question), add_special_tokens=False)["input_ids"]
        )
        n_real = sum(mask)
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids[1:n_prompt]) == template.prompt(question)
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # BOS and question
        assert labels[n_prompt:n_real] == ids[n_prompt:n_real]  # answer tokens and EOS
        assert ids[n_real - 1] == eos and ids[:n_real].count(eos) == 1  # one EOS closes the answer
        assert tokenizer.decode(labels[n_prompt : n_real - 1]) == answer
        assert ids[n_real:] == [pad] * (len(ids) - n_real)  # right padding, masked
        assert labels[n_real:] == [IGNORE_INDEX] * (len(ids) - n_real)
        assert mask == [1] * n_real + [0] * (len(ids) - n_real)
        assert pad not in ids[:n_real]


def test_objectives_score_exactly_the_answer_and_its_eos(tokenizer):
    batch = encoded(tokenizer)
    pos = answer_mask(batch["labels"])  # [B, T-1]: the positions of logits[:, :-1] scored
    for row, answer in enumerate(ANSWERS):
        n_answer = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert int(pos[row].sum()) == n_answer + 1
        scored = batch["input_ids"][row][1:][pos[row]]  # the tokens predicted at those positions
        assert scored.tolist()[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(scored[:-1]) == answer


def test_a_tokenizer_padding_with_eos_is_refused(tokenizer):
    clone = train_tokenizer(CORPUS, vocab_size=300)
    clone.pad_token = clone.eos_token
    with pytest.raises(UserError, match="pad token"):
        check_special_tokens(clone)


def test_special_token_strings_in_the_text_do_not_become_pad_or_eos(tokenizer):
    batch = encoded(tokenizer, ["Say <pad> please"], ["It ends with </s> here"])
    real = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert tokenizer.pad_token_id not in real
    assert real.count(tokenizer.eos_token_id) == 1 and real[-1] == tokenizer.eos_token_id
    assert torch.equal(batch["labels"][0][-1:], torch.tensor([tokenizer.eos_token_id]))
