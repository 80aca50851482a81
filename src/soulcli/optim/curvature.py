"""Diagonal curvature estimators, separate from the optimizers that consume them.

The training step calls them explicitly through :class:`CurvatureEstimator`: ``estimate``
after the loss's forward and before its backward, every ``hessian_interval`` steps, and
``after_backward`` after clipping, every step. Both get the step's ``parts``: the batches
the loss trains on, each with the logits the loss computed for it (or None). The estimator
hands its sample to ``opt.update_hessian``. All three leave ``p.grad`` as they found it
(they differentiate with ``torch.autograd.grad``), so the objective's backward that follows
is unaffected.

* ``gnb`` - Gauss-Newton-Bartlett (Liu et al. 2024, Sophia, Algorithm 2): labels sampled from
  the model's own softmax on the answer positions, ``g_hat`` = gradient of their mean
  cross-entropy over those ``bs`` tokens; ``bs * g_hat**2`` is unbiased for the diagonal of
  the Fisher (= Gauss-Newton matrix for softmax cross-entropy) of the mean loss, because the
  score has zero mean under the model's own labels so cross-token terms vanish. The sample
  is taken from the logits the loss already computed (keeping their graph for the loss's
  own backward), so it costs one extra backward; a part without logits is forwarded here.
* ``hutchinson`` - ``u * (H u)`` with ``u`` Rademacher (Hutchinson 1990; Sophia Algorithm 1;
  AdaHessian): unbiased for diag(H) of the mean answer-token loss with the true labels,
  whose variance at entry i is ``sum_{j != i} H_ij**2``. ``H u`` is a double backward through
  ``autograd.grad(create_graph=True)`` on its own forward of the parts (concatenated), whose
  graph is dropped before returning.
* ``empirical_fisher`` - the squared gradient of the *true* objective, every step: what SOUL's
  released code (Jia et al. 2024) feeds its Sophia, from the gradient already in ``p.grad``,
  at no extra cost. It is not the Fisher: with true labels ``bs * g**2`` contains the squared
  mean gradient, which does not vanish away from a minimum - for unlearning objectives far
  from their optimum it tracks the gradient itself, so Sophia's ratio ``|m| / (rho*bs*h)``
  behaves like ``1 / |g|`` rather than a Newton step. ``hessian_interval`` does not apply.

Each accepts a replacement loss (``sampled_loss=`` / ``loss=``) so that the same estimator can
be driven on non-language problems (tests drive them on a quadratic and on Rosenbrock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from soulcli.data.encode import IGNORE_INDEX, answer_mask, forward_logits, pick_answer_logits
from soulcli import schema
from soulcli.errors import unknown_name
from soulcli.optim.base import param_list
from soulcli.schema import AT_LEAST_ONE

Batch = dict[str, Tensor]
# A batch the loss trains on and the logits the loss computed for it (None: not computed).
Part = tuple[Batch, Tensor | None]
SampledLoss = Callable[[torch.nn.Module, Sequence[Part], torch.Generator], tuple[Tensor, int]]
TrueLoss = Callable[[torch.nn.Module, Batch], Tensor]


class CurvatureEstimator(Protocol):
    """What the training step calls (see the module docstring); both return diagnostics."""

    def estimate(self, model: torch.nn.Module, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        """Before the loss's backward, on a curvature step: fold a sample taken at the current
        parameters into ``opt`` (``opt.update_hessian``)."""
        ...

    def after_backward(self, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        """After the loss's backward and clipping, every step: fold what ``p.grad`` gives."""
        ...

    # an estimator that can also take a step's micro-batches (gradient accumulation) has
    # ``estimate_accumulated(model, micro: Sequence[Sequence[Part]], opt)``: after all their
    # backwards, the sample that ``estimate`` takes on one batch of them all


def answer_logits(model: torch.nn.Module, batch: Batch) -> Tensor:
    """Logits of the answer positions, ``[n_tokens, vocab]``, in fp32 (fp64 stays fp64)."""
    return pick_answer_logits(forward_logits(model, batch), batch["labels"])


def sample_categorical(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One label per row of ``[n, V]`` logits, drawn from their softmax by inverse transform:
    one uniform per row against the row's cumulative distribution (in fp64).

    Exact up to rounding, and it needs n random numbers where ``torch.multinomial`` draws
    n * V exponentials (on CPU a third of a curvature step's sampling-and-backward time).
    """
    u = torch.rand(logits.shape[0], 1, generator=generator, dtype=torch.float64, device=logits.device)
    return categorical_from_uniforms(logits, u)


def categorical_from_uniforms(logits: Tensor, u: Tensor) -> Tensor:
    """The labels :func:`sample_categorical` draws for the uniforms ``u`` (``[n, 1]`` fp64)."""
    with torch.no_grad():
        cdf = torch.softmax(logits.double(), -1).cumsum_(-1)
        # u * total < total, so the index is at most V - 1
        picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        return picked.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def sampled_cross_entropy(logits: Tensor, generator: torch.Generator) -> Tensor:
    """Mean cross-entropy of ``[n, V]`` logits against labels drawn from their own softmax."""
    return F.cross_entropy(logits, sample_categorical(logits, generator))


def lm_sampled_loss(model: torch.nn.Module, parts: Sequence[Part],
                    generator: torch.Generator) -> tuple[Tensor, int]:
    """Mean cross-entropy of the parts' answer positions (row-major, part after part) against
    labels drawn from the model, and their count; logits a part carries are reused, the
    others come from a forward here."""
    pieces = [answer_logits(model, data) if logits is None
              else pick_answer_logits(logits, data["labels"]) for data, logits in parts]
    logits = torch.cat(pieces)
    if logits.shape[0] == 0:  # no answer token to sample: no curvature information
        return logits.sum(), 0
    return sampled_cross_entropy(logits, generator), int(logits.shape[0])


def lm_true_loss(model: torch.nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy over every answer token of the batch (the true labels)."""
    logits = answer_logits(model, batch)
    return F.cross_entropy(logits, batch["labels"][:, 1:][answer_mask(batch["labels"])])


def answer_tokens(batch: Batch) -> int:
    return int(answer_mask(batch["labels"]).sum())


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Right-padded batches stacked into one. The padding ids (0) are never seen by a real
    position: right padding, causal attention and ``attention_mask = 0`` keep them out."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {key: torch.cat([F.pad(b[key], (0, width - b[key].shape[1]), value=value)
                            for b in batches]) for key, value in fill.items()}


def trainable(params: list[Tensor]) -> list[Tensor]:
    return [p for p in params if p.requires_grad]


def align(params: list[Tensor], values: dict[int, Tensor]) -> list[Tensor | None]:
    """``values`` (keyed by id of parameter) as a list aligned with ``params``."""
    return [values.get(id(p)) for p in params]


@dataclass(frozen=True)
class Placement:
    """Where one process's micro-batches sit in the step's whole batch (torch.distributed):
    ``counts[k][i]``, the answer tokens of part i of micro-batch k, over every rank's
    micro-batches rank after rank, and ``first``, the index of this process's first."""

    counts: list[list[int]]
    first: int


# the summed gradient of the losses (each a thunk, built one graph at a time) w.r.t. params
Gradients = Callable[[Sequence[Callable[[], Tensor]], list[Tensor]], list[Tensor | None]]


def summed_gradients(losses: Sequence[Callable[[], Tensor]], params: list[Tensor]) -> list[Tensor | None]:
    """:data:`Gradients` by ``torch.autograd.grad``, leaving ``p.grad`` as it is."""
    summed: list[Tensor | None] = [None] * len(params)
    for loss in losses:
        for j, g in enumerate(torch.autograd.grad(loss(), params, allow_unused=True)):
            if g is not None:
                summed[j] = g if summed[j] is None else summed[j] + g
    return summed


def hutchinson_diagonal(grads: list[Tensor | None], params: list[Tensor], n_samples: int,
                        generator: torch.Generator | None = None) -> list[Tensor]:
    """Mean of ``n_samples`` draws of ``u * (H u)``, ``u`` Rademacher, one tensor per parameter.

    ``grads`` must come from ``autograd.grad(loss, params, create_graph=True)``; a gradient
    that does not depend on the parameters (a linear term) has zero curvature.
    """
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    for k in range(n_samples):
        us = [rademacher(params[i], generator) for i in live]
        hvs = torch.autograd.grad([grads[i] for i in live], [params[i] for i in live],
                                  grad_outputs=us, retain_graph=k < n_samples - 1,
                                  allow_unused=True)
        for i, u, hv in zip(live, us, hvs):
            if hv is not None:
                total[i].add_((u * hv).float())
    return [t.div_(n_samples) for t in total]


def rademacher(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    draw = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return draw.to(like.dtype).mul_(2).sub_(1)


class RandomEstimator:
    """Base of the estimators that draw samples: a private random stream per device (saved
    with the estimator's state), and nothing to do after the objective's backward."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def state_dict(self) -> dict[str, Any]:
        generators = {key: g.get_state() for key, g in self._generators.items()}
        return {"seed": self.seed, "generators": generators}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generators = {}
        for key, value in state["generators"].items():
            self.generator(torch.device(key)).set_state(value)

    def after_backward(self, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        return {}


class GaussNewtonBartlett(RandomEstimator):
    """GNB on the step's parts; ``bs`` = their answer-token count."""

    kind = "gnb"

    def __init__(self, *, seed: int = 0, sampled_loss: SampledLoss | None = None) -> None:
        super().__init__(seed)
        self.sampled_loss = sampled_loss or lm_sampled_loss

    def sample_parts(self, model: torch.nn.Module, parts: Sequence[Part],
                     params: list[Tensor]) -> tuple[list[Tensor | None], int]:
        """One draw: the sampled-label gradient aligned with ``params`` and its token count.

        Where the parts carry logits their graph is kept (``retain_graph``) for the loss's own
        backward.
        """
        device = next(iter(trainable(params) or params)).device
        loss, count = self.sampled_loss(model, parts, self.generator(device))
        if count == 0:
            return [None] * len(params), 0
        live = trainable(params)
        shared = any(logits is not None for _, logits in parts)
        grads = torch.autograd.grad(loss, live, allow_unused=True, retain_graph=shared)
        return align(params, {id(p): g for p, g in zip(live, grads) if g is not None}), int(count)

    def sample(self, model: torch.nn.Module, batch: Batch,
               params: list[Tensor]) -> tuple[list[Tensor | None], int]:
        """:meth:`sample_parts` on one batch, forwarded here."""
        return self.sample_parts(model, [(batch, None)], params)

    def estimate(self, model: torch.nn.Module, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        grads, count = self.sample_parts(model, parts, param_list(opt))
        if count == 0:
            return {}
        opt.update_hessian(bs=count, grads=grads)
        return {"curvature_tokens": float(count)}

    def estimate_accumulated(self, model: torch.nn.Module, micro: Sequence[Sequence[Part]],
                             opt: Any, placement: Placement | None = None,
                             gradients: Gradients | None = None) -> dict[str, float]:
        """:meth:`estimate` on the union of a step's micro-batches, one micro-batch's graph at a
        time: the same labels and the same ``bs``, so N micro-batches of b give the sample of
        one batch of N*b. Part i of the larger batch is the micro-batches' part i in order
        (rows in order), so its uniforms are drawn at once in that order (part by part, micro-
        batch by micro-batch) and each micro-batch takes its slices; its gradient is that of
        its sampled cross-entropy summed over its tokens / the step's tokens (the mean's share).
        The parts' logits are not kept across micro-batches: each is forwarded here.

        Under torch.distributed ``placement`` says where these micro-batches sit among every
        rank's (rank after rank): each process draws the whole step's uniforms and takes its
        own slices, and ``gradients`` (the strategy's backward) sums the ranks' shares, so N
        ranks give the sample of one process with their batches one after another. Every
        micro-batch is then forwarded, even one without answer tokens (its loss is 0): a
        sharded model's forwards are collective."""
        params = param_list(opt)
        live = trainable(params)
        counts = [[answer_tokens(data) for data, _ in parts] for parts in micro]
        layout, first = (placement.counts, placement.first) if placement else (counts, 0)
        total = sum(map(sum, layout))
        if total == 0:
            return {}
        device = live[0].device
        u = torch.rand(total, 1, generator=self.generator(device), dtype=torch.float64, device=device)
        starts, at = [], 0  # starts[i][k]: where micro-batch k's part i begins in u
        for i in range(len(layout[0])):
            column = []
            for k in range(len(layout)):
                column.append(at)
                at += layout[k][i]
            starts.append(column)

        def loss(k: int) -> Tensor:
            logits = torch.cat([answer_logits(model, data) for data, _ in micro[k]])
            draws = torch.cat([u[starts[i][first + k]: starts[i][first + k] + n] for i, n in enumerate(counts[k])])
            return F.cross_entropy(logits, categorical_from_uniforms(logits, draws), reduction="sum") / total

        wanted = range(len(micro)) if placement else [k for k in range(len(micro)) if sum(counts[k])]
        summed = (gradients or summed_gradients)([lambda k=k: loss(k) for k in wanted], live)
        opt.update_hessian(bs=total, grads=align(params, {id(p): g for p, g in zip(live, summed) if g is not None}))
        return {"curvature_tokens": float(total)}


class Hutchinson(RandomEstimator):
    """Hutchinson on the step's parts (one forward of their concatenation), averaging
    ``n_samples`` Rademacher probes."""

    kind = "hutchinson"

    def __init__(self, *, seed: int = 0, n_samples: Annotated[int, AT_LEAST_ONE] = 1,
                 loss: TrueLoss | None = None) -> None:
        super().__init__(seed)
        self.n_samples = int(n_samples)
        self.loss = loss or lm_true_loss

    def sample(self, model: torch.nn.Module, batch: Batch,
               params: list[Tensor]) -> list[Tensor | None]:
        live = trainable(params)
        loss = self.loss(model, batch)
        grads = torch.autograd.grad(loss, live, create_graph=True, allow_unused=True)
        diag = hutchinson_diagonal(list(grads), live, self.n_samples,
                                   self.generator(live[0].device))
        del grads, loss  # drop the double-backward graph now
        return align(params, {id(p): d for p, d in zip(live, diag)})

    def estimate(self, model: torch.nn.Module, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        batch = parts[0][0] if len(parts) == 1 else concat_batches([data for data, _ in parts])
        opt.update_hessian(diagonal=self.sample(model, batch, param_list(opt)))
        return {}


class EmpiricalFisher:
    """Squared true-objective gradients from ``p.grad``, every step (SOUL's released scheme).

    ``bs`` defaults to the parts' answer-token count; give a number to fix it.
    """

    kind = "empirical_fisher"

    def __init__(self, *, bs: Annotated[int, AT_LEAST_ONE] | None = None) -> None:
        self.bs = bs

    def estimate(self, model: torch.nn.Module, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        return {}

    def estimate_accumulated(self, model: torch.nn.Module, micro: Sequence[Sequence[Part]],
                             opt: Any) -> dict[str, float]:
        """Nothing: the accumulated ``p.grad`` is read after the backwards, the parts of every
        micro-batch counted (the loop passes them all)."""
        return {}

    def after_backward(self, parts: Sequence[Part], opt: Any) -> dict[str, float]:
        tokens = sum(answer_tokens(data) for data, _ in parts if "labels" in data)
        opt.update_hessian(bs=int(self.bs or max(1, tokens)))
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


CURVATURE_ESTIMATORS: dict[str, type] = {
    cls.kind: cls for cls in (GaussNewtonBartlett, Hutchinson, EmpiricalFisher)
}


def build_curvature(kind: str, **kw: Any) -> CurvatureEstimator:
    """An estimator by name; unknown names or options raise :class:`UserError`."""
    if kind not in CURVATURE_ESTIMATORS:
        raise unknown_name("curvature estimator", kind, CURVATURE_ESTIMATORS)
    cls = CURVATURE_ESTIMATORS[kind]
    return cls(**schema.validate(cls, kw, f"curvature estimator '{kind}'"))
