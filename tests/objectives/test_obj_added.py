"""UNDIAL, AltPO, SatImp, WGA, CE-U and PDU: each against its formula computed by hand (plain
Python floats on a bigram table, as in test_obj_values), and one step's direction on a tiny
Llama that has memorised its forget answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from soulcli.errors import UserError
from soulcli.objectives import UnlearnBatch, build_objective

V = 6
FORGET = [([3], [4, 5]), ([4, 4], [3])]
ALTERNATE = [([3], [5, 5]), ([4, 4], [4, 3, 3])]
RETAIN = [([5], [3, 4]), ([3, 3, 4], [5])]
ADDED = ["undial", "altpo", "satimp", "wga", "ceu", "pdu"]


@pytest.fixture
def batch(make_qa_batch) -> UnlearnBatch:
    return UnlearnBatch(
        forget=make_qa_batch(FORGET, [0, 1]),
        retain=make_qa_batch(RETAIN, [10, 11]),
        forget_alternate=make_qa_batch(ALTERNATE, [0, 1]),
    )


def steps(data) -> list[list[tuple[int, int]]]:
    """Per row, the (current, next) token pairs whose next token is scored: answer and EOS."""
    out = []
    for ids, labels in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        out.append([(ids[t], ids[t + 1]) for t in range(len(ids) - 1) if labels[t + 1] != -100])
    return out


def flat(data) -> list[tuple[int, int]]:
    return [step for row in steps(data) for step in row]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def nll(logp, data) -> float:
    return -mean([logp[c][n] for c, n in flat(data)])


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def perturb(model) -> None:
    with torch.no_grad():
        model.table.add_(0.7 * torch.randn(V, V, generator=torch.Generator().manual_seed(5)))


def check(objective, model, batch, total: float, terms: dict[str, float]) -> dict[str, float]:
    out = objective(model, batch)
    loss, logs = out.loss, out.terms
    assert loss.item() == pytest.approx(total, rel=1e-5, abs=1e-6)
    for key, value in terms.items():
        assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    return logs


def test_wga_weights_each_token_by_its_likelihood(make_bigram, batch):
    model = make_bigram(V)
    lp, beta = model.logp(), 0.7
    f = mean([math.exp(lp[c][n]) ** beta * lp[c][n] for c, n in flat(batch.forget)])
    objective = build_objective("wga", beta=beta, retain_weight=0.5)
    check(objective, model, batch, f + 0.5 * nll(lp, batch.retain), {"forget_loss": f})


def test_satimp_weights_by_saturation_and_importance(make_bigram, batch):
    model = make_bigram(V)
    lp, b1, b2 = model.logp(), 2.0, 1.5
    terms = []
    for c, n in flat(batch.forget):
        p = math.exp(lp[c][n])
        terms.append(p**b1 * (1 - p) ** b2 * lp[c][n])
    objective = build_objective("satimp", beta1=b1, beta2=b2, retain_weight=0.0)
    check(objective, model, batch, mean(terms), {"forget_loss": mean(terms)})


def test_satimp_without_importance_is_wga(make_bigram, batch):
    model = make_bigram(V)
    a = build_objective("satimp", beta1=1.3, beta2=0.0)(model, batch).loss
    assert a.item() == pytest.approx(build_objective("wga", beta=1.3)(model, batch).loss.item())


@pytest.mark.parametrize("skip", [0, 1, 2])
def test_ceu_is_cross_entropy_to_the_distribution_without_the_true_token(make_bigram, batch, skip):
    model = make_bigram(V)
    lp = model.logp()
    ces, p_true = [], []
    for row in steps(batch.forget):
        for c, n in row[skip:]:
            others = [math.exp(lp[c][v]) for v in range(V) if v != n]
            q = [math.exp(lp[c][v]) / sum(others) if v != n else 0.0 for v in range(V)]
            ces.append(-sum(q[v] * lp[c][v] for v in range(V)))
            p_true.append(math.exp(lp[c][n]))
    assert len(ces) == [5, 3, 1][skip]  # the rows score 3 and 2 tokens
    objective = build_objective("ceu", ignore_first_n_answer_tokens=skip, retain_weight=0.0)
    f = mean(ces)
    check(objective, model, batch, f, {"forget_loss": f, "true_token_prob": mean(p_true)})


def test_undial_distils_the_start_with_the_true_logit_lowered(make_bigram, batch):
    model = make_bigram(V)
    ref, beta = model.logp(), 3.0
    objective = build_objective("undial", beta=beta, kl_top_k=0, retain_weight=2.0)
    objective.setup(model, [batch], None, "k")
    perturb(model)
    lp = model.logp()
    kls, ces, entropies = [], [], []
    for c, n in flat(batch.forget):
        z = [ref[c][v] - (beta if v == n else 0.0) for v in range(V)]
        top = max(z)
        lse = top + math.log(sum(math.exp(x - top) for x in z))
        q = [math.exp(x - lse) for x in z]
        kls.append(sum(q[v] * (math.log(q[v]) - lp[c][v]) for v in range(V)))
        ces.append(-sum(q[v] * lp[c][v] for v in range(V)))  # open-unlearning's value
        entropies.append(-sum(q[v] * math.log(q[v]) for v in range(V)))
    f = mean(kls)
    assert f == pytest.approx(mean(ces) - mean(entropies))
    r = nll(lp, batch.retain)
    check(objective, model, batch, f + 2.0 * r, {"forget_loss": f, "retain_loss": r})


def test_undial_target_depends_on_beta_through_the_cache_meta(make_bigram, batch, tmp_path):
    model = make_bigram(V)
    for beta in (1.0, 5.0):
        objective = build_objective("undial", beta=beta, kl_top_k=0, retain_weight=0.0)
        objective.setup(model, [batch], tmp_path, "k")
        assert objective.reference_computed == 2  # a cache written for another beta is not used


def test_altpo_prefers_the_alternate_with_two_over_beta_scaling(make_bigram, batch):
    model = make_bigram(V)
    ref, beta = model.logp(), 0.3
    objective = build_objective("altpo", beta=beta, retain_weight=0.0)
    objective.setup(model, [batch], None, "k")
    perturb(model)
    lp = model.logp()

    def seq(logp, data):
        return [sum(logp[c][n] for c, n in row) for row in steps(data)]

    alt = [a - b for a, b in zip(seq(lp, batch.forget_alternate), seq(ref, batch.forget_alternate))]
    true = [a - b for a, b in zip(seq(lp, batch.forget), seq(ref, batch.forget))]
    f = -(2 / beta) * mean([log_sigmoid(beta * (w - l)) for w, l in zip(alt, true)])
    check(objective, model, batch, f, {"reward_margin": beta * mean([w - l for w, l in zip(alt, true)])})


def test_altpo_needs_the_alternate_batch(make_bigram, batch):
    with pytest.raises(ValueError, match="forget_alternate"):
        build_objective("altpo")(make_bigram(V), UnlearnBatch(forget=batch.forget, retain=batch.retain))


def test_pdu_is_the_lagrangian_and_moves_its_dual_variable(make_bigram, batch):
    model = make_bigram(V)
    table = model.table.detach().double().tolist()
    lp = model.logp()
    f = mean([(max(table[c]) - mean(table[c])) ** 2 for c, _ in flat(batch.forget)])
    r, eps, eta, lam = nll(lp, batch.retain), 1.0, 0.5, 2.0
    objective = build_objective(
        "pdu", retain_weight=lam, retain_loss_eps=eps, dual_step_size=eta, forget_weight=0.3
    )
    terms = {"forget_loss": f, "retain_loss": r - eps, "dual": lam}
    check(objective, model, batch, 0.3 * f + lam * (r - eps), terms)
    lam = max(0.0, lam + eta * (r - eps))
    assert objective.retain_weight == pytest.approx(lam)
    with torch.no_grad():  # not a training step: the dual stays
        check(objective, model, batch, 0.3 * f + lam * (r - eps), {"dual": lam})
    assert objective.retain_weight == pytest.approx(lam)


def test_pdu_dual_shrinks_to_zero_under_the_bound_and_waits_for_warmup(make_bigram, batch):
    model = make_bigram(V)
    objective = build_objective("pdu", retain_weight=1.0, retain_loss_eps=50.0, dual_warmup_steps=2)
    duals = [objective(model, batch).terms["dual"] for _ in range(4)]
    assert duals[:3] == [1.0, 1.0, 1.0] and duals[3] == 0.0  # slack r - 50 < -1 at step 3


def test_pdu_needs_a_positive_starting_dual():
    with pytest.raises(UserError, match="retain_weight must be > 0"):
        build_objective("pdu", retain_weight=0.0)


# -- direction -------------------------------------------------------------------------------


def summed_logp(model, data) -> torch.Tensor:
    """S per sequence by log_softmax and gather here (not the objectives' path)."""
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    target = data["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target.clamp_min(0)[..., None])
    return (logp.squeeze(-1) * (target != -100)).sum(-1)


@pytest.fixture
def memorised(make_llama, make_batches):
    """A tiny Llama trained on its forget answers until they are likely (p(y|x) 0.5 to 0.75),
    and that batch."""
    model, (batch,) = make_llama(), make_batches(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        loss = -summed_logp(model, batch.forget).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, batch


def one_step(start, batch, name: str, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Change of S(forget) and S(alternate) per item after one SGD step on ``sign * loss``."""
    model = copy.deepcopy(start)
    # pdu needs a retain term (its dual variable); a tiny one keeps the forget term in charge
    objective = build_objective(name, retain_weight=1e-3 if name == "pdu" else 0.0)
    objective.setup(model, [batch], None, "k")
    with torch.no_grad():
        before = [summed_logp(model, d) for d in (batch.forget, batch.forget_alternate)]
    (sign * objective(model, batch).loss).backward()
    lr = {"altpo": 1e-3, "pdu": 1e-4}.get(name, 0.05)  # their losses are 20x and ~100x larger
    torch.optim.SGD(model.parameters(), lr=lr).step()
    with torch.no_grad():
        after = [summed_logp(model, d) for d in (batch.forget, batch.forget_alternate)]
    return after[0] - before[0], after[1] - before[1]


@pytest.mark.parametrize("name", ADDED)
def test_one_step_lowers_the_forget_answers_likelihood(memorised, name):
    """And the step on the negated loss raises it: the direction comes from the loss."""
    model, batch = memorised
    with torch.no_grad():
        p = summed_logp(model, batch.forget).exp()
    assert float(p.min()) > 0.5
    for sign in (1.0, -1.0):
        forget, alternate = one_step(model, batch, name, sign)
        assert sign * float(forget.sum()) < 0
        if name == "altpo":  # DPO moves the margin: the alternate up, the true answer down overall
            assert sign * float(alternate.sum()) > 0
        else:
            assert bool((sign * forget < 0).all()), forget.tolist()


def test_a_pdu_step_lowers_the_lagrangian_at_the_dual_it_used(make_llama, make_batches):
    model, (batch,) = make_llama(), make_batches(1)
    lam = 0.5
    objective = build_objective("pdu", retain_weight=lam, retain_loss_eps=1.0)

    def lagrangian() -> float:
        with torch.no_grad():
            out = objective(model, batch)
            _, logs = out.loss, out.terms
        return logs["forget_loss"] + lam * logs["retain_loss"]

    before = lagrangian()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    objective(model, batch).loss.backward()
    optimizer.step()
    assert objective.retain_weight != lam  # the dual moved after the step
    assert lagrangian() < before
