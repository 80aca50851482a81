"""First-order baselines: torch's numbers where torch has the optimizer, hand cases otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from soulcli.optim import SGD, AdamW, Lion, Muon, Signum
from soulcli.optim.muon import lr_factor, newton_schulz


def twin_runs(ours, theirs, shapes, steps=8):
    """Drive two optimizers over copies of the same parameters with the same gradients."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a, opt_b = ours(a), theirs(b)
    for _ in range(steps):
        for p, q in zip(a, b):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    return a, b


def test_adamw_matches_torch_adamw(monkeypatch):
    # the plain rule, not torch's kernel: equal to fp32 rounding
    monkeypatch.setenv("SOUL_FUSED_ADAMW", "0")
    a, b = twin_runs(lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1),
                     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, foreach=False),
                     [(5, 3), (7,)])
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_adamw_fused_path_is_torchs_fused_kernel_and_agrees_with_the_rule(monkeypatch):
    """On fp32 CPU parameters the step runs torch's fused kernel on our fp32 state: bit-equal
    to torch.optim.AdamW(fused=True); the rule (diagnostic steps, bf16) agrees to rounding."""
    fused, theirs = twin_runs(lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1, diagnostics_every=0),
                              lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, fused=True),
                              [(5, 3), (7,)], steps=12)
    for p, q in zip(fused, theirs):
        assert torch.equal(p, q)
    monkeypatch.setenv("SOUL_FUSED_ADAMW", "0")
    rule, _ = twin_runs(lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1, diagnostics_every=0),
                        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, fused=True),
                        [(5, 3), (7,)], steps=12)
    for p, q in zip(rule, fused):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_adamw_first_step_by_hand():
    # t = 1: m_hat = g and v_hat = g^2, so d = g / (|g| + eps) = sign(g) up to eps
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5, eps=1e-8)
    p.grad = torch.tensor([2.0, -0.5, 0.0])
    opt.step()
    d = torch.tensor([2 / (2 + 1e-8), -0.5 / (0.5 + 1e-8), 0.0])
    torch.testing.assert_close(p.detach(), 0.95 - 0.1 * d)


def test_sgd_without_decay_matches_torch_sgd_with_momentum():
    a, b = twin_runs(lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                foreach=False), [(5, 3), (7,)])
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_sgd_weight_decay_is_decoupled():
    p = torch.nn.Parameter(torch.ones(2))
    opt = SGD([p], lr=0.1, weight_decay=0.5, momentum=0.9)
    for g in ([1.0, -2.0], [1.0, 1.0]):
        p.grad = torch.tensor(g)
        opt.step()
    # b1 = g1 = (1, -2); p1 = 0.95 - 0.1 b1 = (0.85, 1.15)
    # b2 = 0.9 b1 + g2 = (1.9, -0.8); p2 = 0.95 p1 - 0.1 b2
    torch.testing.assert_close(p.detach(), torch.tensor([0.95 * 0.85 - 0.19, 0.95 * 1.15 + 0.08]))


def test_signum_and_lion_steps_by_hand():
    p = torch.nn.Parameter(torch.zeros(3))
    signum = Signum([p], lr=0.1, momentum=0.9, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -2.0, 0.0])
    signum.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, 0.0]))

    q = torch.nn.Parameter(torch.ones(3))
    lion = Lion([q], lr=0.1, betas=(0.9, 0.5), weight_decay=0.5)
    q.grad = torch.tensor([1.0, -2.0, 0.0])
    lion.step()  # u = sign(0.1 g); q = 0.95 q - 0.1 u; m = 0.5 g
    torch.testing.assert_close(q.detach(), torch.tensor([0.85, 1.05, 0.95]))
    q.grad = torch.tensor([-1.0, -1.0, 4.0])
    lion.step()  # u = sign(0.9 m + 0.1 g) = sign(0.35, -1.0, 0.4)
    torch.testing.assert_close(q.detach(), torch.tensor([0.85 * 0.95 - 0.1, 1.05 * 0.95 + 0.1,
                                                         0.95 * 0.95 - 0.1]))
    torch.testing.assert_close(lion.state[q]["exp_avg"], torch.tensor([-0.25, -1.0, 2.0]))


def test_update_norm_is_the_step_without_weight_decay_by_hand():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Signum([p], lr=0.1, weight_decay=0.3, diagnostics_every=1)
    p.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()  # sign(m) = (1, -1, 0): |lr * d| = 0.1 * sqrt(2)
    assert opt.diagnostics() == {"update_norm": pytest.approx(0.1 * math.sqrt(2), rel=1e-6)}


def test_muon_orthogonalises_matrices_and_runs_adamw_on_the_rest():
    torch.manual_seed(0)
    matrix = torch.nn.Parameter(torch.randn(6, 4))
    vector = torch.nn.Parameter(torch.randn(4))
    twin = torch.nn.Parameter(vector.detach().clone())
    start = matrix.detach().clone()
    muon = Muon([matrix, vector], lr=0.01, weight_decay=0.0, nesterov=False,
                adamw_betas=(0.9, 0.95))
    adamw = torch.optim.AdamW([twin], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    g = torch.randn(6, 4)
    matrix.grad, vector.grad, twin.grad = g, torch.ones(4), torch.ones(4)
    muon.step()
    adamw.step()
    # first step without nesterov: the buffer is 0.05 g, orthogonalised (scale-free)
    assert lr_factor("match_rms_adamw", (6, 4)) == 0.2 * math.sqrt(6)
    expected = start - 0.01 * lr_factor("match_rms_adamw", (6, 4)) * newton_schulz(g, 5)
    torch.testing.assert_close(matrix.detach(), expected)
    singular = torch.linalg.svdvals(newton_schulz(g, 5))
    assert bool(((singular > 0.5) & (singular < 1.5)).all())
    torch.testing.assert_close(vector, twin, rtol=1e-6, atol=1e-7)
