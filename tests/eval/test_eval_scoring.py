"""Batched teacher-forced scoring equals per-item scoring and an independent forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import tiny_model

from soulcli.data.encode import EncodedItem, encode_pair
from soulcli.errors import UserError
from soulcli.eval.scoring import Pair, TokenScores, length_order, position_scores, prefix_order, score_pairs


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
    batched = score_pairs(model, tokenizer, _qa(template, pairs), batch_size=6, with_stats=flags).scores
    single = score_pairs(model, tokenizer, _qa(template, pairs), batch_size=1, with_stats=flags).scores
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
    ).scores
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
    own, eos = score_pairs(model, tokenizer, pairs).scores, score_pairs(model, tok, pairs).scores
    for a, b in zip(own, eos):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
        assert len(a.logprobs) == len(b.logprobs) and list(a.hits) == list(b.hits)


def test_a_raw_text_is_scored_from_its_first_token_without_eos(model, tokenizer, score_by_hand):
    """An empty prefix and eos=False (MUSE's PrivLeak sequences): the text as the tokenizer
    encodes it, every token that has a predecessor scored, no EOS; equal to scoring the text as
    an 'answer' to an empty prompt minus that answer's closing EOS. This tokenizer adds no BOS
    (GPT-2's does not either), so the first token is context only."""
    text = "Ada Quill writes mystery, mostly set in Lisbon."
    (raw,) = score_pairs(model, tokenizer, [Pair("", text, eos=False)]).scores
    (closed,) = score_pairs(model, tokenizer, [Pair("", text)]).scores
    n = len(tokenizer(text)["input_ids"])
    assert tokenizer(text)["input_ids"][0] != tokenizer.bos_token_id
    assert len(raw.logprobs) == n - 1 and len(closed.logprobs) == n
    np.testing.assert_allclose(raw.logprobs, closed.logprobs[:-1], atol=1e-5, rtol=0)


def _reference_scores(logits: np.ndarray, labels: np.ndarray, stats: list[bool]):
    """Each answer position of ``[B, T, V]`` logits scored on its own, float64 numpy: the
    straightforward computation the chunked one must equal."""
    lp, hits, mu, sigma = [], [], [], []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = labels[b, t + 1]
            if y == -100:
                continue
            row = logits[b, t].astype(np.float64)
            logp = row - row.max() - np.log(np.exp(row - row.max()).sum())
            lp.append(logp[y])
            hits.append(row.argmax() == y)
            p = np.exp(logp)
            m = (p * logp).sum()
            mu.append(m if stats[b] else 0.0)
            sigma.append(np.sqrt(max((p * (logp - m) ** 2).sum(), 1e-6)) if stats[b] else 1.0)
    return np.array(lp), np.array(hits), np.array(mu), np.array(sigma)


def test_chunked_position_scores_equal_a_direct_computation():
    """Random logits at vocabulary 50, prefix and padding positions masked, statistics for two
    of three rows; every chunk size (one position per chunk up to all at once) gives the
    reference values, and the chunk sizes agree with each other exactly, as does a head (the
    identity output layer) applied per chunk."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen) * 3
    logits[1, 3] = 0.0
    logits[1, 3, 5] = 40.0  # near one-hot: the variance floor 1e-6 applies, sigma = 1e-3
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    labels[1, 4] = 5
    labels[0, :3] = labels[1, :2] = labels[2, :4] = -100  # BOS + prompt
    labels[2, 6] = -100  # padding
    stats = [True, True, False]
    want = _reference_scores(logits.numpy(), labels.numpy(), stats)
    rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    flat = logits.flatten(0, 1)
    index, targets = rows * 7 + cols, labels[rows, cols + 1]
    per_position = torch.tensor(stats)[rows]
    runs = [position_scores(flat, index, targets, per_position, chunk_elements=c) for c in (1, 120, 10**9)]
    weight = torch.eye(50)  # a head: the identity output layer, fed the logits as hidden states
    runs.append(position_scores(flat, index, targets, per_position, lambda h: h @ weight, 50, 120))
    for lp, hits, mu, sigma in runs:
        np.testing.assert_allclose(lp.double().numpy(), want[0], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(hits.numpy(), want[1])
        np.testing.assert_allclose(mu.numpy(), want[2], atol=1e-9, rtol=0)
        np.testing.assert_allclose(sigma.numpy(), want[3], atol=1e-9, rtol=0)
        for got, first in zip((lp, hits, mu, sigma), runs[0]):
            assert torch.equal(got, first)
    assert len(want[0]) == 4 + 5 + 2
    assert runs[0][3][4 + 2].item() == pytest.approx(1e-3)  # labels[1, 4]: the one-hot row


def test_an_appended_eos_is_marked_and_left_out_of_content(model, tokenizer, template):
    """A QA answer ends in its EOS (content: all but it); a raw text has none; an answer cut by
    max_length has lost its EOS, so every token is its own. (This tokenizer adds no BOS, so a
    raw text's first token has nothing before it and is not scored.)"""
    qa, raw = Pair(template.prompt("Who wrote Emma?"), "Jane Austen"), Pair("", "Jane Austen", eos=False)
    closed, text = score_pairs(model, tokenizer, [qa, raw]).scores
    n = len(tokenizer("Jane Austen", add_special_tokens=False)["input_ids"])
    assert closed.eos and len(closed.logprobs) == n + 1 and closed.content == slice(0, n)
    assert not text.eos and len(text.logprobs) == n - 1 and text.content == slice(0, n - 1)
    assert not closed.truncated and not text.truncated
    prompt = len(tokenizer(template.prompt("Who wrote Emma?"), add_special_tokens=False)["input_ids"])
    (cut,) = score_pairs(model, tokenizer, [qa], max_length=prompt + n).scores
    assert cut.truncated and not cut.eos and len(cut.logprobs) == n and cut.content == slice(0, n)
    only_eos = TokenScores(np.zeros(1), np.zeros(1, bool), eos=True)
    assert only_eos.content == slice(0, 1)  # nothing but the EOS: kept, so the item has a value


def _candidates(template, splits) -> list[Pair]:
    """Every TOFU-style candidate: each question with its answer, paraphrased and perturbed
    answers (one prompt, several continuations), the paraphrased question with the answer (a
    prompt of its own), and a raw text with no prompt."""
    pairs = []
    for rows in splits.values():
        for row in rows:
            prompt = template.prompt(row["question"])
            pairs += [Pair(prompt, a) for a in (row["answer"], row.get("paraphrased_answer", "x"),
                                                 *row.get("perturbed_answer", []))]
            if "paraphrased_question" in row:
                pairs.append(Pair(template.prompt(row["paraphrased_question"]), row["answer"]))
    return pairs + [Pair("", "Ada Quill writes mystery, mostly set in Lisbon.", eos=False)]


def _assert_same(a, b, flags, tol):
    for x, y, flag in zip(a.scores, b.scores, flags):
        assert len(x.logprobs) == len(y.logprobs)
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=tol, rtol=0)
        np.testing.assert_array_equal(x.hits, y.hits)
        if flag:
            np.testing.assert_allclose(x.mu, y.mu, atol=tol, rtol=0)
            np.testing.assert_allclose(x.sigma, y.sigma, atol=tol, rtol=0)


def _assert_own_logits(net, tokenizer, pair: Pair, scored: TokenScores) -> None:
    """``scored`` is the answer's log-probabilities under the model's own forward (its logits
    of the unpadded sequence, log-softmax in float64)."""
    with torch.no_grad():
        ids = torch.tensor([encode_pair(tokenizer, pair.prefix, pair.continuation).input_ids])
        logits = net(input_ids=ids).logits[0, :-1].double()
    n = len(scored.logprobs)
    want = torch.log_softmax(logits[-n:], -1).gather(1, ids[0, -n:, None])[:, 0]
    np.testing.assert_allclose(scored.logprobs, want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "lora", "gpt2", "gemma2"])
def test_shared_prefixes_score_as_whole_sequences(kind, model, tokenizer, template, splits):
    """Each prompt once per batch, its KV cache shared by its candidates, only the answer
    positions through the output layer: the values of pushing every whole sequence through
    (``share_prefixes=False``) within float32 rounding, on a Llama, a LoRA-wrapped Llama, GPT-2
    and a Gemma 2 with its logits soft-capped at 2 (so the cap changes every logit); fewer
    tokens pushed: a prompt pass a batch, then its candidates in passes of similar lengths."""
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng():
            torch.manual_seed(1)
            net = get_peft_model(tiny_model("llama", tokenizer), LoraConfig(
                r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False))
    else:
        net = model if kind == "llama" else tiny_model(kind, tokenizer)
    pairs = _candidates(template, splits)
    flags = [i % 3 == 0 for i in range(len(pairs))]
    shared = score_pairs(net, tokenizer, pairs, batch_size=8, with_stats=flags)
    whole = score_pairs(net, tokenizer, pairs, batch_size=8, with_stats=flags, share_prefixes=False)
    assert shared.logits == whole.logits == "answer positions"
    _assert_same(shared, whole, flags, 1e-5)
    assert whole.passes == -(-len(pairs) // 8) and whole.passes < shared.passes <= whole.passes + len(pairs)
    assert shared.tokens < 0.65 * whole.tokens  # 1,798 vs 2,840 on the Llama
    _assert_own_logits(net, tokenizer, pairs[0], shared.scores[0])


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
def test_a_sliding_window_shorter_than_the_sequences_scores_whole_sequences(kind, tokenizer, template, splits):
    """A sliding-window layer's cache keeps only the last ``window`` columns of a padded prefix
    pass: with a window of 8 tokens (shorter than every pair) nothing is shared, one pass a
    batch, and the values are the model's own."""
    net = tiny_model(kind, tokenizer, window=8)
    pairs = _candidates(template, splits)[:24]
    shared = score_pairs(net, tokenizer, pairs, batch_size=8)
    whole = score_pairs(net, tokenizer, pairs, batch_size=8, share_prefixes=False)
    assert shared.passes == whole.passes == 3 and shared.tokens == whole.tokens
    _assert_same(shared, whole, [False] * len(pairs), 0.0)
    _assert_own_logits(net, tokenizer, pairs[0], shared.scores[0])


def test_no_full_vocabulary_logits_exist(model, tokenizer, template, splits, monkeypatch):
    """The output layer sees the answer positions in chunks of at most ``CHUNK_ELEMENTS //
    vocab`` rows, never a ``[batch, length]`` block (but for the one-sequence check)."""
    from soulcli.eval import scoring

    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", 40 * len(tokenizer))
    shapes = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        scored = score_pairs(model, tokenizer, _candidates(template, splits), batch_size=8)
    finally:
        hook.remove()
    assert len(shapes[0]) == 3 and shapes[0][0] == 1 and shapes[1][0] == 1  # the check: one sequence
    chunks = shapes[2:]
    assert all(len(s) == 2 and s[0] <= 40 for s in chunks)
    assert sum(s[0] for s in chunks) == sum(len(s.logprobs) for s in scored.scores)


def test_a_head_that_rescales_its_logits_falls_back_to_full_logits(tokenizer, template, splits):
    """Granite divides its logits by ``logits_scaling`` after the output layer: the one-sequence
    check sees the difference, scoring uses the model's full logits and says so, and the values
    are the model's own."""
    net = tiny_model("granite", tokenizer)
    pairs = _candidates(template, splits)[:20]
    shared = score_pairs(net, tokenizer, pairs, batch_size=8)
    assert shared.logits.startswith("full: the output layer alone does not give the model's logits")
    whole = score_pairs(net, tokenizer, pairs, batch_size=8, share_prefixes=False)
    _assert_same(shared, whole, [False] * len(pairs), 1e-5)
    _assert_own_logits(net, tokenizer, pairs[0], shared.scores[0])


def test_prefix_order_keeps_a_prompts_candidates_together():
    items = [EncodedItem([1, 2, 9], [-100, -100, 9]), EncodedItem([1, 3, 9, 9, 9], [-100, -100, 9, 9, 9]),
             EncodedItem([1, 2, 8, 8], [-100, -100, 8, 8]), EncodedItem([1, 3, 7], [-100, -100, 7])]
    assert prefix_order(items, [2, 2, 2, 2]) == [1, 3, 2, 0]
    assert prefix_order(items, [len(it.input_ids) for it in items]) == [1, 2, 0, 3]


def test_tail_passes_minimise_positions_plus_a_cost_per_pass():
    """Hand-built lengths: the split of the rows sorted longest first that minimises padded
    positions + pass_cost per pass, checked against every split by brute force."""
    import itertools

    from soulcli.eval.scoring import tail_passes

    assert tail_passes([10, 10, 10], pass_cost=5) == [[0, 1, 2]]  # no padding: one pass
    assert tail_passes([100, 2, 3, 0], pass_cost=5) == [[0], [2, 1]]  # 100 + 5 + 6 + 5 = 116 < 300 + 5
    assert tail_passes([100, 2, 3], pass_cost=200) == [[0, 2, 1]]  # a pass dearer than the padding
    assert tail_passes([0, 0]) == [] and tail_passes([]) == []
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(0, 60, size=int(rng.integers(1, 9))).tolist()
        rows = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])

        def cost(parts):
            return sum(lengths[p[0]] * len(p) + 16 for p in parts)

        best = min((cost([rows[a:b] for a, b in zip((0, *cuts), (*cuts, len(rows)))])
                    for k in range(len(rows)) for cuts in itertools.combinations(range(1, len(rows)), k)),
                   default=0)
        got = tail_passes(lengths, pass_cost=16)
        assert sorted(r for p in got for r in p) == sorted(rows) and cost(got) == best


def test_batches_keep_a_key_run_together_unless_it_is_longer_than_a_batch():
    from soulcli.eval.scoring import batches

    keys = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "c", "d"]
    seen = []
    got = list(batches(list(range(11)), 4, "s", lambda stage, done, n: seen.append(done), keys))
    # a (3) fits; b (2) would make 5: new batch; c (5) is longer than 4: 4 + 1, d joins its tail
    assert got == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10]]
    assert seen == [0, 3, 5, 9, 11]
    assert list(batches(list(range(5)), 2, "s", None)) == [[0, 1], [2, 3], [4]]  # no keys: plain chunks
