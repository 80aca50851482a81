"""The optimizer registry: recipes choose an optimizer by name and set its hyperparameters."""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch

from soulcli.errors import UserError, did_you_mean, unknown_name
from soulcli.optim.adahessian import AdaHessian
from soulcli.optim.adamw import AdamW
from soulcli.optim.lion import Lion
from soulcli.optim.muon import Muon
from soulcli.optim.sgd import SGD
from soulcli.optim.signum import Signum
from soulcli.optim.sophia import SophiaG, SophiaH

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": AdamW,
    "sgd": SGD,
    "signum": Signum,
    "lion": Lion,
    "sophiag": SophiaG,
    "sophiah": SophiaH,
    "adahessian": AdaHessian,
}
if hasattr(torch.optim, "Muon"):
    OPTIMIZERS["muon"] = Muon

# set by build_optimizer's own arguments, not through **hparams
_COMMON = ("self", "params", "lr", "weight_decay")


def _lookup(name: str) -> type[torch.optim.Optimizer]:
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name]


def optimizer_hparams(name: str) -> dict[str, Any]:
    """The hyperparameters ``name`` accepts besides lr and weight_decay, with their defaults."""
    signature = inspect.signature(_lookup(name).__init__)
    return {k: p.default for k, p in signature.parameters.items() if k not in _COMMON}


def _optional_kind(name: str, key: str) -> Any:
    """For a hyperparameter whose default is None: an example value of the type its annotation
    names besides None (``bool | None`` -> False), or None when it names none we check."""
    annotation = inspect.signature(_lookup(name).__init__).parameters[key].annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    for kind, example in (("bool", False), ("int", 0), ("float", 0.0)):
        if kind in str(text).replace("|", " ").split():
            return example
    return None


def checked_hparam(name: str, key: str, value: Any, default: Any) -> Any:
    """``value`` for hyperparameter ``key`` (default ``default``) of optimizer ``name``, typed
    like the default or, for a None default, like its annotation; a bad one raises UserError."""
    if default is None:
        if value is None:
            return None
        default = _optional_kind(name, key)
    return _check_type(name, key, value, default)


def check_hparam(name: str, key: str, value: Any) -> str | None:
    """Why ``value`` is not valid for hyperparameter ``key`` of optimizer ``name`` (None: it is)."""
    try:
        checked_hparam(name, key, value, optimizer_hparams(name)[key])
    except UserError as err:
        return str(err)
    return None


def _check_type(optimizer: str, key: str, value: Any, default: Any) -> Any:
    """``value`` checked against the kind of ``default`` (tuples become tuples)."""
    def bad(kind: str) -> UserError:
        return UserError(f"optimizer '{optimizer}': {key} must be {kind}, got {value!r}")

    if default is None or isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
    elif isinstance(default, tuple):
        if (not isinstance(value, (list, tuple)) or len(value) != len(default)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(f"a list of {len(default)} numbers")
        return tuple(value)
    elif isinstance(default, str):
        raise bad("a string")
    return value


def build_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0,
                    **hparams: Any) -> torch.optim.Optimizer:
    """Construct the registered optimizer ``name``; unknown names or keys raise UserError."""
    cls = _lookup(name)
    accepted = optimizer_hparams(name)
    checked = {}
    for key, value in hparams.items():
        if key not in accepted:
            raise UserError(f"unknown hyperparameter '{key}' for optimizer '{name}'"
                            f"{did_you_mean(key, accepted)}; valid: {', '.join(sorted(accepted))}")
        checked[key] = checked_hparam(name, key, value, accepted[key])
    for key, value in (("lr", lr), ("weight_decay", weight_decay)):
        _check_type(name, key, value, 0.0)
    return cls(params, lr=lr, weight_decay=weight_decay, **checked)
