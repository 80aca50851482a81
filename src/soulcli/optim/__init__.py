"""Optimizers for unlearning: first-order baselines, Sophia, AdaHessian, curvature estimators,
and one-shot influence unlearning. Each optimizer is a ``torch.optim.Optimizer`` with fp32
state; see :mod:`soulcli.optim.registry` for choosing one by name."""

from soulcli.optim.adahessian import AdaHessian
from soulcli.optim.adamw import AdamW
from soulcli.optim.base import FlatStateOptimizer, SecondOrderOptimizer, param_list, state_bytes
from soulcli.optim.curvature import (
    CURVATURE_ESTIMATORS,
    EmpiricalFisher,
    GaussNewtonBartlett,
    Hutchinson,
    build_curvature,
    hutchinson_diagonal,
)
from soulcli.optim.influence import INFLUENCE_METHODS, influence_unlearn
from soulcli.optim.lion import Lion
from soulcli.optim.muon import Muon
from soulcli.optim.registry import OPTIMIZERS, build_optimizer, optimizer_hparams
from soulcli.optim.sgd import SGD
from soulcli.optim.signum import Signum
from soulcli.optim.sophia import SophiaG, SophiaH, win_rate_warning

__all__ = [
    "AdaHessian", "AdamW", "CURVATURE_ESTIMATORS", "EmpiricalFisher", "FlatStateOptimizer",
    "GaussNewtonBartlett", "Hutchinson", "INFLUENCE_METHODS", "Lion", "Muon", "OPTIMIZERS",
    "SGD", "SecondOrderOptimizer", "Signum", "SophiaG", "SophiaH", "build_curvature",
    "build_optimizer", "hutchinson_diagonal", "influence_unlearn", "optimizer_hparams",
    "param_list", "state_bytes", "win_rate_warning",
]
