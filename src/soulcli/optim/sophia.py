"""Sophia: clipped diagonal-Newton steps (Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable
Stochastic Second-order Optimizer for Language Model Pre-training", ICLR 2024, arXiv:2305.14342).

Algorithm 3 of the paper, as the authors' released ``SophiaG`` class runs it, per coordinate:

    p <- p * (1 - lr * wd)                                   decoupled weight decay
    m <- b1 * m + (1 - b1) * g                               momentum (no bias correction)
    h <- b2 * h + (1 - b2) * g_hat * g_hat                   every k steps, ``update_hessian()``
    p <- p - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)

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
* the curvature of an unlearning objective is small next to its gradient (gradient ascent
  on a memorised answer has large |m| and a flat sampled-label Fisher), so the authors'
  pre-training rho=0.04 clips almost everything: on a 4M-parameter Llama, GNB every 5 steps
  with bs=146 answer tokens gave a mean win rate of 0.0005 at rho=0.04, 0.13 at rho=10 and
  0.33 at rho=100. The authors tune rho so the win rate sits in 0.1-0.5;
  :func:`win_rate_warning` says when it stays near 0.

SophiaH is the same update with Hutchinson's ``u * (H u)`` as the curvature sample (its
scale is already the Hessian of the mean loss, so ``bs = 1``) and ``max(h, 0)`` in the
denominator, since Hutchinson samples can be negative.

Implementation notes
--------------------
State is two fp32 buffers per parameter (``exp_avg`` and ``hessian``), like AdamW. The
reference's ``eps`` is folded into the stored Hessian: ``state['hessian']`` holds
``h + eps / (rho * bs)`` (the group's ``hessian_floor``; ~1e-16 at the defaults), so that
``rho * bs * stored == rho * bs * h + eps`` and a step costs one division per coordinate and
no extra pass; :meth:`SophiaG.hessian` returns ``h`` itself. When rho or bs changes, the
floor is moved by one pass over the buffer. Results match the reference to float rounding.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from soulcli.optim.base import (
    Bank,
    Chunk,
    SecondOrderOptimizer,
    check_betas,
    check_nonnegative,
    check_positive,
)

WIN_RATE_TARGET = (0.1, 0.5)


class SophiaG(SecondOrderOptimizer):
    """SophiaG (Liu et al. 2024, Algorithm 3), usable like the authors' class.

    Defaults are the authors': ``lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1``,
    ``eps=1e-15``, ``bs=5120`` (their GPT-2 token batch; replaced by the token count each
    ``update_hessian(bs=...)`` records). ``bias_correction=True`` divides m by ``1 - b1**t``
    (the reference does not). Diagnostics every ``diagnostics_every`` steps: ``win_rate``
    (fraction of coordinates not clipped), ``update_norm`` (norm of the clipped step, without
    weight decay); ``hessian_norm`` after every ``update_hessian``.

    Usage, as in the authors' training loop::

        loss_sampled.backward(); opt.update_hessian(); opt.zero_grad(set_to_none=True)
        ...
        loss.backward(); opt.step(bs=tokens); opt.zero_grad(set_to_none=True)
    """

    state_names = ("exp_avg", "hessian")
    default_curvature = "gnb"
    relu_hessian = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: Sequence[float] = (0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 1e-1, *, bs: int = 5120, eps: float = 1e-15,
                 bias_correction: bool = False, diagnostics_every: int = 10) -> None:
        name = type(self).__name__
        check_positive(name, rho=rho, bs=bs, eps=eps)
        check_nonnegative(name, lr=lr, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=check_betas(name, betas), rho=rho,
                        weight_decay=weight_decay, bs=int(bs), eps=eps,
                        bias_correction=bool(bias_correction),
                        hessian_floor=eps / (rho * int(bs)))
        super().__init__(params, defaults, diagnostics_every)

    # -- curvature ----------------------------------------------------------------------
    def _state_fill(self, group: dict, role: str) -> dict[str, float]:
        return {"hessian": group["hessian_floor"]}

    def _prepare_group(self, index: int, group: dict) -> None:
        want = group["eps"] / (group["rho"] * group["bs"])
        have = group["hessian_floor"]
        if want != have:
            for bank in self._banks.get(index, []):
                bank.buffers["hessian"].add_(want - have)
            group["hessian_floor"] = want

    def _absorb(self, group: dict, bank: Bank, present: list[int], estimates: list[Tensor],
                squared: bool) -> None:
        beta2 = group["betas"][1]
        views = self._ema_views(bank, present, "hessian", beta2)
        if squared:
            torch._foreach_addcmul_(views, estimates, estimates, value=1 - beta2)
        else:
            torch._foreach_add_(views, estimates, alpha=1 - beta2)
        # b2 * (h + f) + (1 - b2) * x + (1 - b2) * f == (new h) + f: the floor stays folded in
        torch._foreach_add_(views, (1 - beta2) * group["hessian_floor"])

    def hessian(self, p: Tensor) -> Tensor:
        """The Hessian EMA ``h`` of parameter ``p`` (a copy, without the folded eps)."""
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        stored = self.state[p].get("hessian")
        if stored is None:
            return torch.zeros_like(p, dtype=torch.float32)
        return stored - group["hessian_floor"]

    # -- the step -----------------------------------------------------------------------
    def _step_bank(self, group: dict, bank: Bank, chunks: list[Chunk],
                   grads: list[Tensor | None], sums: dict[str, list[Tensor]] | None) -> None:
        beta1 = group["betas"][0]
        lr, wd = group["lr"], group["weight_decay"]
        # clip bound in units of m / stored_h: |m| / (rho*bs*h + eps) < 1 <=> |m / stored| < c
        c = group["rho"] * group["bs"]
        if group["bias_correction"]:
            c *= 1 - beta1 ** group["step"]
        floor = group["hessian_floor"]
        self._ema_grads(bank, grads, "exp_avg", beta1)
        for chunk in chunks:
            ratio = chunk.scratch
            if self.relu_hessian:
                torch.clamp(chunk.flat["hessian"], min=floor, out=ratio)
                torch.div(chunk.flat["exp_avg"], ratio, out=ratio)
            else:
                torch.div(chunk.flat["exp_avg"], chunk.flat["hessian"], out=ratio)
            ratio.clamp_(-c, c)
            if wd:
                torch._foreach_mul_(chunk.params, 1 - lr * wd)
            torch._foreach_add_(chunk.params, chunk.scratch_segs, alpha=-lr / c)
            if sums is not None:
                sums.setdefault("update_sq", []).append(torch.dot(ratio, ratio) * (lr / c) ** 2)
                # after the clamp a clipped coordinate is exactly +-c, a win is strictly inside
                sums.setdefault("wins", []).append(torch.count_nonzero(ratio.abs_().sub_(c)))
                sums.setdefault("coords", []).append(torch.tensor(float(ratio.numel())))

    def _finish_diagnostics(self, sums: dict[str, list[Tensor]]) -> dict[str, float]:
        out = super()._finish_diagnostics(sums)
        if sums.get("coords"):
            wins = float(torch.stack([w.float().cpu() for w in sums["wins"]]).sum())
            out["win_rate"] = wins / float(torch.stack(sums["coords"]).sum())
        return out


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
            f"momentum); raise optimizer.args.rho{now} until the win rate sits in {low}-{high}, the "
            f"range the Sophia authors tune it to")
