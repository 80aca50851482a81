"""Batched greedy generation: same answers as one at a time; stops at EOS and stop strings."""

from __future__ import annotations

import copy

import pytest
import torch

from tiny_models import TINY_KINDS, tiny_model

from soulcli.data.encode import prompt_ids, unreferenced_prompt
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


# Decoder passes of the one-sequence check that picks the forward (the model's own, then the
# decoder body alone: :func:`soulcli.eval.scoring.forward_for`) before any generation step.
CHECK = 2


def _forcing(model, tokenizer, token_id: int):
    """A copy of the model whose next token is always ``token_id``, counting its decoder
    body's forward passes."""
    forced = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 5.0
    forced.lm_head = head
    calls = []
    forced.model.register_forward_hook(lambda *args: calls.append(1))
    return forced, calls


def test_generation_stops_at_eos(model, tokenizer, template, splits):
    forced, calls = _forcing(model, tokenizer, tokenizer.eos_token_id)
    answers = generate_answers(
        forced, tokenizer, template, _questions(splits)[:4], batch_size=4, max_new_tokens=10
    )
    assert answers == ["", "", "", ""]
    assert len(calls) == CHECK + 1  # the prompts' pass gives EOS everywhere: no further step


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
    assert len(calls) == CHECK + 2
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
    assert len(calls) == CHECK + 10  # the prompts, then 9 steps: the 10th token needs no pass


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


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_batched_greedy_gives_the_tokens_of_hugging_face_generate(kind, tokenizer, template, splits):
    """Left-padded batches (positions counted from each row's first real token), one token a
    step from the KV cache, only the last position through the output layer: the same new
    tokens as ``generate``'s greedy search on each prompt alone, on every architecture
    (rotary and learned absolute positions, sliding windows shorter than the sequences,
    Gemma 2's soft-capped logits, Granite's rescaled ones through the full-logits fallback)."""
    net = tiny_model(kind, tokenizer, window=8)  # Mistral's and Gemma 2's windows shorter than the prompts
    questions = _questions(splits)[::2]
    prompts = [Pair(unreferenced_prompt(template.prompt(q)), "") for q in questions]
    mine = generate_texts(net, tokenizer, prompts, batch_size=4, max_new_tokens=12)
    theirs = []
    for p in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, p.prefix, p.continuation)])
        with torch.no_grad():
            out = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        theirs.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    assert mine == theirs
    assert len(set(mine)) > 1  # the prompts' answers differ: the positions and masks matter


class _TableLM:
    """A stand-in forward whose next token is ``table[current token]`` (``default`` for any
    other), recording each pass's batch size and positions, with a cache that records the
    rows kept."""

    def __init__(self, vocab: int, table: dict[int, int], default: int):
        self.vocab, self.table, self.default = vocab, table, default
        self.widths, self.positions, self.kept = [], [], []
        self.head = None

    def reorder_cache(self, rows):
        self.kept.append(rows.tolist())

    def __call__(self, ids, mask, positions, cache=None, keep_cache=False, last_only=False):
        self.widths.append(ids.shape[0])
        self.positions.append(positions.tolist())
        nxt = torch.tensor([[self.table.get(t, self.default) for t in row] for row in ids.tolist()])
        return torch.nn.functional.one_hot(nxt, self.vocab).float(), self


def test_finished_rows_leave_the_batch(model, tokenizer, monkeypatch):
    """A row that reaches EOS is dropped from the batch and its cache at once; the others go on
    alone, with their own positions, and each answer is what that row generated."""
    from soulcli.eval import generation

    enc = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    eos, ore, ada = tokenizer.eos_token_id, *enc("ore"), enc("Ada")[0]
    prompts = ["Who wrote Hamlet?", "Where is the Eiffel Tower", "Lima"]
    last = [enc(p)[-1] for p in prompts]
    assert len({*last, ada, ore, eos}) == 6
    # row 0 ends at once, row 1 says "Ada" then ends, row 2 says "ore" until the budget
    fake = _TableLM(len(tokenizer), {last[0]: eos, last[1]: ada, ada: eos, last[2]: ore}, ore)
    monkeypatch.setattr(generation, "forward_for", lambda model, probe: (fake, "table"))
    answers = generate_texts(model, tokenizer, [Pair(p, "", eos=False) for p in prompts], batch_size=3,
                             max_new_tokens=5)
    assert answers == ["", "Ada", "ore" * 5]
    # prompts sorted longest first; all three, then rows 1 and 2, then row 2 alone
    lengths = [len(enc(p)) for p in prompts]
    assert fake.widths == [3, 2, 1, 1, 1]
    order = sorted(range(3), key=lambda i: -lengths[i])
    width = max(lengths)
    assert fake.positions[0] == [[max(0, t - (width - lengths[i])) for t in range(width)] for i in order]
    assert fake.positions[1:] == [[[lengths[order[0]]], [lengths[2]]], [[lengths[2] + 1]], [[lengths[2] + 2]],
                                  [[lengths[2] + 3]]]
    assert fake.kept == [[order.index(1), order.index(2)], [1]]
