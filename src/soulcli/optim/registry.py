"""The optimizer registry: recipes choose an optimizer by name and set its hyperparameters.

Adding an optimizer is one module (its rule and constructor, see :mod:`soulcli.optim.base`)
plus its line here; the shared test suite picks it up from :data:`OPTIMIZERS`.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from soulcli import schema
from soulcli.errors import UserError, unknown_name
from soulcli.optim.adahessian import AdaHessian
from soulcli.optim.adamw import AdamW
from soulcli.optim.base import RuleOptimizer
from soulcli.optim.lion import Lion
from soulcli.optim.muon import Muon
from soulcli.optim.sgd import SGD
from soulcli.optim.signum import Signum
from soulcli.optim.sophia import SophiaG, SophiaH
from soulcli.optim.zo import ZO

OPTIMIZERS: dict[str, type[RuleOptimizer]] = {
    "adamw": AdamW,
    "sgd": SGD,
    "signum": Signum,
    "lion": Lion,
    "sophiag": SophiaG,
    "sophiah": SophiaH,
    "adahessian": AdaHessian,
    "zo": ZO,
}
if hasattr(torch.optim, "Muon"):
    OPTIMIZERS["muon"] = Muon

# set by build_optimizer's own arguments, not through **hparams
_COMMON = ("params", "lr", "weight_decay")


def _lookup(name: str) -> type[RuleOptimizer]:
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name]


def optimizer_hparams(name: str) -> dict[str, Any]:
    """The hyperparameters ``name`` accepts besides lr and weight_decay, with their defaults."""
    return {k: p.default for k, p in schema.params_of(_lookup(name), skip=_COMMON).items()}


def build_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0,
                    **hparams: Any) -> RuleOptimizer:
    """Construct the registered optimizer ``name`` on a parameter list or param groups (e.g.
    :func:`soulcli.optim.base.decay_groups`); every bad name, key or value raises one UserError."""
    cls = _lookup(name)
    try:
        checked = schema.validate(cls, dict(hparams, lr=lr, weight_decay=weight_decay),
                                  "this optimizer", skip=("params",))
    except UserError as err:
        raise UserError(f"optimizer '{name}': {err}") from None
    return cls(params, **checked)
