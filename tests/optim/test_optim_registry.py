"""The registry: names, hyperparameters and the errors a recipe author sees."""

from __future__ import annotations

import pytest
import torch

from soulcli.errors import UserError
from soulcli.optim import OPTIMIZERS, build_optimizer, optimizer_hparams


def params():
    return [torch.nn.Parameter(torch.zeros(2, 2))]


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(UserError) as err:
        build_optimizer("sophia", params(), lr=1e-3)
    message = str(err.value)
    assert "unknown optimizer 'sophia'" in message and "did you mean" in message
    assert all(name in message for name in OPTIMIZERS)


def test_unknown_hyperparameter_names_the_key_and_the_nearest():
    with pytest.raises(UserError, match=r"optimizer 'sophiag': roh: unknown key of this optimizer "
                                        r"\(did you mean 'rho'\?\)$"):
        build_optimizer("sophiag", params(), lr=1e-3, roh=0.1)
    with pytest.raises(UserError, match=r"optimizer 'sophiag': zzz: unknown key of this optimizer "
                                        r"\(valid: .*bias_correction"):  # nothing close: all listed
        build_optimizer("sophiag", params(), lr=1e-3, zzz=0.1)


@pytest.mark.parametrize("key, value, kind", [("rho", "big", "a number"),
                                              ("betas", [0.9], "a list of 2 numbers"),
                                              ("bias_correction", 1, "true or false"),
                                              ("bs", 2.5, "an integer"),
                                              ("diagnostics_every", 1.5, "an integer or null")])
def test_wrong_types_name_the_key(key, value, kind):
    with pytest.raises(UserError, match=f"optimizer 'sophiag': {key}: expected {kind}, got"):
        build_optimizer("sophiag", params(), lr=1e-3, **{key: value})


def test_bad_values_are_user_errors_listed_together():
    with pytest.raises(UserError, match=r"optimizer 'sophiag': rho: must be > 0, got 0.0; "
                                        r"betas\[1\]: must be >= 0 and < 1, got 1.0"):
        build_optimizer("sophiag", params(), lr=1e-3, rho=0.0, betas=[0.9, 1.0])
    with pytest.raises(UserError, match="lr: must be >= 0, got -1"):
        build_optimizer("lion", params(), lr=-1)
    with pytest.raises(UserError, match="adjust_lr_fn: 'x' is not one of"):
        build_optimizer("muon", params(), lr=1e-3, adjust_lr_fn="x")


def test_yaml_forms_are_converted():
    opt = build_optimizer("sophiag", params(), lr="1e-3", betas=[0.9, 0.8])
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.9, 0.8)


def test_every_bad_value_in_one_error():
    with pytest.raises(UserError) as err:
        build_optimizer("adahessian", params(), lr=1e-3, hessian_power=1.5, eps="big")
    assert str(err.value) == ("optimizer 'adahessian': hessian_power: must be > 0 and <= 1, got 1.5; "
                              "eps: expected a number, got 'big'")
    build_optimizer("sophiag", params(), lr=1e-3, diagnostics_every=None)  # None is allowed


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_default_from_the_signature_builds(name):
    hparams = optimizer_hparams(name)
    assert "lr" not in hparams and "weight_decay" not in hparams and "params" not in hparams
    assert "diagnostics_every" in hparams
    opt = build_optimizer(name, params(), lr=1e-3, weight_decay=0.01,
                          **{k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()})
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 0.01


def test_sophia_defaults_are_the_authors():
    hp = optimizer_hparams("sophiag")
    assert hp["betas"] == (0.965, 0.99) and hp["rho"] == 0.04 and hp["eps"] == 1e-15
    assert hp["bias_correction"] is False
