"""Batched teacher-forced scoring equals per-item scoring and an independent forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from soulcli.errors import UserError
from soulcli.eval.scoring import Pair, length_order, score_pairs


def _pairs(splits) -> list[tuple[str, str]]:
    pairs = []
    for rows in splits.values():
        for row in rows:
            pairs.append((row["question"], row["answer"]))
            pairs += [(row["question"], a) for a in row.get("perturbed_answer", [])]
    return pairs


def _qa(template, pairs) -> list[Pair]:
    return [Pair(template.prompt(q), a) for q, a in pairs]


def test_batched_scores_equal_per_item_scores(model, tokenizer, template, splits):
    pairs = _pairs(splits)
    flags = [i % 2 == 0 for i in range(len(pairs))]
    batched = score_pairs(model, tokenizer, _qa(template, pairs), batch_size=6, with_stats=flags)
    single = score_pairs(model, tokenizer, _qa(template, pairs), batch_size=1, with_stats=flags)
    assert len({len(s.logprobs) for s in batched}) > 3  # lengths vary: batches are padded
    for b, s, flag in zip(batched, single, flags):
        np.testing.assert_allclose(b.logprobs, s.logprobs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(b.hits, s.hits)
        assert b.nll == pytest.approx(s.nll, abs=1e-5)
        if flag:
            np.testing.assert_allclose(b.mu, s.mu, atol=1e-5, rtol=0)
            np.testing.assert_allclose(b.sigma, s.sigma, atol=1e-5, rtol=0)
        else:
            assert b.mu is None and b.sigma is None


def test_scores_match_an_independent_forward_pass(
    model, tokenizer, template, splits, score_by_hand
):
    pairs = _pairs(splits)[:12]
    scored = score_pairs(
        model, tokenizer, _qa(template, pairs), batch_size=5, with_stats=[True] * len(pairs)
    )
    for (question, answer), got in zip(pairs, scored):
        logprobs, hits, mu, sigma = score_by_hand(model, question, answer)
        np.testing.assert_allclose(got.logprobs, logprobs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(got.hits, hits)
        np.testing.assert_allclose(got.mu, mu, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.sigma, sigma, atol=1e-5, rtol=0)
        assert got.nll == pytest.approx(-logprobs.mean(), abs=1e-5)


def test_length_order_is_longest_first_and_stable():
    assert length_order([3, 7, 3, 9, 7]) == [3, 1, 4, 0, 2]


def test_scoring_restores_model_mode(model, tokenizer, template):
    model.train()
    score_pairs(model, tokenizer, _qa(template, [("Who wrote Emma?", "Jane Austen")]))
    assert model.training
    model.eval()


def test_padding_with_eos_scores_exactly_as_a_distinct_pad(model, tokenizer, template):
    # labels come from the encoder and padding from attention_mask: pad == EOS changes nothing
    tok = type(tokenizer)(
        tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>", pad_token="</s>"
    )
    pairs = _qa(template, [("q", "a"), ("Who wrote Emma, the novel?", "Jane Austen wrote it")])
    own, eos = score_pairs(model, tokenizer, pairs), score_pairs(model, tok, pairs)
    for a, b in zip(own, eos):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
        assert len(a.logprobs) == len(b.logprobs) and list(a.hits) == list(b.hits)


def test_a_raw_text_is_scored_from_its_first_token_without_eos(model, tokenizer, score_by_hand):
    """An empty prefix and eos=False (MUSE's PrivLeak sequences): the text as the tokenizer
    encodes it, every token that has a predecessor scored, no EOS; equal to scoring the text as
    an 'answer' to an empty prompt minus that answer's closing EOS. This tokenizer adds no BOS
    (GPT-2's does not either), so the first token is context only."""
    text = "Ada Quill writes mystery, mostly set in Lisbon."
    (raw,) = score_pairs(model, tokenizer, [Pair("", text, eos=False)])
    (closed,) = score_pairs(model, tokenizer, [Pair("", text)])
    n = len(tokenizer(text)["input_ids"])
    assert tokenizer(text)["input_ids"][0] != tokenizer.bos_token_id
    assert len(raw.logprobs) == n - 1 and len(closed.logprobs) == n
    np.testing.assert_allclose(raw.logprobs, closed.logprobs[:-1], atol=1e-5, rtol=0)
