"""Optimizers for unlearning: first-order baselines, zeroth-order MeZO, Sophia, AdaHessian, curvature estimators,
and one-shot influence unlearning. Each optimizer is a per-parameter update rule on fp32 state
(:class:`soulcli.optim.base.RuleOptimizer`); see :mod:`soulcli.optim.registry` for choosing
one by name and :func:`decay_groups` for the default weight-decay exemptions."""

from soulcli.optim.adahessian import AdaHessian
from soulcli.optim.adamw import AdamW
from soulcli.optim.base import (
    RuleOptimizer,
    SecondOrderOptimizer,
    decay_groups,
    param_list,
    state_bytes,
)
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
from soulcli.optim.zo import ZO

__all__ = [
    "AdaHessian", "AdamW", "CURVATURE_ESTIMATORS", "EmpiricalFisher", "GaussNewtonBartlett",
    "Hutchinson", "INFLUENCE_METHODS", "Lion", "Muon", "OPTIMIZERS", "RuleOptimizer", "SGD",
    "SecondOrderOptimizer", "Signum", "SophiaG", "SophiaH", "build_curvature",
    "build_optimizer", "decay_groups", "hutchinson_diagonal", "influence_unlearn",
    "optimizer_hparams", "param_list", "state_bytes", "win_rate_warning", "ZO",
]
