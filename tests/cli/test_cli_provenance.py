"""A run records what it was made from (provenance.json) and `soul evaluate RUN` uses exactly
that, from any directory, or refuses in one line when it is gone or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from soulcli.models.loading import model_fingerprint
from soulcli.recipe import load_recipe
from soulcli.workflows import common

from conftest import MICRO


def _error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _values(eval_json: Path) -> dict:
    return {k: m.get("value") for k, m in json.loads(eval_json.read_text())["metrics"].items()}


def test_evaluate_uses_the_recorded_inputs_and_refuses_changed_ones(soul, pipeline, tmp_path, monkeypatch):
    bench = Path(shutil.copytree(pipeline["prepared"]["path"], tmp_path / "bench"))
    target = Path(shutil.copytree(pipeline["finetuned"]["models"]["target"]["path"], tmp_path / "target"))
    run = tmp_path / "run"
    res = soul("unlearn", "--set", f"data.source={bench}", "--set", f"model.source={target}", "-o", str(run))
    assert res.exit_code == 0, res.output

    recorded = json.loads((run / "provenance.json").read_text())
    recipe = load_recipe(MICRO)
    retain = Path(pipeline["finetuned"]["models"]["retain"]["path"])
    assert recorded == {
        "data": {"path": str(bench.resolve()), "fingerprint": common.data_fingerprint(bench, recipe)},
        "target": {"path": str(target.resolve()), "fingerprint": model_fingerprint(target)},
        "reference": {"path": str(retain.resolve()), "fingerprint": model_fingerprint(retain)},
    }
    assert recorded["target"]["fingerprint"].startswith("sha256:")

    # from another directory, with a cache_dir that does not exist: the recorded folders, same numbers
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    empty = tmp_path / "no-cache"
    res = soul("evaluate", str(run), "--output", str(tmp_path / "again.json"), "--set", f"cache_dir={empty}",
               recipe=None, cache=False)
    assert res.exit_code == 0, res.output
    assert not empty.exists()  # nothing was built or trained
    expected = _values(run / "eval.json")
    assert expected["forget_quality"] is not None and len(expected) >= 8
    assert _values(tmp_path / "again.json") == expected

    original = (bench / "forget10.json").read_bytes()
    rows = [json.loads(line) for line in original.decode().splitlines()]
    rows[0]["answer"] = "A changed answer."
    (bench / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _error_line(soul("evaluate", str(run), recipe=None))
    assert f"the run's data folder {bench.resolve()} changed since the run" in line and "--data DIR" in line
    (bench / "forget10.json").write_bytes(original)

    line = _error_line(soul("evaluate", str(run), "--target", str(retain), recipe=None))
    assert f"the run's target folder {retain} is not the one recorded" in line and "--target PATH" in line
    shutil.rmtree(target)
    line = _error_line(soul("evaluate", str(run), recipe=None))
    assert f"the run's target folder {target.resolve()} is gone" in line and "--target PATH" in line


def test_a_damaged_provenance_record_is_one_line(tmp_path):
    import pytest

    from soulcli.errors import UserError
    from soulcli.workflows import provenance

    assert provenance.verified(tmp_path, load_recipe(MICRO), set()) is None  # an older run: none
    for text in ("[1]", '{"data": 3}', '{"data": {"path": "x"}, "target": null, "reference": null}', "{"):
        (tmp_path / "provenance.json").write_text(text)
        with pytest.raises(UserError, match="is not a provenance record; restore it"):
            provenance.verified(tmp_path, load_recipe(MICRO), set())
