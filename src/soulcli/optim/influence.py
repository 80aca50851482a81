"""One-shot influence unlearning: the Newton step that SOUL's iterative second-order
unlearning generalises (Koh & Liang, "Understanding Black-box Predictions via Influence
Functions", ICML 2017; its use for unlearning, Jia et al. 2024, SOUL, Section 3):

    theta <- theta + scale * (H_r + damping * I)^-1  grad L_forget(theta)

For a quadratic retain objective this lands exactly on the minimiser without the forget set:
if theta minimises ``L_r + L_f`` then ``grad L_r(theta) = -grad L_f(theta)`` and one Newton
step on ``L_r`` gives ``theta + H_r^-1 grad L_f(theta)``. Here ``L_forget`` and ``H_r`` are
per-token means over the forget and retain batches, so the sum-weighted Newton step has
``scale = n_forget_tokens / n_retain_tokens``, which `soul unlearn` derives from the sets it unlearns
(``unlearn.influence.scale`` unset); this function takes it from the caller (default 1).

Three ways to apply ``(H_r + damping I)^-1``, each with its closed form below:

* ``diag_fisher`` - a diagonal Fisher of the retain loss (Gauss-Newton-Bartlett draws, the
  estimator Sophia uses): ``g / (h + damping)``;
* ``woodbury`` - the empirical Fisher ``G^T G / n`` of ``n`` per-example retain gradients
  (rows of G), inverted exactly in an n x n system (Woodbury identity):
  ``(G^T G / n + l I)^-1 g = (g - G^T (n l I + G G^T)^-1 G g) / l``;
* ``lissa`` - LiSSA (Agarwal, Bullins, Hazan 2017): the truncated Neumann series
  ``x_{t+1} = g + x_t - (H + l I) x_t / s``, answer ``x_T / s``, with Hessian-vector products
  of the retain loss on one retain batch per iteration; needs ``s`` above the largest
  eigenvalue of ``H + l I`` (``lissa_scale``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from soulcli.errors import UserError, unknown_name
from soulcli.optim.curvature import GaussNewtonBartlett, answer_tokens, lm_true_loss

INFLUENCE_METHODS = ("diag_fisher", "woodbury", "lissa")
Batch = dict[str, Tensor]


# -- closed forms on flat vectors ------------------------------------------------------
def influence_step_dense(hessian: Tensor, grad_forget: Tensor, damping: float) -> Tensor:
    """``(H + damping I)^-1 g`` for a dense ``d x d`` curvature."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    return torch.linalg.solve(hessian + damping * eye, grad_forget)


def influence_step_diag(hessian_diag: Tensor, grad_forget: Tensor, damping: float) -> Tensor:
    """``(diag(h) + damping I)^-1 g``."""
    return grad_forget / (hessian_diag + damping)


def influence_step_woodbury(sample_grads: Tensor, grad_forget: Tensor, damping: float) -> Tensor:
    """``(G^T G / n + damping I)^-1 g`` for ``G`` of shape ``[n, d]``, via an ``n x n`` solve."""
    n = sample_grads.shape[0]
    small = sample_grads @ sample_grads.T
    small.diagonal().add_(n * damping)
    inner = torch.linalg.solve(small, sample_grads @ grad_forget)
    return (grad_forget - sample_grads.T @ inner) / damping


def lissa(hvp: Callable[[Tensor], Tensor], grad_forget: Tensor, damping: float, steps: int,
          scale: float) -> Tensor:
    """LiSSA: ``sum_{k=0..steps} (I - (H + damping I) / scale)^k g / scale``."""
    x = grad_forget.clone()
    for _ in range(steps):
        x = grad_forget + x - (hvp(x) + damping * x) / scale
    return x / scale


# -- the model-level entry point -------------------------------------------------------
def _work_dtype(params: list[Tensor]) -> torch.dtype:
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def _flat(tensors: Sequence[Tensor | None], params: list[Tensor]) -> Tensor:
    """One vector (fp32, or fp64 for an fp64 model) from per-parameter tensors; None is zero."""
    dtype = _work_dtype(params)
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                      for t, p in zip(tensors, params)])


def _grad(loss: Tensor, params: list[Tensor], **kw: bool) -> list[Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, **kw))


def _mean_loss(model: torch.nn.Module, batches: list[Batch]) -> float:
    with torch.no_grad():
        return sum(float(lm_true_loss(model, b)) for b in batches) / len(batches)


def _mean_grad(model: torch.nn.Module, batches: list[Batch], params: list[Tensor]) -> Tensor:
    return sum(_flat(_grad(lm_true_loss(model, b), params), params) for b in batches) / len(batches)


def _diag_fisher(model: torch.nn.Module, batches: list[Batch], params: list[Tensor],
                 samples: int, seed: int) -> Tensor:
    gnb = GaussNewtonBartlett(seed=seed)
    total = torch.zeros(sum(p.numel() for p in params), dtype=_work_dtype(params),
                        device=params[0].device)
    for batch in batches:
        for _ in range(samples):
            grads, count = gnb.sample(model, batch, params)
            total.add_(_flat(grads, params).square_().mul_(count))
    return total / (len(batches) * samples)


def _sample_grads(model: torch.nn.Module, batches: list[Batch], params: list[Tensor],
                  limit: int) -> Tensor:
    """Per-example gradients of the true-label loss (the empirical Fisher's factors), ``[n, d]``."""
    rows = []
    for batch in batches:
        size = batch["input_ids"].shape[0]
        for i in range(size):
            if len(rows) == limit:
                break
            one = {k: v[i:i + 1] if torch.is_tensor(v) and v.ndim and v.shape[0] == size else v
                   for k, v in batch.items()}
            if answer_tokens(one) == 0:
                continue
            rows.append(_flat(_grad(lm_true_loss(model, one), params), params))
    if not rows:
        raise UserError("influence: the retain batches have no answer tokens to estimate "
                        "curvature from")
    return torch.stack(rows)


def _retain_hvp(model: torch.nn.Module, batches: list[Batch],
                params: list[Tensor]) -> Callable[[Tensor], Tensor]:
    turn = {"i": 0}

    def hvp(v: Tensor) -> Tensor:
        batch = batches[turn["i"] % len(batches)]
        turn["i"] += 1
        grads = _grad(lm_true_loss(model, batch), params, create_graph=True)
        live = [(g, p) for g, p in zip(grads, params) if g is not None]
        pieces = dict(zip((id(p) for p in params), v.split([p.numel() for p in params])))
        dot = sum((g * pieces[id(p)].view_as(g).to(g.dtype)).sum() for g, p in live)
        return _flat(_grad(dot, params), params).detach()

    return hvp


def influence_unlearn(model: torch.nn.Module, forget_batches: list[Batch],
                      retain_batches: list[Batch], *, method: str = "diag_fisher",
                      damping: float, scale: float = 1.0, lissa_steps: int = 100,
                      lissa_scale: float = 10.0, fisher_samples: int = 1,
                      max_retain_samples: int = 64, seed: int = 0) -> dict[str, float]:
    """Apply one influence step to the model's trainable parameters in place.

    Losses are the mean answer-token cross-entropy of each batch; only parameters with
    ``requires_grad`` move (so a LoRA model moves its adapters). Returns the forget and
    retain losses before and after, the norms of the forget gradient and of the step.
    """
    if method not in INFLUENCE_METHODS:
        raise unknown_name("influence method", method, INFLUENCE_METHODS)
    if not damping > 0:
        raise UserError(f"influence: damping must be > 0, got {damping}")
    if not forget_batches or not retain_batches:
        raise UserError("influence: needs at least one forget batch and one retain batch")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("influence: the model has no trainable parameters")
    was_training = model.training
    model.eval()
    try:
        out = {"forget_loss_before": _mean_loss(model, forget_batches),
               "retain_loss_before": _mean_loss(model, retain_batches)}
        with torch.enable_grad():
            grad_forget = _mean_grad(model, forget_batches, params)
            if method == "diag_fisher":
                h = _diag_fisher(model, retain_batches, params, fisher_samples, seed)
                step = influence_step_diag(h, grad_forget, damping)
                out["curvature_mean"] = float(h.mean())
            elif method == "woodbury":
                g = _sample_grads(model, retain_batches, params, max_retain_samples)
                step = influence_step_woodbury(g, grad_forget, damping)
                out["retain_samples"] = float(g.shape[0])
            else:
                hvp = _retain_hvp(model, retain_batches, params)
                step = lissa(hvp, grad_forget, damping, lissa_steps, lissa_scale)
        step = step * scale
        if not bool(torch.isfinite(step).all()):
            raise UserError("influence: the step is not finite; raise damping"
                            + (" or lissa_scale" if method == "lissa" else ""))
        with torch.no_grad():
            for p, piece in zip(params, step.split([p.numel() for p in params])):
                p.add_(piece.view_as(p).to(p.dtype))
        out.update(forget_grad_norm=float(grad_forget.norm()), step_norm=float(step.norm()),
                   forget_loss_after=_mean_loss(model, forget_batches),
                   retain_loss_after=_mean_loss(model, retain_batches))
    finally:
        model.train(was_training)
    return out
