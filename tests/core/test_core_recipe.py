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


def test_trainable_patterns_are_regexes_for_full_parameter_runs():
    with pytest.raises(RecipeError) as err:
        build_recipe({"model": {"trainable": ["layers\\.(0", "ok"], "adapter": "lora"}})
    assert err.value.problems[0].startswith("model.trainable[0]: 'layers\\\\.(0' is not a regular expression")
    assert err.value.problems[1].startswith("model.trainable: selects parameters for model.adapter: full")
    assert len(err.value.problems) == 2


def test_trainable_freezes_every_parameter_no_pattern_matches():
    """RMU's selection (WMDP: the down-projections of layers l-2..l) on a tiny Llama: exactly the
    matched tensors keep requires_grad; a pattern matching nothing is one line naming it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from soulcli.models.loading import apply_adapter

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=4, num_attention_heads=2))
    apply_adapter(model, "full", None, [r"layers\.(0|1)\.mlp\.down_proj\.weight", r"^model\.norm\.weight$"])
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight",
                       "model.norm.weight"]
    with pytest.raises(UserError) as err:
        apply_adapter(model, "full", None, [r"layers\.9\."])
    assert str(err.value) == ("model.trainable: 'layers\\\\.9\\\\.' matches no parameter; the model has e.g. "
                              "model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight, "
                              "model.layers.0.self_attn.k_proj.weight")
    fresh = LlamaForCausalLM(model.config)
    assert apply_adapter(fresh, "full", None, ()) is fresh and all(p.requires_grad for p in fresh.parameters())


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
    ({"threads": -1}, "threads: must be > 0 and <= 4096, got -1"),
    ({"threads": 10**30}, f"threads: must be > 0 and <= 4096, got {10**30}"),
    ({"model": {"num_heads": 0}}, "model.num_heads: must be > 0, got 0"),
    ({"data": {"num_authors": 1}}, "data.num_authors: must be >= 2, got 1"),
    ({"optimizer": {"name": "sophiag", "args": {"rho": 0}}}, "optimizer.args.rho: must be > 0, got 0"),
    ({"optimizer": {"name": "sophiag", "args": {"betas": [0.9, 1.5]}}},
     "optimizer.args.betas[1]: must be >= 0 and < 1, got 1.5"),
    ({"eval": {"mink_k": 1.5}}, "eval.mink_k: must be > 0 and <= 1, got 1.5"),
    ({"eval": {"max_items": 0}}, "eval.max_items: must be > 0, got 0"),
    ({"finetune": {"max_steps": 0}}, "finetune.max_steps: must be > 0, got 0"),
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


def test_a_duplicate_key_is_an_error_naming_the_key_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("optimizer:\n  lr: 1.0e-4\n  name: adamw\n  lr: 3.0e-4\n")
    with pytest.raises(UserError) as err:
        read_yaml(p)
    assert str(err.value) == (f"recipe '{p}' line 4, column 3: key 'lr' is given twice (also at line 2); "
                              "keep one")
    p.write_text("seed: 1\nunlearn: {epochs: 2}\nseed: 2\n")
    with pytest.raises(UserError, match=r"line 3, column 1: key 'seed' is given twice \(also at line 1\)"):
        read_yaml(p)
    # the same key in two sections, and a YAML merge key overriding, are not duplicates
    p.write_text("base: &b {lr: 1}\noptimizer:\n  <<: *b\n  lr: 2\nunlearn: {lr: 3}\n")
    assert read_yaml(p)["optimizer"] == {"lr": 2}


def test_yaml_is_loaded_safely_and_binary_or_deep_files_are_one_line(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError) as err:
        read_yaml(p)
    assert str(err.value).startswith(f"recipe '{p}' is not valid YAML at line 1, column 7: could not "
                                     "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'")
    p.write_bytes(b"\xff\xfe\x00\x81seed: 1\n")
    with pytest.raises(UserError, match="is not UTF-8 text; save it as a UTF-8 YAML file"):
        read_yaml(p)
    p.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError, match="nested too deeply"):
        read_yaml(p)


def test_paths_in_the_file_resolve_against_its_folder_and_set_values_against_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "models" / "base").mkdir(parents=True)
    (folder / "org").mkdir()  # exists, but org/other does not: org/other stays a hub id
    p = folder / "r.yaml"
    p.write_text("cache_dir: cache\noutput_dir: ../out\n"
                 "data: {source: ./tofu}\n"
                 "model: {source: org/other, base: models/base, reference: none}\n"
                 "unlearn: {refusals_file: refusals.txt}\n")
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = load_recipe(p)
    assert r.cache_dir == str(folder / "cache") and r.output_dir == str(tmp_path / "out")
    assert r.data.source == str(folder / "tofu")
    assert r.model.source == "org/other" and r.model.reference == "none"
    assert r.model.base == str(folder / "models" / "base")
    assert r.unlearn.refusals_file == str(folder / "refusals.txt")
    r = load_recipe(p, ["cache_dir=c2", "data.source=locuslab/TOFU", "model={source: ./m}",
                        "model.reference=~/ret"])
    assert r.cache_dir == str(elsewhere / "c2") and r.data.source == "locuslab/TOFU"
    assert r.model.reference == str(Path("~/ret").expanduser()) and r.model.source == str(elsewhere / "m")
    assert r.model.base == "builtin"  # the --set section replaced the file's model section
    # no file: the default cache is the current directory's .soul; the resolved recipe records it
    d = load_recipe(None)
    assert d.cache_dir == str(elsewhere / ".soul") and d.data.source == "builtin"
    assert f"cache_dir: {elsewhere / '.soul'}" in dump_recipe(d)


def test_set_optimizer_name_drops_the_files_foreign_args_with_a_note(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optimizer: {name: sophiag, args: {rho: 10.0, bs: 480, diagnostics_every: 1, betas: [0.9, 0.99]}}\n"
                 "unlearn: {objective: npo, objective_args: {beta: 0.2}}\n")
    notes: list[str] = []
    r = load_recipe(p, ["optimizer.name=adamw", "unlearn.objective=graddiff"], notes)
    assert r.optimizer.name == "adamw" and r.optimizer.args == {"diagnostics_every": 1, "betas": [0.9, 0.99]}
    assert r.unlearn.objective_args == {}
    assert notes == [
        "optimizer.name=adamw (from --set) does not take optimizer.args.rho, optimizer.args.bs: dropped",
        "unlearn.objective=graddiff (from --set) does not take unlearn.objective_args.beta: dropped"]
    # keys given with --set themselves are kept, and checked
    with pytest.raises(RecipeError) as err:
        load_recipe(p, ["optimizer.name=adamw", "optimizer.args.rho=3"])
    assert err.value.problems == ["optimizer.args.rho: unknown key of optimizer 'adamw' (valid: betas, diagnostics_every, eps)"]
    # wrong args written in the file stay an error
    p.write_text("optimizer: {name: adamw, args: {rho: 10.0}}\n")
    with pytest.raises(RecipeError, match="optimizer.args.rho: unknown key of optimizer 'adamw'"):
        load_recipe(p, [], notes)
    assert len(notes) == 2


def test_every_problem_at_once_when_an_unknown_key_is_among_them():
    with pytest.raises(RecipeError) as err:
        build_recipe({"modle": {}, "optimizer": {"name": "sophia", "lr": -1},
                      "unlearn": {"objective": "npo", "objective_args": {"betaa": 1}},
                      "model": {"hidden_size": 33, "num_heads": 2}, "seed": "x"})
    assert sorted(err.value.problems) == sorted([
        "modle: unknown key (did you mean 'model'?)",
        "optimizer.lr: must be > 0, got -1",
        "seed: expected an integer, got 'x'",
        "model.hidden_size: must be a multiple of model.num_heads",
        "unlearn.objective_args.betaa: unknown key of objective 'npo' (did you mean 'beta'?)"])


def test_an_integer_beyond_the_float_range_is_not_a_finite_number():
    with pytest.raises(UserError, match=r"finetune.lr: must be a finite number, got 1000"):
        build_recipe({"finetune": {"lr": 10**400}})


def test_finetune_max_steps_keys_the_built_in_models_only_when_set():
    """A model trained for finetune.max_steps is never reused as a fully trained one; unset,
    the key is the one of soulcli versions before the key existed."""
    from soulcli.recipe import FinetuneConfig
    from soulcli.workflows.common import shaping

    assert "max_steps" not in shaping(FinetuneConfig())
    assert shaping(FinetuneConfig(max_steps=3)) == {**shaping(FinetuneConfig()), "max_steps": 3}
