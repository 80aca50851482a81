"""AdaHessian: hand-computed steps, Hessian power, block averaging."""

from __future__ import annotations

import pytest
import torch

from soulcli.errors import UserError
from soulcli.optim import AdaHessian
from soulcli.optim.adahessian import block_average


def one_step(hessian_power: float = 1.0):
    """D = (2, -4) then g = (1, 2), betas (0.5, 0.5), lr 0.1, eps 1e-4.

    v = 0.5 D^2 = (2, 8); v_hat = v / (1 - 0.5) = (4, 16); m_hat = (0.5 g) / 0.5 = g.
    """
    p = torch.nn.Parameter(torch.ones(2))
    opt = AdaHessian([p], lr=0.1, betas=(0.5, 0.5), eps=1e-4, hessian_power=hessian_power)
    opt.update_hessian(diagonal=[torch.tensor([2.0, -4.0])])
    p.grad = torch.tensor([1.0, 2.0])
    opt.step()
    return p, opt


def test_bias_corrected_step_by_hand():
    p, opt = one_step()
    torch.testing.assert_close(opt.state[p]["exp_hessian_diag_sq"], torch.tensor([2.0, 8.0]))
    expected = 1 - 0.1 * torch.tensor([1 / (2 + 1e-4), 2 / (4 + 1e-4)])
    torch.testing.assert_close(p.detach(), expected)


def test_hessian_power_takes_a_root_of_the_denominator():
    p, _ = one_step(hessian_power=0.5)
    # v_hat ** (0.5 / 2) = (4 ** 0.25, 16 ** 0.25) = (sqrt 2, 2)
    expected = 1 - 0.1 * torch.tensor([1 / (2 ** 0.5 + 1e-4), 2 / (2 + 1e-4)])
    torch.testing.assert_close(p.detach(), expected)


def test_block_averaging_over_the_last_dimension():
    d = torch.tensor([[1.0, -3.0, 2.0, 2.0], [0.0, -4.0, 5.0, 1.0]])
    torch.testing.assert_close(block_average(d, 2),
                               torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0]]))
    assert torch.equal(block_average(d, 3), d.abs()), "3 does not divide 4: plain |D|"
    p = torch.nn.Parameter(torch.zeros(2, 4))
    opt = AdaHessian([p], betas=(0.9, 0.5), block_size=2)
    opt.update_hessian(diagonal=[d])
    torch.testing.assert_close(opt.state[p]["exp_hessian_diag_sq"], 0.5 * block_average(d, 2) ** 2)


def test_squared_gradients_count_as_a_bs_scaled_diagonal():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = AdaHessian([p], betas=(0.9, 0.5))
    p.grad = torch.tensor([1.0, -2.0])
    opt.update_hessian(bs=3)  # D = 3 g^2 = (3, 12)
    torch.testing.assert_close(opt.state[p]["exp_hessian_diag_sq"], torch.tensor([4.5, 72.0]))


def test_stepping_before_any_curvature_is_a_user_error():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = AdaHessian([p])
    p.grad = torch.ones(2)
    with pytest.raises(UserError, match="before any curvature update"):
        opt.step()
