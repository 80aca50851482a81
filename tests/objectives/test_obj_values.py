"""Each loss against a value computed independently (plain Python floats) on a hand-built case.

The model is a bigram table (``logits[t] = table[token_t]``), so every log-probability is
``log_softmax(table[cur])[next]``, computed here without torch.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from soulcli.errors import UserError
from soulcli.objectives import UnlearnBatch, build_objective

V = 6
FORGET = [([3], [4, 5]), ([4, 4], [3])]
REFUSAL = [([3], [5]), ([4, 4], [4, 3, 5])]
RETAIN = [([5], [3, 4]), ([3, 3, 4], [5])]


@pytest.fixture
def batch(make_qa_batch) -> UnlearnBatch:
    return UnlearnBatch(
        forget=make_qa_batch(FORGET, [0, 1]),
        retain=make_qa_batch(RETAIN, [10, 11]),
        forget_refusal=make_qa_batch(REFUSAL, [0, 1]),
    )


def steps(data) -> list[list[tuple[int, int]]]:
    """Per row, the (current, next) token pairs whose next token is scored: answer and EOS."""
    out = []
    for ids, labels in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        out.append([(ids[t], ids[t + 1]) for t in range(len(ids) - 1) if labels[t + 1] != -100])
    return out


def seq_logps(logp: list[list[float]], data) -> list[float]:
    return [sum(logp[c][n] for c, n in row) for row in steps(data)]


def nll(logp: list[list[float]], data) -> float:
    flat = [step for row in steps(data) for step in row]
    return -sum(logp[c][n] for c, n in flat) / len(flat)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def perturb(model) -> None:
    with torch.no_grad():
        model.table.add_(0.7 * torch.randn(V, V, generator=torch.Generator().manual_seed(5)))


def check(objective, model, batch, expected_total: float, expected_terms: dict[str, float]) -> None:
    out = objective(model, batch)
    loss, logs = out.loss, out.terms
    assert loss.item() == pytest.approx(expected_total, rel=1e-5, abs=1e-6)
    for key, value in expected_terms.items():
        assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_ga_is_minus_forget_nll(make_bigram, batch):
    model = make_bigram(V)
    lp = model.logp()
    f = nll(lp, batch.forget)
    check(build_objective("ga", forget_weight=2.0), model, batch, -2 * f, {"forget_loss": -f})
    logs = build_objective("ga")(model, batch).terms
    assert "retain_loss" not in logs


def test_graddiff_adds_weighted_retain_nll(make_bigram, batch):
    model = make_bigram(V)
    lp = model.logp()
    f, r = nll(lp, batch.forget), nll(lp, batch.retain)
    objective = build_objective("graddiff", forget_weight=2.0, retain_weight=0.5)
    check(objective, model, batch, -2 * f + 0.5 * r, {"forget_loss": -f, "retain_loss": r})


def test_npo_matches_its_formula_after_the_model_moved(make_bigram, batch):
    model = make_bigram(V)
    s_ref = seq_logps(model.logp(), batch.forget)
    beta = 0.5
    objective = build_objective("npo", beta=beta, retain_weight=0.25)
    objective.setup(model, [batch], None, "k")
    perturb(model)
    lp = model.logp()
    s = seq_logps(lp, batch.forget)
    terms = [log_sigmoid(-beta * (a - b)) for a, b in zip(s, s_ref)]
    forget, r = -(2 / beta) * sum(terms) / len(terms), nll(lp, batch.retain)
    check(objective, model, batch, forget + 0.25 * r, {"forget_loss": forget, "retain_loss": r})


def test_npo_starts_at_two_over_beta_log_two(make_bigram, batch):
    model = make_bigram(V)
    objective = build_objective("npo", beta=0.1, retain_weight=0.0)
    objective.setup(model, [batch], None, "k")
    out = objective(model, batch)
    loss, logs = out.loss, out.terms
    assert loss.item() == pytest.approx(20 * math.log(2), rel=1e-6)
    assert logs["npo_weight"] == pytest.approx(1.0)


def test_simnpo_uses_length_normalised_likelihood_without_reference(make_bigram, batch):
    model = make_bigram(V)
    lp = model.logp()
    beta, delta = 2.5, -0.3
    objective = build_objective("simnpo", beta=beta, delta=delta, retain_weight=0.0)
    assert not objective.needs_setup
    lengths = [len(row) for row in steps(batch.forget)]
    assert lengths == [3, 2]  # answer tokens and EOS
    s = seq_logps(lp, batch.forget)
    terms = [log_sigmoid(-beta * (a / n - delta)) for a, n in zip(s, lengths)]
    check(objective, model, batch, -(2 / beta) * sum(terms) / len(terms), {})


def test_po_is_the_refusal_nll(make_bigram, batch):
    model = make_bigram(V)
    lp = model.logp()
    f, r = nll(lp, batch.forget_refusal), nll(lp, batch.retain)
    check(build_objective("po", retain_weight=2.0), model, batch, f + 2 * r, {"forget_loss": f})


@pytest.mark.parametrize("name", ["dpo", "idkdpo"])
def test_dpo_prefers_the_refusal_over_the_true_answer(make_bigram, batch, name):
    model = make_bigram(V)
    ref = model.logp()
    beta = 0.3
    objective = build_objective(name, beta=beta, retain_weight=0.0)
    objective.setup(model, [batch], None, "k")
    perturb(model)
    lp = model.logp()
    win = [
        a - b
        for a, b in zip(seq_logps(lp, batch.forget_refusal), seq_logps(ref, batch.forget_refusal))
    ]
    lose = [a - b for a, b in zip(seq_logps(lp, batch.forget), seq_logps(ref, batch.forget))]
    terms = [log_sigmoid(beta * (w - l)) for w, l in zip(win, lose)]
    check(objective, model, batch, -sum(terms) / len(terms), {})


def kl_by_hand(ref: list[list[float]], lp: list[list[float]], data, top_k: int) -> float:
    """Mean over answer positions of KL(p_ref || p), coarsened to top-k + rest if top_k."""
    values = []
    for cur, _ in (step for row in steps(data) for step in row):
        p, q = [math.exp(v) for v in ref[cur]], [math.exp(v) for v in lp[cur]]
        keep = sorted(range(V), key=lambda v: -p[v])[: top_k or V]
        kl = sum(p[v] * math.log(p[v] / q[v]) for v in keep)
        if len(keep) < V:
            rest_p, rest_q = 1 - sum(p[v] for v in keep), 1 - sum(q[v] for v in keep)
            kl += rest_p * math.log(rest_p / rest_q)
        values.append(kl)
    return sum(values) / len(values)


@pytest.mark.parametrize("top_k", [0, 2])
def test_kl_objective_is_a_true_kl_over_retain_answers(make_bigram, batch, top_k):
    model = make_bigram(V)
    ref = model.logp()
    objective = build_objective("kl", forget_weight=0.5, retain_weight=3.0, kl_top_k=top_k)
    objective.setup(model, [batch], None, "k")
    logs0 = objective(model, batch).terms
    assert logs0["retain_loss"] == pytest.approx(0.0, abs=1e-6)
    perturb(model)
    lp = model.logp()
    kl = kl_by_hand(ref, lp, batch.retain, top_k)
    assert kl > 0.01
    check(objective, model, batch, -0.5 * nll(lp, batch.forget) + 3.0 * kl, {"retain_loss": kl})
    if top_k:  # the coarsened KL never exceeds the full one
        assert kl < kl_by_hand(ref, lp, batch.retain, 0)


def test_graddiff_with_kl_retain_equals_the_kl_objective(make_bigram, batch):
    model = make_bigram(V)
    a = build_objective("graddiff", retain_loss="kl", kl_top_k=3)
    b = build_objective("kl", kl_top_k=3)
    for objective in (a, b):
        objective.setup(model, [batch], None, "k")
    perturb(model)
    assert a(model, batch).loss.item() == pytest.approx(b(model, batch).loss.item(), rel=1e-6)


def test_rmu_matches_hidden_states_by_hand(make_llama, make_qa_batch):
    model = make_llama(seed=3)
    start = copy.deepcopy(model)
    forget = make_qa_batch([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])], [0, 1])
    retain = make_qa_batch([([20, 21], [22]), ([23, 24, 25, 26], [27, 28])], [10, 11])
    data = UnlearnBatch(forget=forget, retain=retain)
    c, alpha = 4.0, 2.0
    objective = build_objective("rmu", layer=0, steering_coeff=c, seed=7, retain_weight=alpha)
    objective.setup(model, [data], None, "k")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.layers[0].mlp.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))

    u = torch.rand(32, generator=torch.Generator().manual_seed(7)).double()
    u = (u / u.norm()).tolist()

    def hidden(m, d):  # output of decoder layer 0, from HF's own hidden_states
        out = m(
            input_ids=d["input_ids"], attention_mask=d["attention_mask"], output_hidden_states=True
        )
        return out.hidden_states[1].double().tolist()

    def by_hand(h, labels, target):
        per_seq = []
        for row, lab in enumerate(labels.tolist()):
            ts = [t for t in range(len(lab) - 1) if lab[t + 1] != -100]
            errs = [sum((a - b) ** 2 for a, b in zip(h[row][t], target(row, t))) / 32 for t in ts]
            per_seq.append(sum(errs) / len(errs))
        return sum(per_seq) / len(per_seq)

    with torch.no_grad():
        f = by_hand(hidden(model, forget), forget["labels"], lambda r, t: [c * x for x in u])
        h_start = hidden(start, retain)
        r = by_hand(hidden(model, retain), retain["labels"], lambda row, t: h_start[row][t])
    assert r > 1e-4
    check(objective, model, data, f + alpha * r, {"forget_loss": f, "retain_loss": r})


def test_rmu_layer_beyond_the_model_is_a_user_error(make_llama, make_batches):
    with pytest.raises(UserError, match="layer must be < 2"):
        build_objective("rmu", layer=2).setup(make_llama(), make_batches(1), None, "k")


@pytest.mark.parametrize(
    ("name", "kwargs", "has_logits"),
    [
        ("graddiff", {}, [True, True]),
        ("ga", {}, [True]),  # no retain term: the forget batch only
        ("po", {}, [False, True]),  # forwards the refusals, not the forget answers
        ("rmu", {"layer": 0}, [False, False]),  # reads hidden states, computes no logits
    ],
)
def test_the_output_lists_the_trained_batches_with_the_logits_computed(
    make_llama, make_batches, name, kwargs, has_logits
):
    model, batch = make_llama(), make_batches(1)[0]
    objective = build_objective(name, **kwargs)
    objective.setup(model, [batch], None, "k")
    out = objective(model, batch)
    trained = [batch.forget, batch.retain][: len(has_logits)]
    assert [data for data, _ in out.logits] == trained
    assert [logits is not None for _, logits in out.logits] == has_logits
    for data, logits in out.logits:
        if logits is not None:  # the very logits of the loss's graph, at the current parameters
            assert logits.requires_grad and logits.shape[:2] == data["input_ids"].shape
            expected = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
            torch.testing.assert_close(logits, expected)
