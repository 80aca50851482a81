"""The numeric precision a model trains in, and gradient checkpointing (``train.*`` keys).

``model.dtype`` is the dtype a model is loaded and saved in; ``train.precision`` how it trains:

* ``fp32``: every parameter in float32, no autocast;
* ``bf16-mixed`` (the default for a bfloat16 / float16 model): the trained parameters are held
  in float32 (the master weights that the optimizer updates and checkpoints save), the
  frozen ones stay in ``model.dtype``, and the forward runs under bf16 autocast (Micikevicius
  et al. 2018, "Mixed Precision Training", with bf16 needing no loss scaling);
* ``bf16-true``: every parameter in bfloat16, updated in place. An update smaller than half a
  unit in the last place of a weight (about ``|w| * 2**-9``) rounds back to the weight: at
  lr 1e-6 most updates are lost. The run warns (:data:`LOSSY`).

soulcli's optimizers keep their state and curvature in float32 whatever the parameter dtype
(:mod:`soulcli.optim.base`).
"""

from __future__ import annotations

import torch

from soulcli.errors import UserError

LOSSY = ("train.precision bf16-true updates the bf16 weights in place: a step smaller than a "
         "weight's bf16 resolution (about |w| * 2^-9) is lost; train.precision: bf16-mixed keeps "
         "fp32 master weights")


def resolve(precision: str | None, dtype: str) -> str:
    """``train.precision``, its default filled in from ``model.dtype``."""
    if precision is not None:
        return precision
    return "fp32" if dtype == "float32" else "bf16-mixed"


def prepare(model: torch.nn.Module, precision: str, gradient_checkpointing: bool = False) -> torch.dtype | None:
    """Put ``model``'s parameters in the dtypes ``precision`` trains them in (in place: the
    parameter objects stay, so call it before building the optimizer) and turn on gradient
    checkpointing; returns the autocast dtype of the forward (None: no autocast)."""
    if precision == "fp32":
        model.float()
    elif precision == "bf16-true":
        model.to(torch.bfloat16)
    else:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", True) or not hasattr(
                model, "gradient_checkpointing_enable"):
            raise UserError(f"train.gradient_checkpointing: {type(model).__name__} does not support "
                            "gradient checkpointing; set train.gradient_checkpointing: false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "peft_config"):  # frozen embeddings: give the adapters' inputs a grad
            model.enable_input_require_grads()
    return torch.bfloat16 if precision == "bf16-mixed" else None


def store(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """After training: every parameter back in the dtype the model is saved in (``model.dtype``)."""
    if any(p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
