"""Bad input: one line naming the problem and the fix, exit code 2, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_recipe(soul, tmp_path):
    line = _one_error_line(soul("unlearn", recipe=tmp_path / "nope.yaml"))
    assert "does not exist" in line and "nope.yaml" in line


def test_malformed_yaml(soul, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  name: [sophiag\n")
    line = _one_error_line(soul("unlearn", recipe=bad))
    assert "not valid YAML at line" in line


def test_unknown_optimizer_and_objective_reported_together(soul, tmp_path):
    line = _one_error_line(soul("unlearn", "--set", "optimizer.name=sophia", "--set", "unlearn.objective=npoo",
                                "--output", str(tmp_path / "run")))
    assert "optimizer.name: unknown optimizer 'sophia'" in line and "did you mean 'sophia" in line
    assert "unlearn.objective: unknown objective 'npoo'" in line
    assert not (tmp_path / "run").exists()


def test_wrong_type_in_override(soul):
    line = _one_error_line(soul("unlearn", "--set", "unlearn.epochs=lots"))
    assert "unlearn.epochs: expected an integer, got 'lots'" in line


def test_model_folder_that_does_not_exist(soul, tmp_path):
    line = _one_error_line(soul("unlearn", "--set", f"model.source={tmp_path / 'missing_model'}",
                                "--output", str(tmp_path / "run")))
    assert "missing_model" in line and "does not exist" in line
    assert not (tmp_path / "run").exists()


def test_evaluate_missing_run_dir(soul, tmp_path):
    line = _one_error_line(soul("evaluate", str(tmp_path / "norun"), recipe=None))
    assert "does not exist" in line


def test_data_folder_with_an_empty_split(soul, tmp_path, pipeline):
    data = tmp_path / "tofu"
    data.mkdir()
    src = Path(pipeline["prepared"]["path"])
    for f in src.glob("*.json"):
        if f.name != "benchmark.json":
            (data / f.name).write_text(f.read_text())
    (data / "forget10.json").write_text("")
    line = _one_error_line(soul("unlearn", "--set", f"data.source={data}", "--output", str(tmp_path / "run")))
    assert "forget10" in line and "empty" in line
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


@pytest.mark.parametrize("cmd", ["prepare-data", "finetune", "unlearn", "evaluate", "compare-optimizers"])
def test_help_says_what_and_shows_an_example(soul, cmd):
    res = soul(cmd, "--help", recipe=None, cache=False)
    assert res.exit_code == 0
    assert "Example" in res.output and f"soul {cmd}" in res.output
    for opt in ("--recipe", "--set", "--output", "--seed", "--json", "--quiet"):
        assert opt in res.output


def test_write_problems_are_one_line_before_any_work(soul, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = _one_error_line(soul("unlearn", "--output", str(tmp_path / "afile" / "run")))
    assert f"cannot create {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file" in line
    line = _one_error_line(soul("unlearn", "--output", str(tmp_path / ("r" * 250))))
    assert "too long for the file system" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_write_error_during_the_work_is_one_line(capsys):
    import errno

    import typer

    from soulcli.cli import _run

    def body(reporter):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/model.safetensors")

    with pytest.raises(typer.Exit) as exit_info:
        _run(False, True, body)
    assert exit_info.value.exit_code == 2
    assert capsys.readouterr().err.strip() == ("error: /data/runs/x/model.safetensors: No space left on device; "
                                               "free space, fix the permissions or choose another output folder")
