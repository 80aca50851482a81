"""Every example in every `soul COMMAND --help` runs: on the micro recipe, in a fresh folder,
with the example's placeholder paths replaced by real ones and the work capped (``FAST``); it exits 0 (an evaluation gate
example may exit 3, the code its help names for a failed gate)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from conftest import MICRO

import typer

from soulcli.cli import app

# appended after each example (a later --set wins; the example's own values are still parsed
# and checked): the micro recipe's finetuning, so the shared micro cache is reused, and one
# step per comparison cell
FAST = ("--set", "finetune.epochs=4", "--set", "unlearn.max_steps=1", "--set", "compare.include_influence=false")
COMMANDS = sorted(typer.main.get_command(app).commands)


def _examples(soul) -> list[list[str]]:
    """The argv of each `soul ...` line of each command's help text (as written, before the
    terminal wraps it), checked to appear in the rendered --help too."""
    out = []
    for cmd in COMMANDS:
        rendered = " ".join(soul(cmd, "--help", recipe=None, cache=False).output.split())
        for line in (typer.main.get_command(app).commands[cmd].help or "").splitlines():
            if line.strip().startswith("soul "):
                assert " ".join(line.split()) in rendered
                out.append(shlex.split(line.strip())[1:])
    return out


def test_every_command_has_examples(soul):
    examples = _examples(soul)
    assert {e[0] for e in examples} == set(COMMANDS)
    assert len(examples) >= 8


@pytest.fixture(scope="module")
def placeholders(soul, pipeline, tmp_path_factory) -> dict[str, str]:
    from soulcli.recipe import load_recipe
    from soulcli.workflows.common import builtin_model_paths

    root = tmp_path_factory.mktemp("examples")
    tofu = root / "tofu"
    tofu.mkdir()
    for f in Path(pipeline["prepared"]["path"]).glob("*.json"):
        if f.name != "benchmark.json" and not f.name.startswith("."):
            shutil.copy(f, tofu / f.name)
    recipe = load_recipe(MICRO, [f"cache_dir={soul.cache}"])
    retain = builtin_model_paths(recipe, Path(pipeline["prepared"]["path"])).retain
    shipped = Path(__file__).resolve().parents[2] / "recipes"
    return {"recipes/tofu_sophia.yaml": str(MICRO), "recipes/llama2_tofu_sophia.yaml": str(shipped / "llama2_tofu_sophia.yaml"),
            "../shared/data/tofu": str(tofu), "path/to/tofu": str(tofu),
            "path/to/hf_model": str(pipeline["run"] / "model"), "path/to/retain_model": str(retain),
            "runs/tofu_sophia": str(pipeline["run"])}


def test_every_help_example_runs(soul, placeholders, tmp_path, monkeypatch):
    ran = []
    for i, argv in enumerate(_examples(soul)):
        work = tmp_path / f"example{i}"
        work.mkdir()
        monkeypatch.chdir(work)  # relative outputs (data/tofu, runs/...) land here
        args = [placeholders.get(a, a) for a in argv]
        if argv[0] in ("evaluate", "attack") and "runs/tofu_sophia" in argv:  # a copy: they write into the run
            shutil.copytree(placeholders["runs/tofu_sophia"], work / "run")
            args = [str(work / "run") if a == placeholders["runs/tofu_sophia"] else a for a in args]
        res = soul(*args, *FAST, "--quiet")
        gate = any(a.startswith("--fail-") for a in argv)
        assert res.exit_code in ((0, 3) if gate else (0,)), f"soul {shlex.join(argv)}\n{res.output}"
        if res.exit_code == 3:
            assert all(line.startswith("gate failed: ") for line in res.stderr.splitlines() if line.strip())
        ran.append(argv[0])
    assert sorted(set(ran)) == COMMANDS
