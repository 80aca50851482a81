"""Checkpoints (engine.checkpoint): a run stopped after any step and resumed from its checkpoint
ends bit for bit where the uninterrupted run ends, for torch AdamW and for SophiaG fed by GNB
(whose labels come from the estimator's own generator) on a model with dropout (the global
torch generator)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from soulcli.data.encode import IGNORE_INDEX
from soulcli.engine import checkpoint
from soulcli.engine.checkpoint import Checkpoints
from soulcli.engine.loop import Training, make_scheduler, train
from soulcli.engine.progress import Reporter
from soulcli.errors import UserError
from soulcli.optim import SophiaG, build_curvature

VOCAB, STEPS = 7, 6
QUIET = Reporter(Console(quiet=True), quiet=True)


class DropoutLM(nn.Module):
    """``logits = head(dropout(embed[ids]))``: dropout draws from torch's global generator."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(VOCAB, 4, generator=g))
        self.head = nn.Parameter(torch.randn(VOCAB, 4, generator=g))
        self.drop = nn.Dropout(0.3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.drop(self.embed[input_ids]) @ self.head.T)


def lm_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> SimpleNamespace:
    logits = model(batch["input_ids"], batch["attention_mask"]).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)
    return SimpleNamespace(loss=loss, terms={"random": random.random() + float(np.random.rand())},
                           logits=[(batch, logits)])


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (3, 5), generator=g)
        labels = ids.clone()
        labels[:, :2] = IGNORE_INDEX
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def make_run(kind: str, ckpt: Checkpoints | None = None) -> Training:
    torch.manual_seed(5)
    model = DropoutLM()
    if kind == "adamw":
        opt, curvature = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1), None
    else:
        opt, curvature = SophiaG(model.parameters(), lr=0.05, rho=1.0, diagnostics_every=3), build_curvature("gnb", seed=3)
    return Training(model, opt, lm_forward, scheduler=make_scheduler(opt, "cosine", STEPS, 2),
                    curvature=curvature, hessian_interval=2, checkpoints=ckpt)


def final_state(run: Training) -> list:
    return [p.detach().clone() for p in run.model.parameters()] + [
        t for s in run.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]


def timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "step_seconds")} for row in rows]


@pytest.mark.parametrize("kind", ["adamw", "sophiag"])
@pytest.mark.parametrize("stop", [1, 3, 4])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(kind, stop, tmp_path):
    random.seed(0), np.random.seed(0)
    whole = make_run(kind)
    expected = train(whole, batches(), STEPS, QUIET, "t")
    expected_state, rng_after = final_state(whole), torch.get_rng_state()

    random.seed(0), np.random.seed(0)
    ckpt = Checkpoints(tmp_path / "ckpt", every=1, key="k")
    first = make_run(kind, ckpt)
    train(first, batches()[:stop], STEPS, QUIET, "t")  # as if killed after step `stop`
    torch.rand(10), random.random(), np.random.rand()  # what a killed process drew is lost
    saved = checkpoint.find(ckpt.folder, "k")
    assert saved.name == f"step-{stop:08d}" and [p.name for p in ckpt.folder.iterdir()] == [saved.name]
    resumed = make_run(kind, Checkpoints(ckpt.folder, 1, "k", resume_from=saved))
    replayed: list[dict] = []
    result = train(resumed, batches(), STEPS, QUIET, "t", on_row=replayed.append)

    assert result.steps == STEPS and result.tokens == expected.tokens
    assert timeless(result.rows) == timeless(expected.rows) == timeless(replayed)
    assert all(torch.equal(a, b) for a, b in zip(final_state(resumed), expected_state, strict=True))
    assert torch.equal(torch.get_rng_state(), rng_after)
    if kind == "sophiag":
        assert "win_rate" in result.rows[3] and "win_rate" not in result.rows[4]  # every 3 steps
        assert resumed.curvature.state_dict()["generators"]["cpu"].equal(
            whole.curvature.state_dict()["generators"]["cpu"])


def test_the_latest_checkpoint_is_the_only_one_kept_and_another_recipes_is_refused(tmp_path):
    ckpt = Checkpoints(tmp_path / "ckpt", every=2, key="mine")
    train(make_run("adamw", ckpt), batches()[:5], STEPS, QUIET, "t")
    assert sorted(p.name for p in ckpt.folder.iterdir() if not p.name.startswith(".")) == ["step-00000004"]
    with pytest.raises(UserError, match="written by another recipe or seed"):
        checkpoint.find(ckpt.folder, "theirs")
    with pytest.raises(UserError, match="no checkpoint in"):
        checkpoint.find(tmp_path / "none", "mine")
    assert checkpoint.checkpoint_dir(tmp_path / "runs" / "micro") == tmp_path / "runs" / ".micro.ckpt"


class Recorder:
    """A step-end hook with state: the steps it saw and the weights at the last one."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.seen, self.weights = model, [], torch.zeros(VOCAB, 4)

    def __call__(self, step: int) -> None:
        self.seen.append(step)
        self.weights = self.model.embed.detach().clone()

    def state_dict(self) -> dict:
        return {"seen": self.seen, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.weights = state["seen"], state["weights"]


def test_a_step_end_hooks_state_is_checkpointed_and_restored(tmp_path):
    whole = make_run("adamw")
    expected = Recorder(whole.model)
    train(whole, batches(), STEPS, QUIET, "t", on_step_end=expected)
    ckpt = Checkpoints(tmp_path / "ckpt", every=1, key="k")
    first = make_run("adamw", ckpt)
    train(first, batches()[:3], STEPS, QUIET, "t", on_step_end=Recorder(first.model))
    resumed = make_run("adamw", Checkpoints(ckpt.folder, 1, "k", resume_from=checkpoint.find(ckpt.folder, "k")))
    hook = Recorder(resumed.model)
    train(resumed, batches(), STEPS, QUIET, "t", on_step_end=hook)
    assert hook.seen == expected.seen == [1, 2, 3, 4, 5, 6]
    assert torch.equal(hook.weights, expected.weights)
