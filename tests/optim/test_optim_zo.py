"""zo (MeZO): the two-point estimate on hand-built losses, its seeding and its clipping."""

from __future__ import annotations

import pytest
import torch

from soulcli.optim import build_optimizer
from soulcli.optim.zo import step_seed
from soulcli.recipe import build_recipe
from soulcli.workflows.unlearn import build_optimizer_for


def direction(seed: int, step: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """The z of step ``step`` (counted from 1), drawn as the optimizer documents it."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    return [torch.randn(shape, generator=gen) for shape in shapes]


def test_a_step_on_a_linear_loss_is_minus_lr_times_c_dot_z_times_z():
    # L(theta) = <c, theta> + <c2, theta2>: the two-point estimate is exact on a linear loss
    # (up to the fp32 rounding of the losses, divided by 2 eps)
    torch.manual_seed(0)
    theta, theta2 = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    c, c2 = torch.randn(3, 2), torch.randn(4)
    start = [theta.detach().clone(), theta2.detach().clone()]
    opt = build_optimizer("zo", [theta, theta2], lr=0.1, eps=1e-2, seed=5, diagnostics_every=1)
    opt.step(lambda: (c * theta).sum() + (c2 * theta2).sum())
    z, z2 = direction(5, 1, (3, 2), (4,))
    g = float((c * z).sum() + (c2 * z2).sum())
    torch.testing.assert_close(theta.detach(), start[0] - 0.1 * g * z, atol=2e-5, rtol=0)
    torch.testing.assert_close(theta2.detach(), start[1] - 0.1 * g * z2, atol=2e-5, rtol=0)
    diag = opt.diagnostics()
    assert diag["projected_grad"] == pytest.approx(g, abs=2e-4)
    assert theta.grad is None and theta2.grad is None  # no backward


def test_the_estimate_restores_the_parameters_and_gives_the_mean_loss():
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = build_optimizer("zo", [theta], lr=0.1, eps=1e-3)
    calls = []

    def loss():
        calls.append(theta.detach().clone())
        return 0.5 * theta.square().sum()

    mean, norm = opt.estimate(loss)
    (z,) = direction(0, 1, (3,))
    torch.testing.assert_close(calls[0], torch.tensor([1.0, -2.0, 0.5]) + 1e-3 * z)
    torch.testing.assert_close(calls[1], torch.tensor([1.0, -2.0, 0.5]) - 1e-3 * z)
    torch.testing.assert_close(theta.detach(), torch.tensor([1.0, -2.0, 0.5]), atol=1e-6, rtol=0)
    # quadratic: (l+ + l-) / 2 = L(theta) + eps^2 |z|^2 / 2, g = <theta, z> exactly
    assert float(mean) == pytest.approx(2.625 + 0.5e-6 * float(z.square().sum()), rel=1e-6)
    g = float(torch.tensor([1.0, -2.0, 0.5]) @ z)
    assert norm == pytest.approx(abs(g) * float(z.norm()), rel=1e-3)


def test_the_estimate_is_unbiased_for_the_gradient():
    # E[(z . grad) z] = grad for z ~ N(0, I): the mean over 4000 seeds is within 4 standard errors
    grad = torch.tensor([1.0, -0.5, 2.0, 0.0])
    estimates = []
    for seed in range(4000):
        theta = torch.nn.Parameter(torch.zeros(4))
        opt = build_optimizer("zo", [theta], lr=1.0, eps=1e-3, seed=seed)
        opt.step(lambda: (grad * theta).sum())
        estimates.append(-theta.detach())
    est = torch.stack(estimates)
    stderr = est.std(0) / 4000**0.5
    assert ((est.mean(0) - grad).abs() < 4 * stderr + 1e-3).all(), (est.mean(0), stderr)


def test_step_seeds_are_32_bit_and_distinct():
    assert step_seed(0, 1) == 1 and step_seed(1, 0) == 0x9E3779B1
    seeds = {step_seed(s, t) for s in range(50) for t in range(1, 200)}
    assert len(seeds) == 50 * 199 and max(seeds) < 2**32


def test_directions_change_with_the_step_and_the_seed():
    def moves(seed: int, steps: int) -> list[torch.Tensor]:
        theta = torch.nn.Parameter(torch.zeros(5))
        opt = build_optimizer("zo", [theta], lr=1.0, seed=seed)
        out = []
        for _ in range(steps):
            before = theta.detach().clone()
            opt.step(lambda: theta.sum())
            out.append(theta.detach() - before)
        return out

    a, b, c = moves(1, 2), moves(1, 2), moves(2, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0] / a[0].norm(), a[1] / a[1].norm(), atol=1e-3)
    assert not torch.allclose(a[0], c[0], atol=1e-3)


def test_clipping_scales_the_estimate_to_the_max_norm():
    theta = torch.nn.Parameter(torch.zeros(6))
    opt = build_optimizer("zo", [theta], lr=1.0)
    _, norm = opt.estimate(lambda: (torch.arange(6.0) * theta).sum() * 100)
    assert norm > 1
    opt.clip_estimate(0.5)
    opt.step()
    assert float(theta.detach().norm()) == pytest.approx(0.5, rel=1e-5)


def test_a_step_without_an_estimate_is_refused():
    opt = build_optimizer("zo", [torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    with pytest.raises(RuntimeError, match="two-point estimate"):
        opt.step()


@pytest.mark.parametrize("args, want", [({}, 7), ({"seed": 3}, 3)])
def test_the_engine_passes_the_run_seed_unless_the_recipe_sets_one(args, want):
    recipe = build_recipe({"seed": 7, "optimizer": {"name": "zo", "args": args}})
    opt, curvature = build_optimizer_for(recipe, torch.nn.Linear(2, 2))
    assert curvature is None and opt.param_groups[0]["seed"] == want


def test_a_curvature_for_an_optimizer_without_one_is_a_recipe_error():
    with pytest.raises(Exception, match="optimizer.curvature: zo takes no curvature estimate"):
        build_recipe({"optimizer": {"name": "zo", "curvature": "gnb"}})
