"""Problems, a tiny language model and the engine's step loop for the optimizer tests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
from torch import nn

from soulcli.data.encode import IGNORE_INDEX
from soulcli.optim import build_curvature, build_optimizer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine every parallel
    region can wait milliseconds for a descheduled worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Holder(nn.Module):
    """A model that is just one parameter (plus an optional one the loss never uses)."""

    def __init__(self, start: torch.Tensor, unused: bool = False) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.clone())
        self.unused = nn.Parameter(torch.full((3, 2), 0.5, dtype=start.dtype)) if unused else None


@dataclass(frozen=True)
class Problem:
    """``loss(theta) = 0.5 * |residuals(theta)|^2`` with its minimiser."""

    name: str
    start: torch.Tensor
    minimum: torch.Tensor
    residuals: Callable[[torch.Tensor], torch.Tensor]

    def loss(self, model: Holder, batch: Any = None) -> torch.Tensor:
        return 0.5 * self.residuals(model.theta.float()).square().sum()

    def sampled_loss(self, model: Holder, parts: Any,
                     generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Gauss-Newton-Bartlett for least squares: targets drawn from N(prediction, I)."""
        r = self.residuals(model.theta.float())
        noise = torch.randn(r.shape, generator=generator)
        return 0.5 * (r - r.detach() - noise).square().sum(), 1

    def estimator(self, kind: str) -> Any:
        if kind == "gnb":
            return build_curvature("gnb", seed=0, sampled_loss=self.sampled_loss)
        if kind == "hutchinson":
            return build_curvature("hutchinson", seed=0, loss=self.loss)
        return build_curvature(kind)


CURV = torch.tensor([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0], [1.5, 2.5, 0.8], [1.2, 3.5, 0.6]])
QUADRATIC = Problem(
    "quadratic",
    start=torch.tensor([[1.0, -0.8, 0.6], [-0.5, 0.9, -1.1], [0.7, 0.4, -0.3], [-1.0, 0.2, 0.8]]),
    minimum=torch.zeros(4, 3),
    residuals=lambda t: (CURV.sqrt() * t).reshape(-1),
)
# Rosenbrock (a=1, b=100) from the classic start (-1.2, 1), as a 1 x 2 matrix
ROSENBROCK = Problem(
    "rosenbrock",
    start=torch.tensor([[-1.2, 1.0]]),
    minimum=torch.tensor([[1.0, 1.0]]),
    residuals=lambda t: torch.stack([1 - t[0, 0], 10 * (t[0, 1] - t[0, 0] ** 2)]),
)


class Run:
    """The engine's step (curvature estimate, backward, after-backward, step, diagnostics)."""

    def __init__(self, name: str, problem: Problem, lr: float, steps: int, *, interval: int = 2,
                 dtype: torch.dtype = torch.float32, unused: bool = False,
                 weight_decay: float = 0.0, **hparams: Any) -> None:
        self.problem, self.steps, self.interval = problem, steps, interval
        self.model = Holder(problem.start.to(dtype), unused=unused)
        self.opt = build_optimizer(name, self.model.parameters(), lr=lr,
                                   weight_decay=weight_decay, **hparams)
        kind = self.opt.default_curvature
        self.est = problem.estimator(kind) if kind else None
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda t: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t / steps, 1.0))))
        self.step_index = 0
        self.diagnostics: list[dict[str, float]] = []

    def run(self, count: int | None = None) -> "Run":
        for _ in range(self.steps if count is None else count):
            step = self.step_index
            parts = [({}, None)]  # no language-model batch: the problem's losses ignore it
            if self.opt.zeroth_order:  # the loss closure in place of a backward (engine.loop)
                self.opt.step(lambda: self.problem.loss(self.model))
            else:
                if self.est is not None and step % self.interval == 0:
                    self.est.estimate(self.model, parts, self.opt)
                self.problem.loss(self.model).backward()
                if self.est is not None:
                    self.est.after_backward(parts, self.opt)
                self.opt.step()
            self.diagnostics.append(self.opt.diagnostics())
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            self.step_index += 1
        return self

    def distance(self) -> float:
        return float((self.model.theta.detach().float() - self.problem.minimum).norm())

    def checkpoint(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "theta": self.model.theta.detach().clone(),
                "sched": self.sched.state_dict(), "step": self.step_index,
                "est": self.est.state_dict() if self.est is not None else None}

    def restore(self, saved: dict[str, Any]) -> None:
        self.opt.load_state_dict(saved["opt"])
        with torch.no_grad():
            self.model.theta.copy_(saved["theta"])
        self.sched.load_state_dict(saved["sched"])
        self.step_index = saved["step"]
        if self.est is not None:
            self.est.load_state_dict(saved["est"])


@pytest.fixture
def problems() -> SimpleNamespace:
    return SimpleNamespace(quadratic=QUADRATIC, rosenbrock=ROSENBROCK, Run=Run)


class TinyLM(nn.Module):
    """A softmax model called like an HF one: ``logits = tanh(embed[ids]) @ head.T + bias``."""

    def __init__(self, vocab: int = 5, dim: int = 3, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(vocab, dim, generator=g, dtype=dtype))
        self.head = nn.Parameter(torch.randn(vocab, dim, generator=g, dtype=dtype))
        self.bias = nn.Parameter(0.1 * torch.randn(vocab, generator=g, dtype=dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.tanh(self.embed[input_ids]) @ self.head.T + self.bias)


def lm_batch(rows: list[list[int]], prompt: int = 1, vocab: int = 5) -> dict[str, torch.Tensor]:
    """Right-padded batch; the first ``prompt`` tokens of each row are the prompt, -100 labels."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        assert all(0 <= t < vocab for t in r)
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, prompt:len(r)] = torch.tensor(r[prompt:])
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture
def tiny() -> SimpleNamespace:
    return SimpleNamespace(LM=TinyLM, batch=lm_batch)
