"""The registry, hyperparameter checking and the refusal set."""

from __future__ import annotations

import pytest

from soulcli.errors import UserError
from soulcli.objectives import (
    OBJECTIVES,
    build_objective,
    load_refusals,
    objective_hparams,
    pick_refusal,
)


def test_every_objective_module_is_registered_under_its_name():
    """Derived from the package, not a list: a module whose loss is not registered fails."""
    import importlib
    import inspect
    import pkgutil

    import soulcli.objectives as package
    from soulcli.objectives.base import Objective

    defined = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"soulcli.objectives.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Objective) and not inspect.isabstract(cls) and cls.__module__ == module.__name__:
                defined[cls.name] = cls
    assert defined == OBJECTIVES
    for name, cls in OBJECTIVES.items():
        assert cls.name == name
        assert build_objective(name).name == name
    assert issubclass(OBJECTIVES["idkdpo"], OBJECTIVES["dpo"])


def test_unknown_objective_lists_the_choices():
    with pytest.raises(
        UserError,
        match=r"unknown objective 'npoo' \(did you mean 'npo'\?\); choose one of: altpo, ceu, dpo, ga",
    ):
        build_objective("npoo")


def test_unknown_hparam_suggests_the_close_one():
    with pytest.raises(
        UserError,
        match=r"objective 'npo': betta: unknown key \(did you mean 'beta'\?\)$",
    ):
        build_objective("npo", betta=0.2)
    with pytest.raises(UserError, match=r"objective 'npo': zzz: unknown key \(valid: beta, "):
        build_objective("npo", zzz=0.2)  # nothing close: the valid keys are listed
    with pytest.raises(UserError, match="objective 'ga': beta: unknown key"):
        build_objective("ga", beta=0.2)
    with pytest.raises(UserError, match="objective 'ga': kl_top_k: unknown key"):
        build_objective("ga", kl_top_k=8)  # no retain term, so no KL retain term


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "npo", "beta": 0.0}, "beta: must be > 0"),
        ({"name": "npo", "beta": "big"}, "beta: expected a number"),
        ({"name": "npo", "beta": float("nan")}, "beta: must be a finite number"),
        ({"name": "simnpo", "delta": True}, "delta: expected a number"),
        ({"name": "kl", "kl_top_k": -1}, "kl_top_k: must be >= 0"),
        ({"name": "kl", "kl_top_k": 2.5}, "kl_top_k: expected an integer"),
        ({"name": "rmu", "layer": -1}, "layer: must be >= 0"),
        ({"name": "rmu", "layer": 1.5}, "layer: expected an integer or null"),
        ({"name": "rmu", "steering_coeff": 0}, "steering_coeff: must be > 0"),
        ({"name": "ga", "forget_weight": -1.0}, "forget_weight: must be >= 0"),
        ({"name": "po", "retain_weight": "one"}, "retain_weight: expected a number"),
        ({"name": "po", "retain_loss": "mse"}, "retain_loss: 'mse' is not one of 'nll', 'kl'"),
    ],
)
def test_bad_values_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_objective(**kwargs)


def test_hyperparameters_are_declared_on_the_schema():
    params = OBJECTIVES["npo"].hyperparameters()
    assert set(params) == {"beta", "kl_top_k"}
    assert params["beta"].type is float and params["beta"].range.gt == 0
    assert "inverse temperature" in params["beta"].help
    assert set(OBJECTIVES["rmu"].hyperparameters()) == {"layer", "steering_coeff", "seed"}
    with pytest.raises(UserError) as err:  # every problem at once
        build_objective("npo", beta=-1.0, kl_top_k=-2, forget_weight=-1.0)
    assert str(err.value).count("must be") == 3


def test_objective_hparams_gives_defaults():
    assert objective_hparams("ga") == {}
    assert objective_hparams("npo") == {"beta": 0.1, "kl_top_k": 64}
    assert objective_hparams("simnpo")["beta"] == 2.5
    assert objective_hparams("rmu") == {"layer": None, "steering_coeff": 6.5, "seed": 0}
    with pytest.raises(UserError, match="unknown objective"):
        objective_hparams("nope")


def test_values_are_converted_and_stored():
    objective = build_objective("npo", forget_weight=2, retain_weight=0, beta=1)
    assert objective.beta == 1.0 and isinstance(objective.beta, float)
    assert objective.forget_weight == 2.0 and objective.retain_weight == 0.0


def test_uses_retain_follows_the_retain_weight():
    assert not build_objective("ga").uses_retain
    assert build_objective("graddiff").uses_retain
    assert not build_objective("graddiff", retain_weight=0.0).uses_retain
    assert not build_objective("npo", retain_weight=0.0).uses_retain
    assert {n for n, c in OBJECTIVES.items() if c.uses_refusal} == {"po", "dpo", "idkdpo"}


def test_fixed_retain_terms_ignore_retain_loss():
    assert build_objective("kl", retain_loss="nll").retain_loss == "kl"
    assert build_objective("rmu", retain_loss="kl").retain_loss == "activations"


def test_builtin_refusals_are_many_and_varied():
    refusals = load_refusals()
    assert len(refusals) >= 50
    assert len(set(refusals)) == len(refusals)
    assert len({r.split()[0] for r in refusals}) >= 15  # not one sentence with small edits
    assert all(r.strip() == r and r for r in refusals)


def test_refusals_load_from_a_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my refusals\nNo comment.\n\n  Ask someone else.  \n", encoding="utf-8")
    assert load_refusals(path) == ["No comment.", "Ask someone else."]
    assert load_refusals(str(path)) == ["No comment.", "Ask someone else."]


def test_missing_or_empty_refusal_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_refusals(tmp_path / "absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="holds no refusal"):
        load_refusals(empty)


def test_pick_refusal_is_deterministic_and_spreads():
    refusals = load_refusals()
    picks = [pick_refusal(refusals, i, seed=0) for i in range(200)]
    assert picks == [pick_refusal(refusals, i, seed=0) for i in range(200)]
    assert len(set(picks)) > 30
    assert picks != [pick_refusal(refusals, i, seed=1) for i in range(200)]
