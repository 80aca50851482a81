"""Unlearning objectives: one module per loss and a registry.

Recipe keys: ``unlearn.objective`` (a name below), ``unlearn.forget_weight`` (gamma),
``unlearn.retain_weight`` (alpha), ``unlearn.retain_loss`` (``nll`` | ``kl``) and each loss's own
hyperparameters (``objective_hparams(name)``).

==========  ====================================================================================
``ga``       -NLL(forget); no retain term
``graddiff`` -NLL(forget) + retain term
``npo``      NPO against the starting model (Zhang et al. 2024) + retain term
``simnpo``   reference-free, length-normalised NPO (Fan et al. 2024) + retain term
``po``       NLL of a refusal to each forget question + retain term
``dpo``      DPO, refusal preferred over the true answer (Rafailov et al. 2023) + retain term
``idkdpo``   the same as ``dpo``
``kl``       -NLL(forget) + KL to the starting model on retain answers (TOFU)
``rmu``      steer a layer's activations on forget data to c*u, keep them on retain (WMDP)
``undial``   distil the starting model with the true token's logit lowered (Dong et al. 2024)
``altpo``    DPO, a perturbed (alternate) answer preferred over the true one (Mekala et al. 2024)
``satimp``   GA, tokens weighted p^b1 (1-p)^b2: saturation and importance (Yang et al. 2025)
``wga``      GA, tokens weighted p^beta (Wang et al. 2025) + retain term
``ceu``      cross-entropy to the model's own distribution minus the true token (Yang et al. 2025)
``pdu``      flatten forget logits s.t. retain loss <= eps, primal-dual (Entesari et al. 2025)
==========  ====================================================================================
"""

from __future__ import annotations

from typing import Any

from soulcli.errors import unknown_name
from soulcli.objectives.altpo import AltPO
from soulcli.objectives.base import Forward, Objective, ObjectiveOutput, UnlearnBatch
from soulcli.objectives.ceu import CEU
from soulcli.objectives.dpo import DPO, IdkDPO
from soulcli.objectives.ga import GradientAscent
from soulcli.objectives.graddiff import GradDiff
from soulcli.objectives.kl import KLMinimization
from soulcli.objectives.npo import NPO
from soulcli.objectives.pdu import PDU
from soulcli.objectives.po import RefusalPO
from soulcli.objectives.refusals import load_refusals, pick_refusal
from soulcli.objectives.rmu import RMU
from soulcli.objectives.satimp import SatImp
from soulcli.objectives.simnpo import SimNPO
from soulcli.objectives.undial import UNDIAL
from soulcli.objectives.wga import WGA

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        *(GradientAscent, GradDiff, NPO, SimNPO, RefusalPO, DPO, IdkDPO, KLMinimization, RMU),
        *(UNDIAL, AltPO, SatImp, WGA, CEU, PDU),
    )
}


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name``; an unknown name lists the known ones."""
    if name not in OBJECTIVES:
        raise unknown_name("objective", name, OBJECTIVES)
    return OBJECTIVES[name]


def build_objective(
    name: str,
    forget_weight: float = 1.0,
    retain_weight: float = 1.0,
    retain_loss: str = "nll",
    **hparams: Any,
) -> Objective:
    """The objective ``name`` with its weights and own hyperparameters (checked: ``UserError``)."""
    return objective_class(name)(
        forget_weight=forget_weight, retain_weight=retain_weight, retain_loss=retain_loss, **hparams
    )


def objective_hparams(name: str) -> dict[str, object]:
    """The objective's own hyperparameters and their defaults, for recipe validation (the
    declarations themselves, bounds and help included: ``objective_class(name).hyperparameters()``)."""
    return {key: spec.default for key, spec in objective_class(name).hyperparameters().items()}


__all__ = [
    "OBJECTIVES",
    "Forward",
    "Objective",
    "ObjectiveOutput",
    "UnlearnBatch",
    "build_objective",
    "load_refusals",
    "objective_class",
    "objective_hparams",
    "pick_refusal",
]
