"""MUSE folders: reading MUSE's real layout, every malformed input as one-line user errors,
writing and importing, and the KnowMem prompt / answer conventions."""

from __future__ import annotations

import json

import pytest

from soulcli.data import muse, tofu
from soulcli.data.io import MANIFEST_NAME, OUTPUT_MARK
from soulcli.data.muse import (
    MUSE_SPLIT_FILES,
    MuseData,
    import_muse,
    knowmem_answer,
    knowmem_prompt,
    load_muse,
    muse_fingerprint,
    write_muse,
)
from soulcli.errors import UserError

RAW = {"forget": ["F one.", "F two."], "retain1": ["R1 one."], "retain2": ["R2 one.", "R2 two."],
       "holdout": ["H one.", "H two.", "H three."]}
VERBMEM = [{"prompt": "F", "gt": "one."}, {"prompt": "F two", "gt": "."}]
KNOWMEM = {"forget_qa": [{"question": "Who?", "answer": "F"}],
           "retain_qa": [{"question": "Which?", "answer": "R2"}, {"question": "When?", "answer": "1870"}],
           "forget_qa_icl": [{"question": "Q1?", "answer": "A1"}],
           "retain_qa_icl": [{"question": "Q2?", "answer": "A2"}]}
PRIVLEAK = {"forget": ["F one."], "retain": ["R2 one."], "holdout": ["H one."]}


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    """A corpus as MUSE's load_data.py writes it: JSON arrays, plus raw/*.txt."""
    root = tmp_path / "books"
    for split, texts in RAW.items():
        _dump(root / "raw" / f"{split}.json", texts)
        (root / "raw" / f"{split}.txt").write_text("\n\n".join(texts), encoding="utf-8")
    _dump(root / "verbmem" / "forget.json", VERBMEM)
    for split, records in KNOWMEM.items():
        _dump(root / "knowmem" / f"{split}.json", records)
    for split, texts in PRIVLEAK.items():
        _dump(root / "privleak" / f"{split}.json", texts)
    return root


def _error(folder) -> str:
    with pytest.raises(UserError) as info:
        load_muse(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_reads_every_part(folder):
    data = load_muse(folder)
    assert data.raw == RAW
    assert data.verbmem == VERBMEM
    assert data.knowmem == KNOWMEM
    assert data.privleak == PRIVLEAK


def test_optional_parts_and_fallbacks(folder):
    (folder / "raw" / "retain2.json").unlink()
    (folder / "raw" / "retain2.txt").unlink()
    (folder / "privleak" / "retain.json").unlink()
    (folder / "privleak" / "holdout.json").unlink()
    data = load_muse(folder)
    assert list(data.raw) == ["forget", "retain1", "holdout"]
    assert data.privleak == {"forget": ["F one."], "holdout": RAW["holdout"]}  # from raw/holdout


def test_other_encodings_and_older_names(folder):
    for p in (folder / "raw").glob("forget.json"):
        p.unlink()  # the .txt (texts joined by a blank line) is read instead
    (folder / "raw" / "forget.txt").write_text("F one.\n\n\nF two.\n  \nF three.\n", encoding="utf-8")
    _dump(folder / "privleak" / "forget.json", [{"text": "F one."}])
    (folder / "knowmem" / "retain_qa.json").rename(folder / "knowmem" / "retain2_qa.json")
    (folder / "privleak" / "retain.json").rename(folder / "privleak" / "retain2.json")
    data = load_muse(folder)
    assert data.raw["forget"] == ["F one.", "F two.", "F three."]
    assert data.privleak["forget"] == ["F one."]
    assert data.knowmem["retain_qa"] == KNOWMEM["retain_qa"]
    assert data.privleak["retain"] == ["R2 one."]


def test_hub_parquet_shards_in_name_order(folder, monkeypatch):
    (folder / "raw" / "forget.json").unlink()
    (folder / "raw" / "forget.txt").unlink()
    for name in ("forget-00001-of-00002.parquet", "forget-00000-of-00002.parquet"):
        (folder / "raw" / name).write_bytes(b"")
    rows = {"forget-00000-of-00002.parquet": [{"text": "a"}], "forget-00001-of-00002.parquet": [{"text": "b"}]}
    monkeypatch.setattr(tofu, "_read_parquet", lambda path: (rows[path.name], ["row 1"]))
    assert load_muse(folder).raw["forget"] == ["a", "b"]


@pytest.mark.parametrize("relpath, needle", [
    ("raw/retain1", "no raw/retain1"),
    ("verbmem/forget", "no verbmem/forget"),
    ("knowmem/forget_qa_icl", "no knowmem/forget_qa_icl"),
    ("privleak/forget", "no privleak/forget"),
])
def test_missing_required_part(folder, relpath, needle):
    for p in (folder / relpath).parent.glob((folder / relpath).name + ".*"):
        p.unlink()
    message = _error(folder)
    assert needle in message and str(folder) in message


def test_missing_holdout_everywhere(folder):
    for p in [*(folder / "raw").glob("holdout.*"), folder / "privleak" / "holdout.json"]:
        p.unlink()
    assert "has no privleak/holdout nor raw/holdout" in _error(folder)


def test_missing_folder(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")


@pytest.mark.parametrize("relpath, content, needle", [
    ("knowmem/forget_qa.json", b'[{"question": "Who?", ', "is not valid JSON (line 1"),
    ("raw/forget.json", b'{"text": "F"}', "holds a JSON dict, not a list"),
    ("verbmem/forget.json", b'[{"prompt": "F"}]', "item 1: missing field(s) gt"),
    ("knowmem/retain_qa.json", b'[{"question": "Q", "answer": "A"}, {"question": "Q", "answer": 3}]',
     "item 2: field answer must be a string, got int"),
    ("knowmem/retain_qa.json", b'["Q"]', "item 1: expected an object with question, answer, got str"),
    ("privleak/holdout.json", b'["H", 7]', "item 2: expected a non-empty text"),
    ("raw/retain1.json", b'["  "]', "item 1: expected a non-empty text"),
    ("privleak/forget.json", b"[]", "is empty"),
    ("raw/forget.json", "[\"caf\u00e9\"]".encode("latin-1"), "is not UTF-8 text"),
])
def test_malformed_file_is_one_line_naming_it(folder, relpath, content, needle):
    (folder / relpath).write_bytes(content)
    message = _error(folder)
    assert needle in message
    assert str(folder / relpath) in message


def test_write_then_load_round_trip(folder, tmp_path):
    data = load_muse(folder)
    manifest = write_muse(data, tmp_path / "out", meta={"generator": "test"})
    out = tmp_path / "out"
    assert load_muse(out) == data
    assert manifest["generator"] == "test" and manifest["format"] == "muse"
    assert manifest["counts"] == {"raw/forget": 2, "raw/retain1": 1, "raw/retain2": 2, "raw/holdout": 3,
                                  "verbmem/forget": 2, "knowmem/forget_qa": 1, "knowmem/retain_qa": 2,
                                  "knowmem/forget_qa_icl": 1, "knowmem/retain_qa_icl": 1,
                                  "privleak/forget": 1, "privleak/retain": 1, "privleak/holdout": 1}
    assert manifest["content_hash"] == muse_fingerprint(out)
    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.json") if p.name not in (MANIFEST_NAME, OUTPUT_MARK))
    assert written == sorted(MUSE_SPLIT_FILES)
    assert json.loads((out / "raw" / "forget.json").read_text()) == RAW["forget"]  # MUSE's format


def test_fingerprint_follows_content_not_place(folder, tmp_path):
    data = load_muse(folder)
    write_muse(data, tmp_path / "a")
    write_muse(data, tmp_path / "b")
    assert muse_fingerprint(tmp_path / "a") == muse_fingerprint(tmp_path / "b")
    changed = MuseData(raw={**data.raw, "forget": ["other"]}, verbmem=data.verbmem,
                       knowmem=data.knowmem, privleak=data.privleak)
    write_muse(changed, tmp_path / "c")
    assert muse_fingerprint(tmp_path / "c") != muse_fingerprint(tmp_path / "a")


def test_fingerprint_of_a_folder_to_import_covers_every_file_read(folder):
    """The key of a folder to import follows each file load_muse may read: raw/*.txt, an
    older name (knowmem/retain2_qa.json), a parquet shard; a stray file elsewhere does not."""
    keys = {muse_fingerprint(folder)}
    (folder / "raw" / "forget.txt").write_text("F one.\n\nF changed.", encoding="utf-8")
    keys.add(muse_fingerprint(folder))
    (folder / "knowmem" / "retain_qa.json").rename(folder / "knowmem" / "retain2_qa.json")
    keys.add(muse_fingerprint(folder))
    (folder / "raw" / "holdout-00000-of-00001.parquet").write_bytes(b"PAR1")
    keys.add(muse_fingerprint(folder))
    assert len(keys) == 4
    (folder / "notes.json").write_text("{}")
    (folder / "raw" / ".hidden.json").write_text("[]")
    assert muse_fingerprint(folder) in keys


def test_write_refuses_a_user_folder_and_replaces_its_own(folder, tmp_path):
    data = load_muse(folder)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not written by soulcli"):
        write_muse(data, user, overwrite=True)
    assert (user / "notes.txt").read_text() == "keep"
    write_muse(data, tmp_path / "out")
    with pytest.raises(UserError, match="--overwrite"):
        write_muse(data, tmp_path / "out")
    write_muse(data, tmp_path / "out", overwrite=True)


def test_import_folder(folder, tmp_path):
    manifest = import_muse(folder, tmp_path / "out")
    assert manifest["source"] == {"type": "folder", "path": str(folder.resolve())}
    assert load_muse(tmp_path / "out") == load_muse(folder)


def test_import_bad_folder_writes_nothing(folder, tmp_path):
    (folder / "verbmem" / "forget.json").write_text("[1]")
    with pytest.raises(UserError, match="verbmem/forget.json item 1"):
        import_muse(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_hub_unreachable(monkeypatch, tmp_path):
    def offline(repo_id):
        raise ConnectionError("no network")

    monkeypatch.setattr(tofu, "_list_hub_files", offline)
    with pytest.raises(UserError, match="could not reach the Hugging Face hub for 'muse-bench/MUSE-Books'"):
        import_muse("muse-bench/MUSE-Books", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_hub_downloads_the_four_subsets(monkeypatch, folder, tmp_path):
    remote = {str(p.relative_to(folder)): p for p in folder.rglob("*.json")}
    monkeypatch.setattr(tofu, "_list_hub_files", lambda repo_id: [*remote, "README.md", "train/forget.json"])
    monkeypatch.setattr(tofu, "_download_hub_file", lambda repo_id, f: str(remote[f]))
    manifest = import_muse("muse-bench/MUSE-Books", tmp_path / "out")
    assert manifest["source"]["repo_id"] == "muse-bench/MUSE-Books"
    assert sorted(manifest["source"]["files"]) == sorted(remote)
    assert load_muse(tmp_path / "out") == load_muse(folder)


def test_import_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(UserError, match="neither an existing folder nor a Hugging Face dataset id"):
        import_muse(str(tmp_path / "no" / "such" / "thing"), tmp_path / "out")


def test_knowmem_prompt_exact():
    icl = [{"question": "Who wrote it?", "answer": "Ada"}, {"question": "When?", "answer": "1901"}]
    assert knowmem_prompt(icl, "Where?") == (
        "Question: Who wrote it?\nAnswer: Ada\n\nQuestion: When?\nAnswer: 1901\n\nQuestion: Where?\nAnswer: ")
    assert knowmem_prompt([], "Where?") == "Question: Where?\nAnswer: "


@pytest.mark.parametrize("generation, answer", [
    ("Kestrelmoor\n\nQuestion: next", "Kestrelmoor"),
    ("Kestrelmoor\nQuestion: next", "Kestrelmoor"),
    ("Kestrelmoor Question: next", "Kestrelmoor "),
    ("Kestrelmoor, Valdoria\nand more", "Kestrelmoor, Valdoria\nand more"),  # one newline kept
    ("\n\nKestrelmoor", ""),
])
def test_knowmem_answer_cuts_like_muse(generation, answer):
    assert knowmem_answer(generation) == answer
    assert muse.KNOWMEM_STOP == ("\n\n", "\nQuestion", "Question:")


def test_import_hub_parquet_without_pandas_fails_before_downloading(monkeypatch, tmp_path):
    monkeypatch.setattr(tofu, "_list_hub_files", lambda repo_id: ["raw/forget-00000-of-00001.parquet"])
    monkeypatch.setattr(tofu.importlib.util, "find_spec", lambda name: None)

    def download(repo_id, f):
        raise AssertionError("downloaded")

    monkeypatch.setattr(tofu, "_download_hub_file", download)
    with pytest.raises(UserError, match="stored as Parquet, which needs pandas and pyarrow"):
        import_muse("muse-bench/MUSE-News", tmp_path / "out")
