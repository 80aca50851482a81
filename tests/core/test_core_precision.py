"""train.precision and train.gradient_checkpointing on a tiny random-init Llama."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from tiny_llama_helpers import FORGET, PLAN, QUIET, RETAIN, batch, tiny_llama

from soulcli.engine.loop import Training, train
from soulcli.models.loading import apply_adapter
from soulcli.models.precision import prepare, resolve
from soulcli.objectives import UnlearnBatch, build_objective
from soulcli.optim import build_optimizer
from soulcli.recipe import LoraConfig, build_recipe
from soulcli.errors import UserError


def steps() -> list[UnlearnBatch]:
    return [UnlearnBatch(batch(FORGET, f), batch(RETAIN, r)) for f, r in PLAN]


def changed_share(precision: str, lr: float) -> tuple[float, torch.nn.Module]:
    """Share of the decoder layers' weights that three AdamW steps at ``lr`` changed, on a
    model stored in bf16 (as a bf16 checkpoint loads)."""
    model = tiny_llama().to(torch.bfloat16)
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    autocast = prepare(model, precision)
    opt = build_optimizer("adamw", list(model.parameters()), lr=lr)
    train(Training(model, opt, build_objective("graddiff"), autocast=autocast), steps(), 3, QUIET, "t")
    moved = [(p.detach().float() != start[n]) for n, p in model.named_parameters() if ".layers." in n]
    return sum(int(m.sum()) for m in moved) / sum(m.numel() for m in moved), model


def test_bf16_mixed_applies_updates_that_bf16_true_loses():
    mixed, model = changed_share("bf16-mixed", 1e-6)
    true, _ = changed_share("bf16-true", 1e-6)
    assert mixed > 0.95  # every Adam step is about lr in size: the fp32 masters keep it
    # |w| ~ 0.02: a 1e-6 step is far below bf16's resolution (2^-9 |w|) and rounds away, but
    # for the few weights within ~1e-4 of 0
    assert true < 0.05
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained)  # the master weights


def test_default_precision_follows_the_model_dtype():
    assert resolve(None, "float32") == "fp32"
    assert resolve(None, "bfloat16") == "bf16-mixed"
    assert resolve("bf16-true", "float32") == "bf16-true"


def test_bf16_mixed_keeps_frozen_weights_in_their_dtype_and_autocasts():
    model = apply_adapter(tiny_llama().to(torch.bfloat16), "lora", LoraConfig(r=2, alpha=4))
    assert prepare(model, "bf16-mixed") == torch.bfloat16
    dtypes = {p.requires_grad: p.dtype for p in model.parameters()}
    assert dtypes == {True: torch.float32, False: torch.bfloat16}


def grads_and_loss(model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    out = build_objective("graddiff")(model, steps()[0])
    out.loss.backward()
    return float(out.loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradient(adapter):
    base = apply_adapter(tiny_llama(), adapter, LoraConfig(r=2, alpha=4))
    ckpt = copy.deepcopy(base)
    prepare(ckpt, "fp32", gradient_checkpointing=True)
    assert ckpt.is_gradient_checkpointing
    loss, grads = grads_and_loss(base)
    loss_ckpt, grads_ckpt = grads_and_loss(ckpt)
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 0
    if adapter == "lora":
        assert all("lora_" in n for n in grads)
    assert max(float((grads[n] - grads_ckpt[n]).abs().max()) for n in grads) <= 1e-6
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3


@pytest.mark.parametrize("raw,problem", [
    ({"train": {"precision": "bf16"}}, "train.precision"),
    ({"train": {"gradient_checkpointing": "maybe"}}, "train.gradient_checkpointing"),
    ({"unlearn": {"grad_accum": 0}}, "unlearn.grad_accum"),
    ({"finetune": {"grad_accum": 1.5}}, "finetune.grad_accum"),
    ({"unlearn": {"grad_accum": 2}, "optimizer": {"name": "sophiah"}}, "hutchinson curvature"),
    ({"unlearn": {"grad_accum": 2, "objective": "pdu"}}, "objective 'pdu'"),
    ({"unlearn": {"grad_accum": 2}, "optimizer": {"name": "zo"}}, "zo estimates"),
])
def test_recipe_refuses_bad_train_keys_in_one_line(raw, problem):
    with pytest.raises(UserError) as err:
        build_recipe(raw)
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_recipe_takes_the_new_keys():
    recipe = build_recipe({"train": {"precision": "bf16-mixed", "gradient_checkpointing": True},
                           "unlearn": {"grad_accum": 4}, "finetune": {"grad_accum": 2}})
    assert (recipe.train.precision, recipe.train.gradient_checkpointing) == ("bf16-mixed", True)
    assert (recipe.unlearn.grad_accum, recipe.finetune.grad_accum) == (4, 2)


def test_bf16_true_warns_that_it_is_lossy():
    from soulcli.workflows.common import prepare_training

    said: list[str] = []
    model = tiny_llama()
    prepare_training(build_recipe({"train": {"precision": "bf16-true"}}), model, SimpleNamespace(info=said.append))
    assert len(said) == 1 and "warning" in said[0] and "is lost" in said[0]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    said.clear()
    prepare_training(build_recipe({"model": {"dtype": "bfloat16"}}), tiny_llama(), SimpleNamespace(info=said.append))
    assert said == []  # the bf16 default, bf16-mixed, is not lossy


def test_bf16_mixed_checkpoints_hold_the_fp32_master_weights(tmp_path):
    from soulcli.engine.checkpoint import Checkpoints

    model = tiny_llama().to(torch.bfloat16)
    autocast = prepare(model, "bf16-mixed")
    opt = build_optimizer("adamw", list(model.parameters()), lr=1e-6)
    ckpt = Checkpoints(tmp_path / "ckpt", every=2, key="k")
    train(Training(model, opt, build_objective("graddiff"), autocast=autocast, checkpoints=ckpt),
          steps(), 3, QUIET, "t")
    state = torch.load(tmp_path / "ckpt" / "step-00000002" / "state.pt", weights_only=True)
    assert {v.dtype for v in state["params"].values()} == {torch.float32}
    assert any(not torch.equal(v, v.bfloat16().float()) for v in state["params"].values())  # not bf16 values
