"""Curvature estimators: expectations against exact curvature, and how they touch the model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from soulcli.errors import UserError
from soulcli.optim import SophiaG, SophiaH, build_curvature, hutchinson_diagonal
from soulcli.optim.curvature import answer_logits

ROWS = [[0, 1, 2, 3, 4], [2, 4, 1, 1]]


def exact_fisher_diagonal(model, batch, params):
    """(1/n) sum_i sum_y p_i(y) (d log p_i(y) / d theta)^2: every label enumerated."""
    logp = torch.log_softmax(answer_logits(model, batch), -1)
    n, vocab = logp.shape
    total = [torch.zeros_like(p) for p in params]
    for i in range(n):
        for y in range(vocab):
            grads = torch.autograd.grad(logp[i, y], params, retain_graph=True)
            for t, g in zip(total, grads):
                t.add_(logp[i, y].exp().detach() * g * g)
    return torch.cat([t.reshape(-1) for t in total]) / n


def test_gnb_mean_matches_the_fisher_diagonal_of_a_softmax_model(tiny):
    torch.manual_seed(0)
    model, batch = tiny.LM(), tiny.batch(ROWS)
    params = list(model.parameters())
    fisher = exact_fisher_diagonal(model, batch, params)
    gnb = build_curvature("gnb", seed=3)
    draws = 3000
    samples = []
    for _ in range(draws):
        grads, count = gnb.sample(model, batch, params)
        assert count == 7  # answer tokens: 4 + 3 (the first token of each row is the prompt)
        samples.append(count * torch.cat([g.reshape(-1) for g in grads]) ** 2)
    samples = torch.stack(samples)
    mean, stderr = samples.mean(0), samples.std(0) / math.sqrt(draws)
    # each entry within 5 standard errors of its expectation, and the whole vector within 5%
    assert bool((mean - fisher).abs().le(5 * stderr + 1e-6).all())
    assert float((mean - fisher).norm() / fisher.norm()) < 0.05


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
        self.b1 = torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(2, 4, generator=g, dtype=torch.float64))
        self.b2 = torch.nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def loss(self, flat=None):
        w1, b1, w2, b2 = (flat.split([12, 4, 8, 2]) if flat is not None else
                          [t.reshape(-1) for t in self.parameters()])
        x = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(8, 3)
        y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
        hidden = torch.tanh(x @ w1.reshape(4, 3).T + b1)
        return F.cross_entropy(hidden @ w2.reshape(2, 4).T + b2, y)


def test_hutchinson_mean_matches_the_exact_hessian_diagonal_of_an_mlp():
    mlp = MLP()
    params = list(mlp.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    hessian = torch.autograd.functional.hessian(mlp.loss, flat)
    exact = hessian.diagonal()
    draws = 4000
    grads = torch.autograd.grad(mlp.loss(), params, create_graph=True)
    estimate = torch.cat([d.reshape(-1) for d in hutchinson_diagonal(
        list(grads), params, draws, torch.Generator().manual_seed(1))])
    # Var[u_i (H u)_i] = sum_{j != i} H_ij^2: allow 5 standard errors
    stderr = ((hessian.square().sum(1) - exact.square()) / draws).sqrt()
    assert bool((estimate.double() - exact).abs().le(5 * stderr + 1e-9).all())
    assert float((estimate.double() - exact).norm() / exact.norm()) < 0.05


def test_estimators_leave_gradients_alone_and_keep_no_graph(tiny):
    model, batch = tiny.LM(), tiny.batch(ROWS)
    opt = SophiaH(model.parameters(), bs=1)  # takes both sample forms
    marker = torch.full_like(model.head, 7.0)
    model.head.grad = marker.clone()
    for kind in ("gnb", "hutchinson"):
        est = build_curvature(kind)
        diag = est.estimate(model, [(batch, None)], opt)
        assert isinstance(diag, dict)
        assert est.after_backward([(batch, None)], opt) == {}
        assert model.embed.grad is None and model.bias.grad is None
        assert torch.equal(model.head.grad, marker)
    assert opt.param_groups[0]["hessian_step"] == 2
    for p in model.parameters():
        h = opt.state[p]["hessian"]
        assert h.grad_fn is None and not h.requires_grad
        assert float(opt.hessian(p).abs().sum()) > 0
    estimate = build_curvature("hutchinson").sample(model, batch, list(model.parameters()))
    assert all(e.grad_fn is None and not e.requires_grad for e in estimate)


def test_gnb_records_the_answer_token_count_as_bs(tiny):
    model, batch = tiny.LM(), tiny.batch(ROWS)
    opt = SophiaG(model.parameters())
    est = build_curvature("gnb")
    assert est.estimate(model, [(batch, None)], opt) == {"curvature_tokens": 7.0}
    assert opt.param_groups[0]["bs"] == 7
    assert opt.param_groups[0]["hessian_step"] == 1
    prompts_only = tiny.batch([[0, 1]], prompt=2)
    assert est.estimate(model, [(prompts_only, None)], opt) == {}, "no answer token: no sample"
    assert opt.param_groups[0]["hessian_step"] == 1
    assert est.after_backward([(batch, None)], opt) == {}, "nothing after the backward"
    assert opt.param_groups[0]["hessian_step"] == 1


def test_empirical_fisher_squares_the_objective_gradient_every_step(tiny):
    model, batch = tiny.LM(), tiny.batch(ROWS)
    opt = SophiaG(model.parameters(), betas=(0.9, 0.5))
    est = build_curvature("empirical_fisher")
    parts = [(tiny.batch(ROWS[:1]), None), (tiny.batch(ROWS[1:]), None)]  # 4 + 3 answer tokens
    for step in range(2):
        assert est.estimate(model, parts, opt) == {}
        assert opt.param_groups[0]["hessian_step"] == step, "nothing before the backward"
        grads = [torch.full_like(p, 2.0) for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        est.after_backward(parts, opt)
    # two updates with g^2 = 4: h = 0.5 * (0.5 * 4) + 0.5 * 4 = 3
    torch.testing.assert_close(opt.hessian(model.head), torch.full_like(model.head, 3.0))
    assert opt.param_groups[0]["bs"] == 7
    assert torch.equal(model.head.grad, grads[1]), "the true gradient is left for the step"


def test_estimator_state_round_trip_repeats_the_draws(tiny):
    model, batch = tiny.LM(), tiny.batch(ROWS)
    params = list(model.parameters())
    first = build_curvature("gnb", seed=5)
    first.sample(model, batch, params)
    saved = first.state_dict()
    again = build_curvature("gnb", seed=0)
    again.load_state_dict(saved)
    a, _ = first.sample(model, batch, params)
    b, _ = again.sample(model, batch, params)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_unknown_estimators_and_options_are_user_errors():
    with pytest.raises(UserError, match="unknown curvature estimator 'hutchinsn'.*did you mean "
                                        "'hutchinson'.*empirical_fisher, gnb, hutchinson"):
        build_curvature("hutchinsn")
    with pytest.raises(UserError, match="n_sample: unknown key of curvature estimator 'hutchinson' "
                                        r"\(did you mean 'n_samples'\?\)"):
        build_curvature("hutchinson", n_sample=2)
    with pytest.raises(UserError, match="n_samples: must be >= 1, got 0"):
        build_curvature("hutchinson", n_samples=0)
    with pytest.raises(UserError, match="bs: must be >= 1, got 0"):
        build_curvature("empirical_fisher", bs=0)


def test_gnb_from_shared_logits_is_the_same_draw_as_a_separate_forward(tiny):
    """Logits the objective computed are reused; a part without them is forwarded; the sample
    equals the one a separate forward on the concatenated batch draws with the same seed."""
    from soulcli.data.encode import forward_logits
    from soulcli.optim.curvature import concat_batches

    model = tiny.LM()
    params = list(model.parameters())
    first, second = tiny.batch(ROWS), tiny.batch([[1, 3, 3, 0], [4, 2]])
    separate, count = build_curvature("gnb", seed=9).sample(
        model, concat_batches([first, second]), params)
    logits = forward_logits(model, first)
    shared, shared_count = build_curvature("gnb", seed=9).sample_parts(
        model, [(first, logits), (second, None)], params)
    assert count == shared_count == 7 + 4
    for a, b in zip(separate, shared):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the objective's graph survives the curvature sample: its own backward still runs
    logits.sum().backward()
    assert model.head.grad is not None


def test_concat_batches_right_pads_every_field():
    from soulcli.optim.curvature import concat_batches

    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]]),
         "labels": torch.tensor([[-100, 6, 7]]), "index": torch.tensor([3])}
    b = {"input_ids": torch.tensor([[8]]), "attention_mask": torch.tensor([[1]]),
         "labels": torch.tensor([[-100]])}
    out = concat_batches([a, b])
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]


def test_hutchinson_estimates_on_the_concatenated_parts(tiny):
    """Hutchinson's estimate from several parts is its sample on their concatenation."""
    from soulcli.optim.curvature import concat_batches

    model = tiny.LM()
    parts = [(tiny.batch(ROWS), None), (tiny.batch([[1, 3, 3, 0], [4, 2]]), None)]
    opt = SophiaH(model.parameters(), betas=(0.9, 0.0), bs=1)  # h = the last sample
    assert build_curvature("hutchinson", seed=2).estimate(model, parts, opt) == {}
    expected = build_curvature("hutchinson", seed=2).sample(
        model, concat_batches([d for d, _ in parts]), list(model.parameters()))
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(opt.hessian(p), e)


def test_the_step_takes_gnb_from_the_objectives_forward(tiny):
    """engine.loop.train on GNB steps: the objective's two forwards serve the curvature too (no
    third forward), and the Hessian EMA and parameters match the path where the estimator
    forwards the parts itself (to float rounding)."""
    from dataclasses import replace

    from rich.console import Console

    from soulcli.engine.loop import Training, train
    from soulcli.engine.progress import Reporter
    from soulcli.objectives import UnlearnBatch, build_objective

    batch = UnlearnBatch(forget=tiny.batch(ROWS), retain=tiny.batch([[1, 3, 3, 0], [4, 2]]))
    objective = build_objective("graddiff")
    results = {}
    for mode in ("shared", "separate"):
        model = tiny.LM()
        calls = []
        forward = model.forward
        model.forward = lambda **kw: (calls.append(1), forward(**kw))[1]  # type: ignore[method-assign]
        opt = SophiaG(model.parameters(), lr=0.01, rho=1.0)

        def step_forward(m, b):
            out = objective(m, b)
            assert [data for data, _ in out.logits] == [b.forget, b.retain]
            assert all(logits is not None for _, logits in out.logits)
            return out if mode == "shared" else replace(out, logits=[(d, None) for d, _ in out.logits])

        run = Training(model, opt, step_forward, curvature=build_curvature("gnb", seed=4),
                       hessian_interval=2)
        result = train(run, [batch] * 3, 3, Reporter(Console(quiet=True), quiet=True), "t")
        assert [row.get("curvature_tokens") for row in result.rows] == [11.0, None, 11.0]
        results[mode] = (len(calls), [opt.hessian(p) for p in model.parameters()],
                         [p.detach().clone() for p in model.parameters()])
    # 3 steps x 2 objective forwards, plus two curvature forwards on steps 0 and 2 when separate
    assert results["shared"][0] == 6 and results["separate"][0] == 10
    for a, b in zip(results["shared"][1] + results["shared"][2],
                    results["separate"][1] + results["separate"][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_categorical_sampling_matches_the_softmax():
    """Inverse-transform draws: frequencies within 5 standard errors of the probabilities,
    including a near-zero and a dominant class; every label in range."""
    from soulcli.optim.curvature import sample_categorical

    logits = torch.tensor([[0.0, 1.0, 2.0, -9.0], [5.0, 0.0, 0.0, 0.0]]).repeat(20000, 1)
    draws = sample_categorical(logits, torch.Generator().manual_seed(0))
    assert draws.shape == (40000,) and int(draws.min()) >= 0 and int(draws.max()) <= 3
    n = 20000
    for row in range(2):
        probs = torch.softmax(logits[row].double(), -1)
        freq = torch.bincount(draws[row::2], minlength=4).double() / n
        stderr = (probs * (1 - probs) / n).sqrt()
        assert bool(((freq - probs).abs() <= 5 * stderr + 1e-4).all()), (freq, probs)
