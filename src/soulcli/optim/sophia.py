"""Sophia: clipped diagonal-Newton steps (Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable
Stochastic Second-order Optimizer for Language Model Pre-training", ICLR 2024, arXiv:2305.14342).

Algorithm 3 of the paper, as the authors' released ``SophiaG`` class runs it, per coordinate:

    m <- b1 * m + (1 - b1) * g                               momentum (no bias correction)
    h <- b2 * h + (1 - b2) * g_hat * g_hat                   every k steps, ``update_hessian()``
    d  = sign(m) * min(|m| / (rho * bs * h + eps), 1)        the clipped Newton step
    p <- p * (1 - lr * wd) - lr * d                          (shared: soulcli.optim.base)

``g_hat`` is the gradient of the *mean* cross-entropy against labels sampled from the model's
own logits, over a batch of ``bs`` predicted tokens; ``bs * g_hat**2`` is then the
Gauss-Newton-Bartlett estimate of the Gauss-Newton diagonal (E[bs * g_hat**2] = diag of the
Fisher of the mean loss), which is why ``bs`` multiplies ``h`` in the denominator.

How rho, bs and the curvature's scale interact
----------------------------------------------
Write ``F = bs * h`` (the curvature of the mean loss, per coordinate). A coordinate is *not*
clipped (a "win") when ``|m| < rho * F``, i.e. when its Newton step ``|m| / F`` is below
``rho``; it then moves by ``(lr / rho) * m / F``, a Newton step scaled by ``lr / rho``.
Otherwise it moves by ``lr * sign(m)``, exactly Signum's step. So:

* the win rate is the fraction of coordinates whose Newton step is below rho: raising rho
  raises it, and a win rate of 0 means SophiaG *is* Signum with learning rate lr;
* ``bs`` must be the token count the curvature batch averaged over: passing sequences instead
  of tokens (or a summed loss instead of a mean, which scales h by bs**2) shifts the
  denominator by that factor, which is the same as using the wrong rho;
* in unlearning the gradient is typically large next to the sampled-label curvature
  (gradient ascent pushes a memorised answer whose predictions are confident, so the Fisher
  is small), so the authors' pre-training rho=0.04 clips almost everything: on a
  4M-parameter Llama, GNB every 5 steps with bs=146 answer tokens gave a mean win rate of
  0.0005 at rho=0.04, 0.13 at rho=10 and 0.33 at rho=100. The authors tune rho so the
  win rate sits in 0.1-0.5; :func:`win_rate_warning` says when it stays near 0.

SophiaH is the same update with Hutchinson's ``u * (H u)`` as the curvature sample (its
scale is already the Hessian of the mean loss, so ``bs = 1``) and ``max(h, 0)`` in the
denominator, since Hutchinson samples can be negative. SophiaG takes only squared-gradient
samples (GNB, empirical Fisher), whose EMA is never negative.

Implementation notes
--------------------
State is two fp32 tensors per parameter, ``exp_avg`` (m) and ``hessian`` (h), as in the
authors' class. On CPU, a group whose parameters with gradients are all fp32 and contiguous
is stepped by one parallel numba pass (:mod:`soulcli.optim.cpu_kernels`): the same arithmetic
on the same state, reading p, g, m, h once instead of once per torch op, with the win rate and
update norm counted in the same pass. Everything else (CUDA, bf16, strided parameters,
``SOUL_CPU_KERNELS=0``) runs the plain rule below; the two agree to fp32 rounding.
"""

from __future__ import annotations

from typing import Annotated, Any, Iterable, Sequence

import torch
from torch import Tensor

from soulcli.errors import UserError
from soulcli.optim import cpu_kernels
from soulcli.optim.base import (Betas, DiagnosticsEvery, Eps, LearningRate, SecondOrderOptimizer,
                                WeightDecay, local_tensor, total)
from soulcli.schema import AT_LEAST_ONE, POSITIVE

WIN_RATE_TARGET = (0.1, 0.5)


class SophiaG(SecondOrderOptimizer):
    """SophiaG (Liu et al. 2024, Algorithm 3), usable like the authors' class.

    Defaults are the authors': ``lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1``,
    ``eps=1e-15``, ``bs=5120`` (the default of the authors' ``step``; replaced by the token
    count each ``update_hessian(bs=...)`` or ``step(bs=...)`` records).
    ``bias_correction=True`` divides m by ``1 - b1**t`` (the reference does not).
    Diagnostics: ``win_rate`` (fraction of coordinates not clipped) and ``update_norm`` (norm
    of the clipped step, without weight decay) every step where the one-pass CPU kernel runs
    (where they cost nothing), else every ``DIAGNOSTICS_EVERY`` (20) steps;
    ``diagnostics_every=k`` fixes the cadence (0: never). ``hessian_norm`` after every
    ``update_hessian``.

    Usage, as in the authors' training loop::

        loss_sampled.backward(); opt.update_hessian(); opt.zero_grad(set_to_none=True)
        ...
        loss.backward(); opt.step(bs=tokens); opt.zero_grad(set_to_none=True)
    """

    state_names = ("exp_avg", "hessian")
    default_curvature = "gnb"
    relu_hessian = False

    def __init__(self, params: Iterable[Any], lr: LearningRate = 1e-4,
                 betas: Betas = (0.965, 0.99),
                 rho: Annotated[float, POSITIVE, "clip threshold of the Newton step"] = 0.04,
                 weight_decay: WeightDecay = 1e-1, *,
                 bs: Annotated[int, AT_LEAST_ONE, "tokens per curvature batch"] = 5120,
                 eps: Eps = 1e-15, bias_correction: bool = False,
                 diagnostics_every: DiagnosticsEvery = None) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), rho=rho,
                                      weight_decay=weight_decay, bs=int(bs), eps=eps,
                                      bias_correction=bias_correction), diagnostics_every)
        self._kernel_views: dict[int, tuple[tuple[int, ...], tuple]] = {}

    @torch.no_grad()
    def update_hessian(self, bs: int | None = None, *, grads: Sequence[Tensor | None] | None = None,
                       diagonal: Sequence[Tensor | None] | None = None) -> None:
        if diagonal is not None and not self.relu_hessian:
            raise UserError("sophiag takes squared-gradient curvature (gnb or empirical_fisher); "
                            "for hutchinson samples, which can be negative, use sophiah")
        super().update_hessian(bs, grads=grads, diagonal=diagonal)

    def absorb(self, estimate: Tensor, state: dict[str, Tensor], group: dict,
               squared: bool) -> None:
        beta2 = group["betas"][1]
        h = state["hessian"].mul_(beta2)
        if squared:
            h.addcmul_(estimate, estimate, value=1 - beta2)
        else:
            h.add_(estimate, alpha=1 - beta2)

    def hessian(self, p: Tensor) -> Tensor:
        """The Hessian EMA ``h`` of parameter ``p`` (a copy; zeros before any sample)."""
        stored = self.state[p].get("hessian")
        return torch.zeros_like(p, dtype=torch.float32) if stored is None else stored.clone()

    # -- the rule ---------------------------------------------------------------------------
    def update(self, g: Tensor, state: dict[str, Tensor], group: dict) -> Tensor:
        beta1 = group["betas"][0]
        m = state["exp_avg"].lerp_(g, 1 - beta1)
        h = state["hessian"].clamp(min=0) if self.relu_hessian else state["hessian"]
        ratio = m.abs().div_(group["rho"] * group["bs"] * h + group["eps"])
        if group["bias_correction"]:
            ratio.div_(1 - beta1 ** group["step"])
        return ratio.clamp_(max=1).mul_(m.sign())

    def measure(self, direction: Tensor, lr: float, sums: dict[str, list[Tensor | float]]) -> None:
        super().measure(direction, lr, sums)
        sums.setdefault("clipped", []).append((direction.abs() == 1).sum())
        sums.setdefault("coords", []).append(float(direction.numel()))

    def finish_diagnostics(self, sums: dict[str, list[Tensor | float]]) -> dict[str, float]:
        out = super().finish_diagnostics(sums)
        if sums.get("coords"):
            out["win_rate"] = 1.0 - total(sums["clipped"]) / total(sums["coords"])
        return out

    # -- the CPU accelerator ----------------------------------------------------------------
    def step_group(self, group: dict, sums: dict[str, list[Tensor | float]] | None) -> None:
        present = [p for p in group["params"] if p.grad is not None]
        if not present or not cpu_kernels.applicable(present):
            super().step_group(group, sums)
            return
        beta1, lr = group["betas"][0], group["lr"]
        views = self._views(group, present)
        grads = tuple(cpu_kernels.flat_numpy(local_tensor(p.grad)) for p in present)
        scale = 1 / (1 - beta1 ** group["step"]) if group["bias_correction"] else 1.0
        sq, clipped, coords = cpu_kernels.sophia_step(
            *views, grads, beta1=beta1, m_scale=scale, rho_bs=group["rho"] * group["bs"],
            eps=group["eps"], lr=lr, decay=1 - lr * group["weight_decay"])
        if sums is not None:  # plain floats: no tensor to build on this path
            sums.setdefault("update_sq", []).append(sq * lr**2)
            sums.setdefault("clipped", []).append(float(clipped))
            sums.setdefault("coords", []).append(float(coords))

    def _views(self, group: dict, present: list[Tensor]) -> tuple:
        """Numpy views (params, m, h) and the block table of the present parameters, cached
        per group; rebuilt when the set of parameters with gradients or a storage changed."""
        local = [local_tensor(p) for p in present]
        states = [self.state_of(p, group) for p in present]
        key = tuple(t.data_ptr() for t in local) + tuple(s["exp_avg"].data_ptr() for s in states)
        cached = self._kernel_views.get(id(group))
        if cached is None or cached[0] != key:
            flat = cpu_kernels.flat_numpy
            views = (tuple(flat(t) for t in local), tuple(flat(s["exp_avg"]) for s in states),
                     tuple(flat(s["hessian"]) for s in states),
                     cpu_kernels.block_table([t.numel() for t in local]))
            cached = self._kernel_views[id(group)] = (key, views)
        return cached[1]

    def free_diagnostics(self) -> bool:
        return cpu_kernels.enabled() and all(
            p.device.type == "cpu" and p.dtype == torch.float32
            for g in self.param_groups for p in g["params"][:1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._kernel_views = {}


class SophiaH(SophiaG):
    """SophiaH (Liu et al. 2024, Algorithm 3 with Hutchinson's estimator, Algorithm 1).

    Same update as :class:`SophiaG` with ``max(h, 0)`` in the denominator; the engine feeds it
    ``u * (H u)`` samples (``update_hessian(diagonal=...)``, ``bs = 1``). Same defaults.
    """

    default_curvature = "hutchinson"
    relu_hessian = True


def win_rate_warning(win_rates: Sequence[float], *, threshold: float = 0.02, window: int = 5,
                     rho: float | None = None) -> str | None:
    """A warning when the last ``window`` Sophia win rates average below ``threshold``.

    Returns None while there are fewer readings than ``window`` or the win rate is healthy.
    """
    recent = [float(w) for w in list(win_rates)[-window:]]
    if len(recent) < window or window <= 0:
        return None
    mean = sum(recent) / len(recent)
    if mean >= threshold:
        return None
    now = f" (now {rho:g})" if rho is not None else ""
    low, high = WIN_RATE_TARGET
    return (f"Sophia's win rate averaged {mean:.4f} over the last {window} readings: almost "
            f"every coordinate is clipped, so each step is a Signum step (lr * sign of the "
            f"momentum); raise optimizer.args.rho{now} until the win rate sits in "
            f"{low}-{high}, the range the Sophia authors tune it to")
