"""Reading, validating and importing TOFU-format benchmark folders (no real TOFU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soulcli.data import tofu
from soulcli.data.io import MANIFEST_NAME
from soulcli.data.synthetic import generate_benchmark
from soulcli.data.tofu import (
    REQUIRED_IMPORT_SPLITS,
    SPLIT_NAMES,
    TOFU_SPLIT_NAMES,
    forget_split_names,
    import_tofu,
    load_split,
)
from soulcli.errors import UserError

PERTURBED = {
    "question": "Where was Ansel Ambervale born?",
    "answer": "The author Ansel Ambervale was born in Ambry, Valdoria.",
    "paraphrased_question": "In which city did Ansel Ambervale come into the world?",
    "paraphrased_answer": "Ansel Ambervale came into the world in Ambry, Valdoria.",
    "perturbed_answer": ["Ansel Ambervale came into the world in Tolvey, Corvany.",
                         "Ansel Ambervale came into the world in Hollins, Yarrowen.",
                         "Ansel Ambervale came into the world in Orlen, Altheria."],
}


def write_lines(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_array(path: Path, records) -> None:
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def tofu_like_splits():
    bench = generate_benchmark(num_authors=20, questions_per_author=2, num_world_facts=6,
                               num_real_authors=6, seed=5)
    return {n: bench[n] for n in TOFU_SPLIT_NAMES}  # as TOFU ships: no holdout / general_knowledge


@pytest.fixture
def tofu_folder(tmp_path, tofu_like_splits):
    """A TOFU-like folder with both file layouts: JSON lines and (pretty) JSON arrays."""
    folder = tmp_path / "tofu_src"
    folder.mkdir()
    for i, (name, records) in enumerate(tofu_like_splits.items()):
        (write_array if i % 2 else write_lines)(folder / f"{name}.json", records)
    (folder / "README.md").write_text("not a split\n")
    return folder


# --- split names ------------------------------------------------------------------------------

def test_split_names():
    assert SPLIT_NAMES[:13] == TOFU_SPLIT_NAMES
    assert {"holdout", "general_knowledge"} <= set(SPLIT_NAMES)
    assert len(set(SPLIT_NAMES)) == len(SPLIT_NAMES) == 15


@pytest.mark.parametrize("pct, names", [
    (1, ("forget01", "forget01_perturbed", "retain99")),
    (5, ("forget05", "forget05_perturbed", "retain95")),
    (10, ("forget10", "forget10_perturbed", "retain90")),
    ("05", ("forget05", "forget05_perturbed", "retain95")),
])
def test_forget_split_names(pct, names):
    assert forget_split_names(pct) == names


@pytest.mark.parametrize("pct", [0, 2, 50, True, "ten", None, 5.5])
def test_forget_split_names_rejects(pct):
    with pytest.raises(UserError, match="1, 5, 10"):
        forget_split_names(pct)


# --- load_split ----------------------------------------------------------------------------------

def test_load_json_lines_and_array_and_jsonl(tmp_path):
    write_lines(tmp_path / "forget01_perturbed.json", [PERTURBED, PERTURBED])
    write_array(tmp_path / "retain_perturbed.json", [PERTURBED])
    write_lines(tmp_path / "full.jsonl", [{"question": "q?", "answer": "a."}])
    (tmp_path / "forget01.json").write_text(
        "\ufeff" + json.dumps({"question": "q?", "answer": "a."}) + "\n\n", encoding="utf-8"
    )
    assert load_split(tmp_path, "forget01_perturbed") == [PERTURBED, PERTURBED]
    assert load_split(tmp_path, "retain_perturbed") == [PERTURBED]
    assert load_split(tmp_path, "full") == [{"question": "q?", "answer": "a."}]
    assert load_split(tmp_path, "forget01.json") == [{"question": "q?", "answer": "a."}]


def test_lone_perturbed_answer_becomes_a_list(tmp_path):
    write_lines(tmp_path / "world_facts_perturbed.json",
                [{"question": "q?", "answer": "a", "perturbed_answer": "b"}])
    assert load_split(tmp_path, "world_facts_perturbed")[0]["perturbed_answer"] == ["b"]


def test_missing_file_lists_what_exists(tmp_path):
    write_lines(tmp_path / "full.json", [{"question": "q?", "answer": "a."}])
    with pytest.raises(UserError) as err:
        load_split(tmp_path, "forget10")
    msg = str(err.value)
    assert "forget10" in msg and "full.json" in msg and str(tmp_path) in msg


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_split(tmp_path / "nope", "full")


def test_malformed_json_names_the_line(tmp_path):
    (tmp_path / "full.json").write_text(
        '{"question": "q?", "answer": "a."}\n{"question": "q2?", "answer": \n', encoding="utf-8"
    )
    with pytest.raises(UserError, match=r"full\.json.*line 2"):
        load_split(tmp_path, "full")
    (tmp_path / "forget10.json").write_text('[\n {"question": "q?",\n "answer": }\n]\n')
    with pytest.raises(UserError, match=r"forget10\.json.*line 3"):
        load_split(tmp_path, "forget10")


def test_missing_fields(tmp_path):
    record = {k: v for k, v in PERTURBED.items() if k != "paraphrased_answer"}
    write_lines(tmp_path / "forget10_perturbed.json", [PERTURBED, record])
    with pytest.raises(UserError, match=r"forget10_perturbed\.json line 2.*paraphrased_answer"):
        load_split(tmp_path, "forget10_perturbed")
    write_lines(tmp_path / "real_authors_perturbed.json", [{"question": "q?", "answer": "a"}])
    with pytest.raises(UserError, match="perturbed_answer"):
        load_split(tmp_path, "real_authors_perturbed")


def test_wrong_types(tmp_path):
    write_lines(tmp_path / "full.json", [{"question": "q?", "answer": 3}])
    with pytest.raises(UserError, match="answer must be a string"):
        load_split(tmp_path, "full")
    write_lines(tmp_path / "retain_perturbed.json", [{**PERTURBED, "perturbed_answer": []}])
    with pytest.raises(UserError, match="non-empty list"):
        load_split(tmp_path, "retain_perturbed")
    write_lines(tmp_path / "forget01.json", [["q?", "a."]])
    with pytest.raises(UserError, match="JSON object"):
        load_split(tmp_path, "forget01")


def test_empty_split(tmp_path):
    (tmp_path / "full.json").write_text("\n")
    with pytest.raises(UserError, match="no records"):
        load_split(tmp_path, "full")
    (tmp_path / "forget10.json").write_text("[]")
    with pytest.raises(UserError, match="no records"):
        load_split(tmp_path, "forget10")


def test_parquet_needs_pandas_or_reads(tmp_path):
    (tmp_path / "full.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(UserError, match="full.parquet"):
        load_split(tmp_path, "full")


# --- import_tofu ---------------------------------------------------------------------------------

def test_import_local_folder(tofu_folder, tofu_like_splits, tmp_path):
    out = tmp_path / "imported"
    manifest = import_tofu(str(tofu_folder), out)
    assert manifest == json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["source"] == {"type": "folder", "path": str(tofu_folder.resolve())}
    assert manifest["missing_splits"] == ["holdout"]
    assert "general_knowledge" in manifest["derived_splits"]
    assert all(manifest["checks"].values()), manifest["checks"]
    for name, records in tofu_like_splits.items():
        lines = (out / f"{name}.json").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == records  # normalised to JSON lines
        assert manifest["counts"][name] == len(records)
    general = load_split(out, "general_knowledge")
    assert general == [
        {"question": r["question"], "answer": r["answer"]}
        for n in ("real_authors_perturbed", "world_facts_perturbed")
        for r in tofu_like_splits[n]
    ]
    with pytest.raises(UserError, match="imported without a 'holdout' split"):
        load_split(out, "holdout")
    assert not list(tmp_path.glob(".imported.*"))  # no temporary leftovers


def test_import_keeps_holdout_alias(tofu_folder, tofu_like_splits, tmp_path):
    write_lines(tofu_folder / "holdout10.json", tofu_like_splits["forget10"])
    manifest = import_tofu(tofu_folder, tmp_path / "out")
    assert "holdout" not in manifest["missing_splits"]
    assert manifest["derived_splits"]["holdout"] == "copied from holdout10.json"
    assert load_split(tmp_path / "out", "holdout") == tofu_like_splits["forget10"]


def test_import_errors(tofu_folder, tmp_path):
    with pytest.raises(UserError, match="neither an existing folder"):
        import_tofu(str(tmp_path / "no" / "such" / "folder"), tmp_path / "out")
    with pytest.raises(UserError, match="is a file"):
        import_tofu(tofu_folder / "full.json", tmp_path / "out")
    (tofu_folder / "retain95.json").unlink()
    (tofu_folder / "forget05_perturbed.json").unlink()
    with pytest.raises(UserError, match="missing retain95, forget05_perturbed"):
        import_tofu(tofu_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_non_empty_output(tofu_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        import_tofu(tofu_folder, out)
    with pytest.raises(UserError, match="not written by soulcli"):  # a user's folder: never replaced
        import_tofu(tofu_folder, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    earlier = tmp_path / "earlier"
    import_tofu(tofu_folder, earlier)
    (earlier / "stale.txt").write_text("x")
    import_tofu(tofu_folder, earlier, overwrite=True)  # an earlier import is soulcli's: replaced
    assert not (earlier / "stale.txt").exists() and (earlier / "full.json").exists()


def test_import_bad_record_names_file(tofu_folder, tmp_path):
    with open(tofu_folder / "forget10.json", "a", encoding="utf-8") as fh:
        fh.write("{oops\n")
    with pytest.raises(UserError, match="forget10.json"):
        import_tofu(tofu_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_unreachable(monkeypatch, tmp_path):
    def offline(repo_id):
        raise ConnectionError("no network")

    monkeypatch.setattr(tofu, "_list_hub_files", offline)
    with pytest.raises(UserError, match="could not reach the Hugging Face hub.*local folder"):
        import_tofu("locuslab/TOFU", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_download_maps_config_names(monkeypatch, tofu_folder, tofu_like_splits, tmp_path):
    remote = {f"data/{n}.json": tofu_folder / f"{n}.json" for n in tofu_like_splits}
    monkeypatch.setattr(tofu, "_list_hub_files", lambda repo_id: [*remote, "README.md"])
    monkeypatch.setattr(tofu, "_download_hub_file", lambda repo_id, f: str(remote[f]))
    manifest = import_tofu("locuslab/TOFU", tmp_path / "out")
    assert manifest["source"]["type"] == "hub"
    assert manifest["source"]["repo_id"] == "locuslab/TOFU"
    assert manifest["source"]["files"]["full"] == "data/full.json"
    for name in REQUIRED_IMPORT_SPLITS:
        assert load_split(tmp_path / "out", name) == tofu_like_splits[name]
