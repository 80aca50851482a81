"""Directions of one step, and NPO's gradient as weighted gradient ascent (Zhang et al. 2024)."""

from __future__ import annotations

import copy

import pytest
import torch

from soulcli.data.encode import IGNORE_INDEX
from soulcli.objectives import OBJECTIVES, build_objective

DISTINCT = sorted(set(OBJECTIVES) - {"idkdpo"})  # idkdpo is dpo under another name


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-probability of each label and the answer mask, ``[B, T-1]``, by
    log_softmax and gather: an independent path from the library's cross-entropy one."""
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask, mask


def summed_logp(model, data) -> torch.Tensor:
    """S per sequence via token_logprobs (log_softmax path, not the objectives')."""
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    return token_logprobs(logits, data["labels"])[0].sum(-1)


@torch.no_grad()
def mean_nll(model, data) -> float:
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    logp, mask = token_logprobs(logits, data["labels"])
    return float(-logp.sum() / mask.sum())


def sgd_step(objective, model, batch, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = objective(model, batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_one_ga_step_raises_forget_nll(make_llama, make_batches):
    model, (batch,) = make_llama(), make_batches(1)
    before = mean_nll(model, batch.forget)
    sgd_step(build_objective("ga"), model, batch, lr=0.5)
    assert mean_nll(model, batch.forget) > before + 1e-3


def test_one_po_step_raises_the_refusal_likelihood(make_llama, make_batches):
    model, (batch,) = make_llama(), make_batches(1)
    with torch.no_grad():
        before = summed_logp(model, batch.forget_refusal)
    sgd_step(build_objective("po", retain_weight=0.0), model, batch, lr=0.5)
    with torch.no_grad():
        after = summed_logp(model, batch.forget_refusal)
    assert bool((after > before).all())


# pdu's dual variable moves between calls: see test_obj_added for its step
@pytest.mark.parametrize("name", [name for name in DISTINCT if name != "pdu"])
def test_one_small_step_lowers_every_loss(make_llama, make_batches, name):
    model, batches = make_llama(), make_batches(1)
    objective = build_objective(name, retain_loss="kl" if name == "npo" else "nll")
    objective.setup(model, batches, None, "k")
    before = objective(model, batches[0]).loss
    sgd_step(objective, model, batches[0], lr=0.05)
    after = objective(model, batches[0]).loss
    assert after.item() < before.item()


def test_npo_gradient_is_ga_gradient_weighted_per_sequence(make_llama, make_batches):
    """grad L_NPO = mean_i W_i grad S_i with W_i = 2 pi^b / (pi^b + pi_ref^b) (the NPO paper)."""
    model, (batch,) = make_llama(), make_batches(1, size=4)
    start = copy.deepcopy(model)
    beta = 0.5
    objective = build_objective("npo", beta=beta, retain_weight=0.0)
    objective.setup(model, [batch], None, "k")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move away from the start so the weights differ per sequence
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    params = [p for p in model.parameters()]

    loss = objective(model, batch).loss
    npo_grad = torch.autograd.grad(loss, params)

    s = summed_logp(model, batch.forget)
    with torch.no_grad():
        s_ref = summed_logp(start, batch.forget).double()
    pi_b, ref_b = torch.exp(beta * s.detach().double()), torch.exp(beta * s_ref)
    weights = 2 * pi_b / (pi_b + ref_b)
    assert float(weights.max() - weights.min()) > 0.1
    expected = [torch.zeros_like(p) for p in params]
    for i in range(len(s)):
        ga_grad = torch.autograd.grad(s[i], params, retain_graph=True)
        for acc, g in zip(expected, ga_grad):
            acc += float(weights[i]) * g / len(s)
    flat_npo = torch.cat([g.flatten() for g in npo_grad])
    flat_expected = torch.cat([g.flatten() for g in expected])
    torch.testing.assert_close(
        flat_npo, flat_expected, rtol=1e-4, atol=1e-6 * float(flat_expected.abs().max())
    )
