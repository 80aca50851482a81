"""Every objective runs on a peft LoRA model, with first- and second-order torch machinery."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from soulcli.objectives import OBJECTIVES, build_objective

DISTINCT = sorted(set(OBJECTIVES) - {"idkdpo"})  # idkdpo is dpo under another name


def lora(model):
    return get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
@pytest.mark.parametrize("name", DISTINCT)
def test_objective_trains_a_lora_model(make_llama, make_batches, name, optimizer):
    model = lora(make_llama())
    batches = make_batches(2)
    objective = build_objective(name, retain_loss="kl" if name in ("graddiff", "po") else "nll")
    objective.setup(model, batches, None, "k")
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.Adam(params, lr=1e-2)
        if optimizer == "adam"
        else torch.optim.LBFGS(params, lr=0.1, max_iter=2)
    )
    for batch in batches if optimizer == "adam" else batches[:1]:

        def closure():
            opt.zero_grad()
            out = objective(model, batch)
            loss, logs = out.loss, out.terms
            assert math.isfinite(loss.item()) and math.isfinite(logs["forget_loss"])
            loss.backward()
            return loss

        opt.step(closure)
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in base.items())
    assert any(not torch.equal(now[n], v) for n, v in trained.items())


@pytest.mark.parametrize("name", DISTINCT)
def test_objective_supports_hessian_vector_products(make_llama, make_batches, name):
    """Second-order optimizers differentiate the gradient again (Hutchinson / Gauss-Newton probes)."""
    model = make_llama(attn="eager")
    batches = make_batches(1)
    objective = build_objective(name)
    objective.setup(model, batches, None, "k")
    params = list(model.parameters())
    loss = objective(model, batches[0]).loss
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    probe = [torch.randn_like(p) for p, _ in used]
    hvp = torch.autograd.grad(
        [g for _, g in used], [p for p, _ in used], grad_outputs=probe, allow_unused=True
    )
    assert any(h is not None and bool(h.abs().sum() > 0) for h in hvp)
