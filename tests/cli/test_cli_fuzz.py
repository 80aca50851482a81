"""Fuzzing the CLI with malformed input: recipes, TOFU data folders and model folders.

Every case must end like any user mistake: exit code 2 and exactly one line, ``error: ...``,
never a traceback. The commands fail before expensive work: ``unlearn`` with an output path
under a file (a recipe that happens to be valid gets the write error instead), ``prepare-data``
importing the fuzzed folder, ``evaluate --model`` loading the fuzzed model folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from soulcli import schema
from soulcli.recipe import Recipe

from conftest import MICRO



FAST_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)  # no slow "explain"


def fuzz(cases: int) -> settings:
    """``cases`` examples, reproducible; the fixtures used are session/module-wide or reset."""
    return settings(max_examples=cases, deadline=None, derandomize=True, phases=FAST_PHASES,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _one_error_line(res) -> str:
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ")
    return lines[0]


# --------------------------------------------------------------------------- recipes


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for name, param in schema.params_of(cls).items():
        tp = typing.get_args(param.type)[0] if typing.get_origin(param.type) is typing.Annotated else param.type
        if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
            out += _leaf_keys(tp, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


KEYS = _leaf_keys(Recipe) + ["optimizer.args.rho", "optimizer.args.betas", "unlearn.objective_args.beta",
                             "modle", "optimizer.nme", "data.template.nope", "eval.x.y"]


def _deep(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


ABSURD = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([-1, 0, 2**31, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1e-4", "nan", "-inf", "", "cuda:99", "mps", "auto", "builtin", "none", "~", "/"]),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.none(), st.booleans(),
    st.integers(min_value=1, max_value=60).map(_deep),
)


def _set(raw: dict, dotted: str, value: object) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


@fuzz(150)
@given(st.lists(st.tuples(st.sampled_from(KEYS), ABSURD), min_size=1, max_size=4))
@example([("threads", 10**30)])  # crashes found by this test, kept as regressions
@example([("seed", 2**64)])
@example([("name", "a\x1eb"), ("optimizer.name", "x\ny")])
def test_malformed_recipes(soul, changes):
    raw = yaml.safe_load(MICRO.read_text())
    for key, value in changes:
        _set(raw, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "r.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        (Path(tmp) / "afile").write_text("x")
        _one_error_line(soul("unlearn", "-q", "--output", f"{tmp}/afile/run", recipe=recipe))


RAW_TEXTS = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.sampled_from([
        "", "\n", "---\n...\n", "- a\n- b\n", "42\n", "[1, 2\n", "optimizer: {lr: [1,\n",
        "seed: 1\nseed: 2\n", "optimizer:\n  lr: 1\n  lr: 2\n", "!!python/object:os.system {}\n",
        "name: !!python/name:os.system\n", "a: &a [*a]\n", "? [a]\n: 1\n", "\x00\x01\x02",
        "a: " + "[" * 3000 + "]" * 3000 + "\n", "optimizer: !!binary aGVsbG8=\n",
        "data: 2001-12-14\n", "seed: 0x7fffffffffffffffffff\n", "<<: {seed: 1}\n", "seed: 0x10000000000000000\n",
    ]),
)


@fuzz(60)
@given(RAW_TEXTS)
def test_recipe_files_that_are_not_recipes(soul, text):
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "r.yaml"
        if isinstance(text, bytes):
            recipe.write_bytes(text)
        else:
            recipe.write_text(text, encoding="utf-8")
        (Path(tmp) / "afile").write_text("x")
        _one_error_line(soul("unlearn", "-q", "--output", f"{tmp}/afile/run", recipe=recipe))


# --------------------------------------------------------------------------- data folders


@pytest.fixture(scope="module")
def tofu_files(pipeline) -> dict[str, str]:
    """A TOFU-layout folder's files (name -> text): the prepared micro benchmark's splits."""
    src = Path(pipeline["prepared"]["path"])
    return {p.name: p.read_text() for p in sorted(src.glob("*.json"))
            if p.name != "benchmark.json" and not p.name.startswith(".")}


def _break_data(files: dict[str, str], how: str, name: str, draw) -> None:
    lines = files[name].splitlines()
    if how == "missing field":
        i = draw(st.integers(0, len(lines) - 1))
        record = json.loads(lines[i])
        del record[draw(st.sampled_from(sorted(k for k in record if k in ("question", "answer"))))]
        lines[i] = json.dumps(record)
        files[name] = "\n".join(lines) + "\n"
    elif how == "wrong type":
        i = draw(st.integers(0, len(lines) - 1))
        record = json.loads(lines[i])
        record[draw(st.sampled_from(["question", "answer"]))] = draw(
            st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.floats()))
        lines[i] = json.dumps(record)
        files[name] = "\n".join(lines) + "\n"
    elif how == "empty list":
        files[name] = draw(st.sampled_from(["", "[]", "\n\n", "[]\n"]))
    elif how == "not a record":
        files[name] = draw(st.sampled_from(["[1, 2]", '["a"]', "null\n", "3\n", '{"x": 1}\n', "[[]]"]))
    elif how == "truncated":  # cut inside a record, never at a line end
        text = files[name]
        cuts = [i for i in range(1, len(text)) if text[i - 1] != "\n" and text[i] != "\n"]
        files[name] = text[: draw(st.sampled_from(cuts))]
    elif how == "bad line":
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
            ["{", "nope", '{"question": "q"', "[1,", "}{", '{"a": NaN'])))
        files[name] = "\n".join(lines) + "\n"
    elif how == "deep":
        files[name] = "[" * 100000 + "]" * 100000
    elif how == "missing file":
        del files[name]


DATA_BREAKS = ["missing field", "wrong type", "empty list", "not a record", "truncated", "bad line", "deep",
               "missing file", "non-utf8"]


@fuzz(60)
@given(st.data())
def test_malformed_data_folders(soul, tofu_files, data):
    files = dict(tofu_files)
    how = data.draw(st.sampled_from(DATA_BREAKS))
    required = [n for n in files if not n.startswith(("real_authors", "world_facts", "holdout", "general"))]
    name = data.draw(st.sampled_from(required))
    if how != "non-utf8":
        _break_data(files, how, name, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tofu"
        folder.mkdir()
        for fname, text in files.items():
            (folder / fname).write_text(text, encoding="utf-8")
        if how == "non-utf8":
            raw = (folder / name).read_bytes()
            at = data.draw(st.integers(0, len(raw)))
            (folder / name).write_bytes(raw[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80\x80"]))
                                        + raw[at:])
        line = _one_error_line(soul("prepare-data", "-q", "--set", f"data.source={folder}",
                                    "--output", f"{tmp}/out"))
        assert name.removesuffix(".json") in line or "not a TOFU folder" in line
        assert not (Path(tmp) / "out").exists()


# --------------------------------------------------------------------------- model folders


def _break_model(folder: Path, how: str, draw) -> None:
    weights, config_file = folder / "model.safetensors", folder / "config.json"
    config = json.loads(config_file.read_text())
    if how == "truncated weights":
        data = weights.read_bytes()
        weights.write_bytes(data[: draw(st.integers(0, len(data) - 1))])
    elif how == "garbage weights":
        weights.write_bytes(draw(st.binary(max_size=64)))
    elif how == "no weights":
        weights.unlink()
    elif how == "no config":
        config_file.unlink()
    elif how == "truncated config":
        text = config_file.read_text()
        config_file.write_text(text[: draw(st.integers(0, len(text) - 2))])
    elif how == "unknown model_type":
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        config["model_type"] = draw(st.text(min_size=1, max_size=10).filter(lambda t: t not in CONFIG_MAPPING_NAMES))
        config_file.write_text(json.dumps(config))
    elif how == "no model_type":
        del config["model_type"]
        config_file.write_text(json.dumps(config))
    elif how == "auto_map":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
        config_file.write_text(json.dumps(config))
    elif how == "tokenizer auto_map":
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    elif how == "bad config value":
        key = draw(st.sampled_from(["hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads"]))
        config[key] = draw(st.sampled_from([-5, "two", None, 3.5, [2]]))
        config_file.write_text(json.dumps(config))


MODEL_BREAKS = ["truncated weights", "garbage weights", "no weights", "no config", "truncated config",
                "unknown model_type", "no model_type", "auto_map", "tokenizer auto_map", "bad config value"]


@fuzz(40)
@given(st.data())
def test_malformed_model_folders(soul, pipeline, monkeypatch, data):
    def no_stdin(*_):
        raise AssertionError("the model loader asked a question on stdin")

    monkeypatch.setattr("builtins.input", no_stdin)
    how = data.draw(st.sampled_from(MODEL_BREAKS))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(pipeline["run"] / "model", folder)
        _break_model(folder, how, data.draw)
        line = _one_error_line(soul("evaluate", "-q", "--model", str(folder), "--set", "model.reference=none",
                                    "--output", f"{tmp}/eval.json"))
        if how in ("unknown model_type", "auto_map", "tokenizer auto_map"):
            assert "set model.trust_remote_code: true in the recipe" in line

