"""Batched greedy generation: same answers as one at a time; stops at EOS and stop strings."""

from __future__ import annotations

import copy

import pytest
import torch

from soulcli.data.encode import unreferenced_prompt
from soulcli.data.template import PromptTemplate
from soulcli.eval.generation import cut_at_stop, generate_texts
from soulcli.eval.scoring import Pair


def generate_answers(model, tokenizer, template: PromptTemplate, questions, **kw) -> list[str]:
    """Greedy answers to questions under a template: prompts and stop strings from it."""
    return generate_texts(model, tokenizer, [Pair(unreferenced_prompt(template.prompt(q)), "") for q in questions],
                          stop_strings=template.stop_strings, **kw)


def _questions(splits) -> list[str]:
    return [row["question"] for rows in splits.values() for row in rows]


def test_batched_generation_equals_one_at_a_time(model, tokenizer, template, splits):
    questions = _questions(splits)[::2]  # every split, prompts of different lengths
    batched = generate_answers(
        model, tokenizer, template, questions, batch_size=4, max_new_tokens=10
    )
    single = generate_answers(
        model, tokenizer, template, questions, batch_size=1, max_new_tokens=10
    )
    assert batched == single
    assert any(batched)


def _forcing(model, tokenizer, token_id: int):
    """A copy of the model whose next token is always ``token_id``, counting forward calls."""
    forced = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 5.0
    forced.lm_head = head
    calls = []
    forced.register_forward_hook(lambda *args: calls.append(1))
    return forced, calls


def test_generation_stops_at_eos(model, tokenizer, template, splits):
    forced, calls = _forcing(model, tokenizer, tokenizer.eos_token_id)
    answers = generate_answers(
        forced, tokenizer, template, _questions(splits)[:4], batch_size=4, max_new_tokens=10
    )
    assert answers == ["", "", "", ""]
    assert len(calls) == 1  # the first token is EOS: no further step


def test_generation_stops_at_a_stop_string_and_cuts_before_it(model, tokenizer, splits):
    token = tokenizer.convert_tokens_to_ids("ore")
    forced, calls = _forcing(model, tokenizer, token)
    questions = _questions(splits)[:3]
    stopped = generate_answers(
        forced,
        tokenizer,
        PromptTemplate(stop_strings=("reo",)),
        questions,
        batch_size=3,
        max_new_tokens=10,
    )
    assert stopped == ["o", "o", "o"]  # "oreore" contains "reo" after two tokens
    assert len(calls) == 2
    calls.clear()
    unstopped = generate_answers(
        forced,
        tokenizer,
        PromptTemplate(stop_strings=()),
        questions,
        batch_size=3,
        max_new_tokens=10,
    )
    assert unstopped == ["ore" * 10] * 3  # max_new_tokens bounds it
    assert len(calls) == 10


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        ("Paris.\nQuestion: next", ("\nQuestion:",), "Paris."),
        ("abc", ("x",), "abc"),
        ("a STOP b END c", ("END", "STOP"), "a "),
        ("abc", ("",), "abc"),
    ],
)
def test_cut_at_stop(text, stops, expected):
    assert cut_at_stop(text, stops) == expected


def test_generation_is_greedy_whatever_the_model_defaults_say(model, tokenizer, template, splits):
    sampling = copy.deepcopy(model)
    sampling.generation_config.do_sample = True
    sampling.generation_config.temperature = 2.0
    questions = _questions(splits)[:4]
    expected = generate_answers(model, tokenizer, template, questions, max_new_tokens=6)
    assert generate_answers(sampling, tokenizer, template, questions, max_new_tokens=6) == expected
