"""Influence unlearning: exact on ridge regression, each inverse against its closed form."""

from __future__ import annotations

import pytest
import torch

from soulcli.errors import UserError
from soulcli.optim import influence_unlearn
from soulcli.optim.curvature import lm_true_loss
from soulcli.optim.influence import (
    influence_step_dense,
    influence_step_diag,
    influence_step_woodbury,
    lissa,
)

F64 = torch.float64


def ridge_minimiser(x, y, ridge):
    return torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=F64), x.T @ y)


def test_one_step_with_exact_retain_curvature_lands_on_the_retrained_ridge_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=F64)
    y = x @ torch.randn(5, generator=g, dtype=F64) + 0.3 * torch.randn(40, generator=g, dtype=F64)
    ridge = 0.7
    forget, retain = slice(0, 8), slice(8, 40)
    # L(theta) = sum_i 0.5 (x_i theta - y_i)^2 + 0.5 ridge |theta|^2
    full = ridge_minimiser(x, y, ridge)
    retrained = ridge_minimiser(x[retain], y[retain], ridge)
    grad_forget = x[forget].T @ (x[forget] @ full - y[forget])
    hessian_retain = x[retain].T @ x[retain]
    unlearned = full + influence_step_dense(hessian_retain, grad_forget, damping=ridge)
    assert float((unlearned - retrained).abs().max()) < 1e-5
    assert float((full - retrained).abs().max()) > 1e-2, "the forget set mattered"


def test_diagonal_inverse_is_the_dense_inverse_of_a_diagonal():
    g = torch.Generator().manual_seed(1)
    h, v = torch.rand(6, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    torch.testing.assert_close(influence_step_diag(h, v, 0.1),
                               influence_step_dense(torch.diag(h), v, 0.1), rtol=1e-12, atol=0)


def test_woodbury_inverse_is_the_damped_empirical_fisher_inverse():
    g = torch.Generator().manual_seed(2)
    grads = torch.randn(6, 10, generator=g, dtype=F64)  # fewer samples than parameters
    v = torch.randn(10, generator=g, dtype=F64)
    fisher = grads.T @ grads / 6
    torch.testing.assert_close(influence_step_woodbury(grads, v, 0.05),
                               influence_step_dense(fisher, v, 0.05), rtol=1e-10, atol=1e-12)


def test_lissa_is_its_truncated_neumann_series_and_converges():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 5, generator=g, dtype=F64)
    hessian = a @ a.T / 5
    v = torch.randn(5, generator=g, dtype=F64)
    damping, scale, steps = 0.1, 8.0, 12
    shrink = torch.eye(5, dtype=F64) - (hessian + damping * torch.eye(5, dtype=F64)) / scale
    series = sum(torch.linalg.matrix_power(shrink, k) @ v for k in range(steps + 1)) / scale
    torch.testing.assert_close(lissa(lambda x: hessian @ x, v, damping, steps, scale), series,
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lissa(lambda x: hessian @ x, v, damping, 2000, scale),
                               influence_step_dense(hessian, v, damping), rtol=1e-8, atol=1e-10)


# -- the model-level entry point on a tiny language model --------------------------------
FORGET = [[0, 3, 3, 4], [1, 2, 2]]
RETAIN = [[2, 0, 1, 4, 4], [3, 1, 0], [4, 4, 2, 1]]


def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def frozen_embedding_model(tiny):
    model = tiny.LM(dtype=F64)
    model.embed.requires_grad_(False)  # like a LoRA base weight: must not move
    return model, [model.head, model.bias]


def test_model_level_woodbury_step_matches_its_closed_form(tiny):
    model, params = frozen_embedding_model(tiny)
    forget, retain = [tiny.batch(FORGET)], [tiny.batch(RETAIN[:2]), tiny.batch(RETAIN[2:])]
    grad_forget = flat_grad(lm_true_loss(model, forget[0]), params)
    rows = [flat_grad(lm_true_loss(model, {k: v[i:i + 1] for k, v in b.items()}), params)
            for b in retain for i in range(b["input_ids"].shape[0])]
    expected = torch.cat([p.detach().reshape(-1) for p in params]) + 0.5 * influence_step_woodbury(
        torch.stack(rows), grad_forget, 0.2)
    embed = model.embed.detach().clone()
    diag = influence_unlearn(model, forget, retain, method="woodbury", damping=0.2, scale=0.5)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in params]), expected,
                               rtol=1e-10, atol=1e-12)
    assert torch.equal(model.embed, embed)
    assert diag["retain_samples"] == 3.0
    assert diag["forget_loss_after"] > diag["forget_loss_before"]


class Functional(torch.nn.Module):
    """``model`` with its head and bias taken from a flat vector (for autograd.functional)."""

    def __init__(self, model, vector):
        super().__init__()
        head, bias = vector.split([model.head.numel(), model.bias.numel()])
        self.model, self.values = model, {"head": head.view_as(model.head), "bias": bias}

    def forward(self, input_ids, attention_mask):
        return torch.func.functional_call(self.model, self.values, (input_ids, attention_mask))


def test_model_level_lissa_uses_the_retain_hessian(tiny):
    model, params = frozen_embedding_model(tiny)
    forget, retain = [tiny.batch(FORGET)], [tiny.batch(RETAIN)]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    hessian = torch.autograd.functional.hessian(
        lambda v: lm_true_loss(Functional(model, v), retain[0]), flat)
    grad_forget = flat_grad(lm_true_loss(model, forget[0]), params)
    expected = flat + lissa(lambda v: hessian @ v, grad_forget, 0.1, 30, 4.0)
    influence_unlearn(model, forget, retain, method="lissa", damping=0.1, lissa_steps=30,
                      lissa_scale=4.0)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in params]), expected,
                               rtol=1e-9, atol=1e-11)


def test_model_level_diag_fisher_raises_the_forget_loss_and_leaves_frozen_weights(tiny):
    model, _ = frozen_embedding_model(tiny)
    embed = model.embed.detach().clone()
    diag = influence_unlearn(model, [tiny.batch(FORGET)], [tiny.batch(RETAIN)],
                             method="diag_fisher", damping=0.05, fisher_samples=4)
    assert torch.equal(model.embed, embed)
    assert diag["forget_loss_after"] > diag["forget_loss_before"]
    assert diag["step_norm"] > 0 and diag["curvature_mean"] > 0
    assert model.training, "the model's mode is restored"


def test_bad_influence_settings_are_user_errors(tiny):
    model = tiny.LM()
    batches = [tiny.batch(FORGET)]
    with pytest.raises(UserError, match="unknown influence method 'woodbery'.*did you mean "
                                        "'woodbury'.*diag_fisher, lissa, woodbury"):
        influence_unlearn(model, batches, batches, method="woodbery", damping=0.1)
    with pytest.raises(UserError, match="damping must be > 0"):
        influence_unlearn(model, batches, batches, damping=0.0)
