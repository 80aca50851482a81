"""First-order baselines: torch's numbers where torch has the optimizer, hand cases otherwise."""

from __future__ import annotations

import torch

from soulcli.optim import SGD, AdamW, Lion, Muon, Signum
from soulcli.optim.muon import adjusted_lr, newton_schulz


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


def test_adamw_is_torch_fused_adamw():
    a, b = twin_runs(lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1),
                     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, fused=True),
                     [(5, 3), (7,)])
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_sgd_is_torch_fused_sgd_with_momentum():
    a, b = twin_runs(lambda ps: SGD(ps, lr=0.05, weight_decay=0.01, momentum=0.9, nesterov=True),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, weight_decay=0.01, momentum=0.9,
                                                nesterov=True, fused=True), [(5, 3), (7,)])
    assert all(torch.equal(p, q) for p, q in zip(a, b))


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
    expected = start - adjusted_lr(0.01, "match_rms_adamw", (6, 4)) * newton_schulz(g, 5)
    torch.testing.assert_close(matrix.detach(), expected)
    singular = torch.linalg.svdvals(newton_schulz(g, 5))
    assert bool(((singular > 0.5) & (singular < 1.5)).all())
    assert torch.equal(vector, twin)
