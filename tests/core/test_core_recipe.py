"""Recipe validation: typed, frozen, every problem reported at once with its YAML path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from soulcli.errors import UserError
from soulcli.recipe import (Recipe, RecipeError, apply_overrides, build_recipe, dump_recipe,
                            load_recipe, read_yaml)

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"tofu_sophia.yaml", "tofu_adamw.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    # a resolved recipe reparses to the same object
    assert build_recipe(__import__("yaml").safe_load(dump_recipe(recipe))) == recipe


def test_sophia_and_adamw_recipes_differ_only_in_optimizer():
    s = load_recipe(Path("recipes/tofu_sophia.yaml"))
    a = load_recipe(Path("recipes/tofu_adamw.yaml"))
    assert s.optimizer.name == "sophiag" and a.optimizer.name == "adamw"
    assert s.unlearn.objective == a.unlearn.objective == "graddiff"
    assert s.data == a.data and s.unlearn == a.unlearn
    assert s.data.forget_split == "forget10"


def test_frozen_and_typed():
    r = build_recipe({"optimizer": {"lr": "1e-4"}, "eval": {"metrics": "forget_quality,model_utility"}})
    assert r.optimizer.lr == pytest.approx(1e-4) and isinstance(r.optimizer.lr, float)
    assert r.eval.metrics == ("forget_quality", "model_utility")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.optimizer.lr = 1.0  # type: ignore[misc]


def test_all_problems_reported_at_once_with_paths_and_suggestions():
    raw = {
        "optimizer": {"nme": "sophiag", "lr": "fast", "args": {"rhoo": 1.0}},
        "unlearn": {"objective": "gradiff", "epochs": 2.5},
        "data": {"forget_split": "forget11"},
        "modle": {},
    }
    with pytest.raises(RecipeError) as err:
        build_recipe(raw, "r.yaml")
    problems = err.value.problems
    text = str(err.value)
    assert "optimizer.nme: unknown key (did you mean 'name'?)" in problems
    assert any(p.startswith("optimizer.lr: expected a number, got 'fast'") for p in problems)
    assert any(p.startswith("unlearn.epochs: expected an integer") for p in problems)
    assert any(p.startswith("data.forget_split: 'forget11' is not one of") and "did you mean 'forget01'" in p
               or "did you mean 'forget10'" in p for p in problems)
    assert "modle: unknown key (did you mean 'model'?)" in problems
    assert len(problems) == 5
    assert text.startswith("r.yaml has 5 problems")


def test_unknown_names_and_args_checked_against_registries():
    with pytest.raises(RecipeError) as err:
        build_recipe({"optimizer": {"name": "sophia", "args": {}}, "unlearn": {"objective": "gradiff"}})
    problems = err.value.problems
    assert any("optimizer.name: unknown optimizer 'sophia'" in p and "sophiag" in p for p in problems)
    assert any("unlearn.objective: unknown objective 'gradiff' (did you mean 'graddiff'?)" in p for p in problems)
    with pytest.raises(RecipeError) as err:
        build_recipe({"optimizer": {"name": "sophiag", "args": {"rhoo": 1.0}}})
    assert err.value.problems == [
        "optimizer.args.rhoo: unknown key of optimizer 'sophiag' (did you mean 'rho'?)"]


def test_optimizer_args_typed_including_optional_ones():
    """Hyperparameters defaulting to None are checked against their annotation."""
    ok = build_recipe({"optimizer": {"name": "sophiag", "args": {"diagnostics_every": 5}}})
    assert ok.optimizer.args == {"diagnostics_every": 5}
    ok = build_recipe({"optimizer": {"name": "sophiag", "args": {"diagnostics_every": None}}})
    assert ok.optimizer.args == {"diagnostics_every": None}
    with pytest.raises(RecipeError) as err:
        build_recipe({"optimizer": {"name": "sophiag", "args": {"rho": "big", "diagnostics_every": 1.5}}})
    assert sorted(err.value.problems) == [
        "optimizer.args.diagnostics_every: expected an integer or null, got 1.5",
        "optimizer.args.rho: expected a number, got 'big'"]
    with pytest.raises(RecipeError) as err:
        build_recipe({"optimizer": {"name": "sgd", "args": {"nesterov": 3}}})
    assert err.value.problems == ["optimizer.args.nesterov: expected true or false, got 3"]


def test_sophiag_with_hutchinson_rejected_up_front():
    with pytest.raises(RecipeError) as err:
        build_recipe({"optimizer": {"name": "sophiag", "curvature": "hutchinson"}})
    assert len(err.value.problems) == 1 and "use optimizer.name=sophiah" in err.value.problems[0]
    assert build_recipe({"optimizer": {"name": "sophiah", "curvature": "hutchinson"}})


def test_value_rules():
    with pytest.raises(RecipeError) as err:
        build_recipe({"optimizer": {"lr": -1}, "unlearn": {"batch_size": 0}})
    assert set(err.value.problems) == {"optimizer.lr: must be > 0, got -1",
                                       "unlearn.batch_size: must be > 0, got 0"}


@pytest.mark.parametrize("raw, problem", [
    ({"optimizer": {"lr": float("inf")}}, "optimizer.lr: must be a finite number, got inf"),
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr: must be a finite number, got nan"),
    ({"unlearn": {"max_grad_norm": -1}}, "unlearn.max_grad_norm: must be > 0, got -1"),
    ({"unlearn": {"log_every": 0}}, "unlearn.log_every: must be > 0, got 0"),
    ({"threads": -1}, "threads: must be > 0, got -1"),
    ({"model": {"num_heads": 0}}, "model.num_heads: must be > 0, got 0"),
    ({"data": {"num_authors": 1}}, "data.num_authors: must be >= 2, got 1"),
    ({"optimizer": {"name": "sophiag", "args": {"rho": 0}}}, "optimizer.args.rho: must be > 0, got 0"),
    ({"optimizer": {"name": "sophiag", "args": {"betas": [0.9, 1.5]}}},
     "optimizer.args.betas[1]: must be >= 0 and < 1, got 1.5"),
    ({"eval": {"mink_k": 1.5}}, "eval.mink_k: must be > 0 and <= 1, got 1.5"),
])
def test_bounds_are_declared_beside_each_field_and_checked_in_the_same_pass(raw, problem):
    with pytest.raises(RecipeError) as err:
        build_recipe(raw)
    assert err.value.problems == [problem]


def test_the_recipe_and_the_generator_share_one_limit():
    """data.num_authors takes what the built-in generator takes (its declared type)."""
    from soulcli.data.synthetic import generate_benchmark

    assert build_recipe({"data": {"num_authors": 2}}).data.num_authors == 2
    with pytest.raises(UserError, match="num_authors: must be >= 2, got 1"):
        generate_benchmark(num_authors=1)


def test_overrides_are_typed_by_the_schema():
    raw = apply_overrides({}, ["optimizer.name=sophiag", "optimizer.lr=2e-4", "unlearn.epochs=3", "optimizer.args.rho=5",
                               "compare.lr_grid=[1e-5,3e-5]"])
    r = build_recipe(raw)
    assert r.optimizer.lr == pytest.approx(2e-4)
    assert r.unlearn.epochs == 3
    assert r.optimizer.args == {"rho": 5}
    assert r.compare.lr_grid == (1e-5, 3e-5)
    with pytest.raises(RecipeError, match="unlearn.epochs: expected an integer, got 'many'"):
        build_recipe(apply_overrides({}, ["unlearn.epochs=many"]))
    with pytest.raises(UserError, match="expected dotted.key=value"):
        apply_overrides({}, ["optimizer.lr"])


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: [1,\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        read_yaml(lst)


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my_run.yaml"
    p.write_text("seed: 3\n")
    r = load_recipe(p)
    assert r.name == "my_run" and r.seed == 3 and isinstance(r, Recipe)
