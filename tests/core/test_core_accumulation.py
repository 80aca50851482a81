"""Gradient accumulation: N micro-batches of b make the update of one batch of N*b.

The items have unequal answer lengths, so a mean of the micro-batches' means would differ
from the step's token mean; the curvature (SophiaG + GNB, refreshed every step) must be
sampled as for the larger batch too.
"""

from __future__ import annotations

import pytest
import torch
from tiny_llama_helpers import FORGET, PLAN, QUIET, RETAIN, batch, items, tiny_llama

from soulcli.data.encode import IGNORE_INDEX, pad_batch
from soulcli.engine.loop import MicroBatches, Training, train
from soulcli.engine.sampling import split
from soulcli.objectives import UnlearnBatch, build_objective
from soulcli.objectives.base import with_shares
from soulcli.optim import build_curvature, build_optimizer
from soulcli.workflows.finetune import adamw, nll_forward

def unlearn_steps(objective, grad_accum: int) -> list:
    steps = []
    for f, r in PLAN:
        whole = UnlearnBatch(batch(FORGET, f), batch(RETAIN, r))
        if grad_accum == 1:
            steps.append(whole)
            continue
        micro = [UnlearnBatch(batch(FORGET, a), batch(RETAIN, b))
                 for a, b in zip(split(f, grad_accum), split(r, grad_accum))]
        steps.append(MicroBatches(with_shares(objective, micro)))
    return steps


def run_unlearn(optimizer: str, grad_accum: int, rho: float = 10.0, eps: float = 1e-3):
    model = tiny_llama()
    objective = build_objective("graddiff")
    # rho 10: nearly every coordinate takes the curvature step m / (rho * bs * h + eps) (win
    # rate 0.97), so the update depends on bs and h everywhere; eps 1e-3 bounds how much that
    # division magnifies fp32 rounding (with eps 1e-15 a coordinate whose h is a cancelling
    # sum moves ~1e-4 between the two summation orders)
    args = {"rho": rho, "eps": eps} if optimizer == "sophiag" else {}
    # AdamW's first steps move every coordinate by about lr whatever its gradient's size, so
    # the two summation orders' fp32 rounding shows up in proportion to lr (about 4e-5 of the
    # movement: 1.2e-6 at lr 1e-2 on one CPU, 1.2e-7 at 1e-3): lr 1e-3 keeps it well under 1e-6
    lr = 1e-2 if optimizer == "sophiag" else 1e-3
    opt = build_optimizer(optimizer, [p for p in model.parameters()], lr=lr, **args)
    curvature = build_curvature("gnb", seed=3) if optimizer == "sophiag" else None
    run = Training(model, opt, objective, curvature=curvature, hessian_interval=1, max_grad_norm=None)
    result = train(run, unlearn_steps(objective, grad_accum), len(PLAN), QUIET, "t")
    return model, result


@pytest.mark.parametrize("optimizer", ["adamw", "sophiag"])
def test_unlearn_grad_accum_matches_the_larger_batch(optimizer):
    big, big_run = run_unlearn(optimizer, 1)
    acc, acc_run = run_unlearn(optimizer, 2)
    start = dict(tiny_llama().named_parameters())
    moved = max(float((p.detach() - start[n].detach()).abs().max()) for n, p in big.named_parameters())
    assert moved > 1e-3  # the steps did move the weights
    diff = max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(big.parameters(), acc.parameters()))
    assert diff <= 1e-6
    for a, b in zip(big_run.rows, acc_run.rows):  # the logged loss and terms are the step's
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-6)
        assert a["retain_loss"] == pytest.approx(b["retain_loss"], rel=1e-6)
        # their difference (about 4.1 - 4.1): fp32 rounding of the two, not of the difference
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        if optimizer == "sophiag":
            assert a["curvature_tokens"] == b["curvature_tokens"] > 0
            assert a["hessian_norm"] == pytest.approx(b["hessian_norm"], rel=1e-6)
            assert a["win_rate"] == b["win_rate"] > 0.9


def test_sophia_accumulation_draws_the_same_sample():
    """At Sophia's usual eps and a rho that clips most coordinates the curvature of the
    accumulated step is still the larger batch's: the same token count, win rates and Hessian
    norm (to 1e-6) at every step."""
    big, acc = run_unlearn("sophiag", 1, 0.05, 1e-15)[1].rows, run_unlearn("sophiag", 2, 0.05, 1e-15)[1].rows
    assert [r["curvature_tokens"] for r in big] == [r["curvature_tokens"] for r in acc] == [47.0, 49.0, 48.0]
    assert [r["win_rate"] for r in big] == [r["win_rate"] for r in acc]
    for a, b in zip(big, acc):
        assert a["hessian_norm"] == pytest.approx(b["hessian_norm"], rel=1e-6)


def test_a_mean_of_micro_batch_means_would_differ():
    """Without the shares (each micro-batch its own mean, halved) the weights differ: the
    equivalence above depends on the token weighting."""
    objective = build_objective("graddiff")
    steps = [MicroBatches(
        [UnlearnBatch(m.forget, m.retain, share=(0.5, 0.5)) for m in step])
        for step in unlearn_steps(objective, 2)]
    model = tiny_llama()
    opt = build_optimizer("sgd", list(model.parameters()), lr=1.0)
    train(Training(model, opt, objective, max_grad_norm=None), steps, len(PLAN), QUIET, "t")
    ref = tiny_llama()
    opt = build_optimizer("sgd", list(ref.parameters()), lr=1.0)
    train(Training(ref, opt, objective, max_grad_norm=None), unlearn_steps(objective, 1), len(PLAN), QUIET, "t")
    assert max(float((p - q).abs().max()) for p, q in zip(model.parameters(), ref.parameters())) > 1e-4


def test_npo_shares_are_rows():
    """NPO's forget term is a mean over sequences: its share is the micro-batch's rows."""
    objective = build_objective("npo")
    micro = [UnlearnBatch(batch(FORGET, [0]), batch(RETAIN, [0, 1])),
             UnlearnBatch(batch(FORGET, [1, 2, 3]), batch(RETAIN, [2, 3]))]
    retain_tokens = [int((batch(RETAIN, i)["labels"][:, 1:] != IGNORE_INDEX).sum()) for i in ([0, 1], [2, 3])]
    shares = [m.share for m in with_shares(objective, micro)]
    assert [s[0] for s in shares] == [0.25, 0.75]
    assert [s[1] for s in shares] == [t / sum(retain_tokens) for t in retain_tokens]


def test_finetune_grad_accum_matches_the_larger_batch():
    pool = items(8, 5)

    def steps(grad_accum: int):
        out = []
        for idx in ([0, 1, 2, 3], [4, 5, 6, 7], [1, 3, 5, 7]):
            whole = pad_batch([pool[i] for i in idx], 0)
            if grad_accum == 1:
                out.append(whole)
                continue
            micro = [pad_batch([pool[i] for i in piece], 0) for piece in split(idx, grad_accum)]
            tokens = [(m["labels"][:, 1:] != IGNORE_INDEX).sum() for m in micro]
            out.append(MicroBatches({**m, "share": t / sum(tokens)} for m, t in zip(micro, tokens)))
        return out

    models = []
    for grad_accum in (1, 2):
        model = tiny_llama()
        opt = adamw(list(model.parameters()), 1e-3, 0.01, torch.device("cpu"))
        train(Training(model, opt, nll_forward, max_grad_norm=1.0), steps(grad_accum), 3, QUIET, "t")
        models.append(model)
    diff = max(float((p - q).abs().max()) for p, q in zip(*(m.parameters() for m in models)))
    assert diff <= 1e-6


def test_split_keeps_order_and_sizes():
    assert split([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]
    assert split([1, 2, 3], 2) == [[1, 2], [3]]
    assert split([7], 4) == [[7]]
