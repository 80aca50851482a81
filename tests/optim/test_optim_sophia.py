"""SophiaG / SophiaH: hand-computed cases, the Newton step, and the authors' reference."""

from __future__ import annotations

import math

import pytest
import torch

from soulcli.errors import UserError
from soulcli.optim import Signum, SophiaG, SophiaH, state_bytes, win_rate_warning


@pytest.fixture(autouse=True, params=["kernel", "torch"])
def step_path(request, monkeypatch):
    """Every test here runs on both step paths: the one-pass CPU kernel and torch's ops."""
    from soulcli.optim import cpu_kernels

    if request.param == "kernel" and not cpu_kernels.enabled():
        pytest.skip("numba kernels unavailable")
    monkeypatch.setenv("SOUL_CPU_KERNELS", "1" if request.param == "kernel" else "0")
    return request.param


def one_param(values, **kw):
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    kw.setdefault("diagnostics_every", 1)
    return p, kw


def hand_case(weight_decay: float):
    """h from grads (2, 2, 0, 1), then one step with g = (1, -6, 3, 0).

    betas (0.5, 0.5), rho 1, bs 1: h = 0.5 * g_hat^2 = (2, 2, 0, 0.5); m = 0.5 * g =
    (0.5, -3, 1.5, 0); |m| / h = (0.25, 1.5, inf, 0) -> min(., 1) = (0.25, 1, 1, 0);
    step = -lr * sign(m) * that = -0.1 * (0.25, -1, 1, 0).
    """
    p = torch.nn.Parameter(torch.ones(4))
    opt = SophiaG([p], lr=0.1, betas=(0.5, 0.5), rho=1.0, weight_decay=weight_decay, bs=1,
                  diagnostics_every=1)
    p.grad = torch.tensor([2.0, 2.0, 0.0, 1.0])
    opt.update_hessian()
    p.grad = torch.tensor([1.0, -6.0, 3.0, 0.0])
    opt.step()
    return p, opt


def test_clip_rule_on_a_hand_computed_case():
    p, opt = hand_case(weight_decay=0.0)
    torch.testing.assert_close(p.detach(), torch.tensor([0.975, 1.1, 0.9, 1.0]))
    torch.testing.assert_close(opt.hessian(p), torch.tensor([2.0, 2.0, 0.0, 0.5]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.5, -3.0, 1.5, 0.0]))
    diag = opt.diagnostics()
    # coordinates 0 and 3 are inside the clip, 1 and 2 are clipped
    assert diag["win_rate"] == 0.5
    assert diag["hessian_norm"] == pytest.approx(math.sqrt(8.25))
    assert diag["update_norm"] == pytest.approx(0.1 * math.sqrt(0.25**2 + 1 + 1))
    assert opt.diagnostics() == {}, "returned once, then cleared"


def test_decoupled_weight_decay_scales_before_the_update():
    p, _ = hand_case(weight_decay=0.5)
    # p * (1 - 0.1 * 0.5) = 0.95, then the same clipped step
    torch.testing.assert_close(p.detach(), torch.tensor([0.925, 1.05, 0.85, 0.95]))


def test_bias_correction_divides_the_momentum():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = SophiaG([p], lr=1.0, betas=(0.9, 0.5), rho=1.0, weight_decay=0.0, bs=1,
                  bias_correction=True)
    p.grad = torch.tensor([2.0, 2.0])
    opt.update_hessian()  # h = 0.5 * 4 = 2
    p.grad = torch.tensor([0.5, -4.0])
    opt.step()
    # m_hat = g = (0.5, -4); |m_hat| / h = (0.25, 2) -> (0.25, 1)
    torch.testing.assert_close(p.detach(), torch.tensor([-0.25, 1.0]))


@pytest.mark.parametrize("cls, form", [(SophiaG, "squared_grads"), (SophiaH, "diagonal")])
def test_exact_diagonal_curvature_without_clipping_is_the_newton_step(cls, form):
    a = torch.tensor([0.5, 2.0, 8.0, 30.0])
    theta = torch.nn.Parameter(torch.tensor([0.9, -0.4, 0.7, -0.2]))
    # b1 = b2 = 0: m = g and h = the curvature; rho = 1 and lr = 1: step = -g / a
    opt = cls([theta], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0, bs=1,
              diagnostics_every=1)
    if form == "squared_grads":
        opt.update_hessian(bs=1, grads=[a.sqrt()])
    else:
        opt.update_hessian(diagonal=[a])
    (0.5 * (a * theta * theta).sum()).backward()
    opt.step()
    torch.testing.assert_close(theta.detach(), torch.zeros(4), atol=1e-6, rtol=0)
    assert opt.diagnostics()["win_rate"] == 1.0


def test_win_rate_zero_is_exactly_a_signum_step():
    torch.manual_seed(0)
    start = torch.randn(50)
    p, q = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    sophia = SophiaG([p], lr=0.01, betas=(0.9, 0.99), rho=1e-6, weight_decay=0.1,
                     diagnostics_every=1)
    signum = Signum([q], lr=0.01, momentum=0.9, weight_decay=0.1)
    for t in range(5):
        g = torch.randn(50)
        p.grad = g.clone()
        if t == 0:
            sophia.update_hessian(bs=100)
        p.grad, q.grad = g.clone(), g.clone()
        sophia.step()
        signum.step()
        assert sophia.diagnostics()["win_rate"] == 0.0
    # the same step up to the rounding of lr / (rho * bs) * (rho * bs)
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_sophiag_refuses_hutchinson_samples():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(UserError, match="use sophiah"):
        SophiaG([p]).update_hessian(diagonal=[torch.ones(2)])


def test_sophiah_uses_only_positive_curvature():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SophiaH([p], lr=0.1, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
    opt.update_hessian(diagonal=[torch.tensor([-1.0, 4.0, 0.0])])
    p.grad = torch.tensor([1.0, 2.0, -1.0])
    opt.step()
    # h = (-1, 4, 0): max(h, 0) = (0, 4, 0) -> ratios (clipped, 0.5, clipped)
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, -0.05, 0.1]))
    assert SophiaH.default_curvature == "hutchinson" and SophiaG.default_curvature == "gnb"


# -- the authors' algorithm, transcribed per tensor from the paper's Algorithm 3 ----------
class Reference:
    def __init__(self, params, lr, betas, rho, wd, eps=1e-15):
        self.p = [t.clone() for t in params]
        self.m = [torch.zeros_like(t) for t in params]
        self.h = [torch.zeros_like(t) for t in params]
        self.lr, self.betas, self.rho, self.wd, self.eps = lr, betas, rho, wd, eps

    def update_hessian(self, grads):
        for h, g in zip(self.h, grads):
            h.mul_(self.betas[1]).addcmul_(g, g, value=1 - self.betas[1])

    def step(self, grads, bs):
        for p, m, h, g in zip(self.p, self.m, self.h, grads):
            self.step_one(p, m, h, g, bs)

    def step_one(self, p, m, h, g, bs):
        p.mul_(1 - self.lr * self.wd)
        m.mul_(self.betas[0]).add_(g, alpha=1 - self.betas[0])
        ratio = (m.abs() / (self.rho * bs * h + self.eps)).clamp(max=1)
        p.addcmul_(m.sign(), ratio, value=-self.lr)


def test_matches_the_reference_used_the_authors_way(monkeypatch):
    torch.manual_seed(1)
    # small kernel blocks: the 1000-element parameter is cut in pieces across threads
    monkeypatch.setattr("soulcli.optim.cpu_kernels.BLOCK", 100)
    shapes = [(7, 5), (1000,), (3,), (4, 6)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = Reference([p.detach() for p in params], lr=0.01, betas=(0.965, 0.99), rho=0.5, wd=0.1)
    opt = SophiaG(params, lr=0.01, rho=0.5, weight_decay=0.1)
    bs = 5120
    for t in range(30):
        if t % 5 == 0:
            hgrads = [0.05 * torch.randn(s) for s in shapes]
            for p, g in zip(params, hgrads):
                p.grad = g.clone()
            opt.update_hessian()  # from p.grad, exactly as the authors call it
            ref.update_hessian(hgrads)
            opt.zero_grad(set_to_none=True)
            bs = [5120, 640, 9000][t % 3]
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(bs=bs)
        ref.step(grads, bs)
        opt.zero_grad(set_to_none=True)
    for p, rp, rm, rh in zip(params, ref.p, ref.m, ref.h):
        torch.testing.assert_close(p.detach(), rp, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg"], rm, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.hessian(p), rh, rtol=1e-6, atol=1e-12)


def test_changing_rho_mid_run_matches_the_reference():
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(64))
    ref = Reference([p.detach()], lr=0.05, betas=(0.9, 0.9), rho=0.1, wd=0.0)
    opt = SophiaG([p], lr=0.05, betas=(0.9, 0.9), rho=0.1, weight_decay=0.0, bs=7)
    for t in range(12):
        if t == 6:
            opt.param_groups[0]["rho"] = ref.rho = 3.0
        if t % 4 == 0:
            g = torch.randn(64)
            opt.update_hessian(bs=7, grads=[g])
            ref.update_hessian([g])
        g = torch.randn(64)
        p.grad = g.clone()
        opt.step()
        ref.step([g], 7)
    torch.testing.assert_close(p.detach(), ref.p[0], rtol=1e-5, atol=1e-6)


def test_long_runs_skipped_parameters_and_no_momentum_match_the_reference():
    # b1 = 0.5 folds the momentum scale back after 20 steps without a curvature update (so
    # twice between the updates every 30 steps); the second parameter misses
    # its gradient on some steps (the reference leaves its m and p alone then)
    torch.manual_seed(3)
    for b1 in (0.5, 0.0):
        params = [torch.nn.Parameter(torch.randn(40)), torch.nn.Parameter(torch.randn(6))]
        ref = Reference([p.detach() for p in params], lr=0.02, betas=(b1, 0.8), rho=0.3, wd=0.0)
        opt = SophiaG(params, lr=0.02, betas=(b1, 0.8), rho=0.3, weight_decay=0.0, bs=3)
        for t in range(70):
            if t % 30 == 0:
                hgrads = [torch.randn(40), torch.randn(6)]
                opt.update_hessian(bs=3, grads=hgrads)
                ref.update_hessian(hgrads)
            grads = [torch.randn(40), torch.randn(6) if t % 3 else None]
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            for rp, rm, rh, g in zip(ref.p, ref.m, ref.h, grads):
                if g is not None:
                    Reference.step_one(ref, rp, rm, rh, g, 3)
        for p, rp, rm in zip(params, ref.p, ref.m):
            torch.testing.assert_close(p.detach(), rp, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(opt.state[p]["exp_avg"], rm, rtol=1e-4, atol=1e-6)


def test_state_is_two_fp32_buffers_per_parameter():
    params = [torch.nn.Parameter(torch.randn(10, 4, dtype=torch.bfloat16)),
              torch.nn.Parameter(torch.randn(6, dtype=torch.bfloat16))]
    opt = SophiaG(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.update_hessian(bs=4)
    opt.step()
    assert state_bytes(opt) == 2 * 4 * (40 + 6)
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values())


def test_diagnostics_follow_diagnostics_every():
    p = torch.nn.Parameter(torch.randn(8))
    opt = SophiaG([p], diagnostics_every=3)
    seen = []
    for _ in range(7):
        p.grad = torch.randn(8)
        opt.step()
        seen.append("win_rate" in opt.diagnostics())
    assert seen == [True, False, False, True, False, False, True]


def test_win_rate_warning():
    assert win_rate_warning([0.0] * 3) is None, "not enough readings yet"
    assert win_rate_warning([0.3, 0.25, 0.2, 0.3, 0.4]) is None
    message = win_rate_warning([0.2, 0.0005, 0.001, 0.0, 0.0004, 0.0002], rho=0.04)
    assert message is not None
    assert "rho" in message and "0.04" in message and "0.1-0.5" in message and "Signum" in message


def test_kernel_and_torch_paths_agree_with_diagnostics_every_step(monkeypatch):
    """Same run through both paths: parameters, state and diagnostics agree."""
    from soulcli.optim import cpu_kernels

    if cpu_kernels.numba is None:
        pytest.skip("numba unavailable")
    runs = {}
    for path in ("1", "0"):
        monkeypatch.setenv("SOUL_CPU_KERNELS", path)
        torch.manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(s)) for s in [(33, 17), (5000,), (9,)]]
        opt = SophiaH(params, lr=0.01, rho=0.2, weight_decay=0.1, diagnostics_every=1)
        diags = []
        for t in range(25):
            if t % 5 == 0:
                opt.update_hessian(diagonal=[torch.randn_like(p) for p in params])
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
            diags.append(opt.diagnostics())
        runs[path] = (params, [opt.state[p]["exp_avg"] for p in params], diags)
    for a, b in zip(runs["1"][0] + runs["1"][1], runs["0"][0] + runs["0"][1]):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    for da, db in zip(runs["1"][2], runs["0"][2]):
        assert 0.0 < da["win_rate"] < 1.0
        assert da["win_rate"] == pytest.approx(db["win_rate"], abs=2 / 5600)
        assert da["update_norm"] == pytest.approx(db["update_norm"], rel=1e-5)


def test_kernel_path_applies_only_to_fp32_contiguous_cpu_tensors(monkeypatch):
    from soulcli.optim import cpu_kernels

    def with_grad(p, g):
        p.grad = g
        return p

    monkeypatch.setenv("SOUL_CPU_KERNELS", "1")
    p32 = with_grad(torch.zeros(4, 3), torch.zeros(4, 3))
    assert cpu_kernels.applicable([p32]) == (cpu_kernels.numba is not None)
    bf16 = torch.zeros(2, dtype=torch.bfloat16)
    assert not cpu_kernels.applicable([p32, with_grad(bf16, torch.zeros_like(bf16))])
    assert not cpu_kernels.applicable([with_grad(torch.zeros(3, 4).T, torch.zeros(4, 3))])
    assert not cpu_kernels.applicable([with_grad(torch.zeros(4, 3), torch.zeros(3, 4).T)])
    monkeypatch.setenv("SOUL_CPU_KERNELS", "0")
    assert not cpu_kernels.applicable([p32])


def test_parameters_without_gradients_may_be_bf16_or_strided(step_path):
    """Only the parameters with gradients decide the path (the kernel once viewed them all and
    crashed on a bf16 or non-contiguous parameter that had no gradient)."""
    p = torch.nn.Parameter(torch.ones(4))
    idle_bf16 = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    idle_strided = torch.nn.Parameter(torch.ones(3, 2).T)
    opt = SophiaG([p, idle_bf16, idle_strided], lr=0.1, betas=(0.0, 0.5), rho=1.0, bs=1,
                  weight_decay=0.0, diagnostics_every=1)
    p.grad = torch.tensor([2.0, 2.0, 0.0, 1.0])
    opt.update_hessian()  # h = 0.5 g^2 = (2, 2, 0, 0.5)
    p.grad = torch.tensor([1.0, -6.0, 3.0, 0.0])
    opt.step()  # m = g: |m| / h = (0.5, 3, inf, 0) -> (0.5, 1, 1, 0)
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, 1.1, 0.9, 1.0]))
    assert torch.equal(idle_bf16.detach(), torch.ones(3, dtype=torch.bfloat16))
    assert torch.equal(idle_strided.detach(), torch.ones(2, 3))
    assert opt.diagnostics()["win_rate"] == 0.5


def test_automatic_diagnostics_cadence(step_path):
    """Default cadence: every step on the one-pass kernel (free there), else one in twenty."""
    p = torch.nn.Parameter(torch.randn(8))
    opt = SophiaG([p])
    seen = []
    for _ in range(21):
        p.grad = torch.randn(8)
        opt.step()
        seen.append("win_rate" in opt.diagnostics())
    expected = [True] * 21 if step_path == "kernel" else [t % 20 == 0 for t in range(21)]
    assert seen == expected
