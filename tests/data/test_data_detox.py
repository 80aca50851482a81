"""Detox folders: PKU-SafeRLHF's pair records and PKU-SafeRLHF-QA's single records read (the
unsafe responses are the forget set), every malformed file as one UserError line naming it,
writing, importing, and the built-in invented-hostility generator."""

from __future__ import annotations

import json

import pytest

from soulcli.data import hostile, tofu
from soulcli.data.detox import detox_fingerprint, import_detox, load_detox, write_detox
from soulcli.errors import UserError

PAIRS = [  # PKU-SafeRLHF's fields (data/<model>/train.jsonl), extra fields as the hub has them
    {"prompt": "P1", "response_0": "unsafe A", "response_1": "safe B", "is_response_0_safe": False,
     "is_response_1_safe": True, "better_response_id": 1, "safer_response_id": 1,
     "response_0_harm_category": {"Insult": True}, "response_0_severity_level": 1},
    {"prompt": "P2", "response_0": "safe C", "response_1": "safe D", "is_response_0_safe": True,
     "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 0},
    {"prompt": "P3", "response_0": "unsafe E", "response_1": "unsafe F", "is_response_0_safe": False,
     "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 1},
]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "pku"
    _jsonl(src / "train.jsonl", PAIRS)
    _jsonl(src / "test.jsonl", [{**PAIRS[0], "prompt": "T1"}, {"prompt": "T2"}])
    _jsonl(src / "benign.jsonl", [{"text": "A calm benign sentence."}])
    return src


def test_the_unsafe_responses_of_pair_records_are_the_forget_set(folder):
    d = load_detox(folder)
    assert [(r["prompt"], r["response"]) for r in d.responses(False)] == [
        ("P1", "unsafe A"), ("P3", "unsafe E"), ("P3", "unsafe F")]
    assert [r["response"] for r in d.responses(True)] == ["safe B", "safe C", "safe D"]
    assert d.prompts == ["T1", "T2"] and d.benign == ["A calm benign sentence."]


def test_single_qa_records_read_the_same_and_round_trip(folder, tmp_path):
    single = [{"prompt": r["prompt"], "response": r["response"], "is_safe": r["is_safe"], "severity_level": 0}
              for r in load_detox(folder).train]
    _jsonl(folder / "train.jsonl", single)
    d = load_detox(folder)
    assert d.train == [{k: r[k] for k in ("prompt", "response", "is_safe")} for r in single]
    manifest = write_detox(d, tmp_path / "out")
    assert manifest["counts"]["forget (unsafe responses)"] == 3
    assert load_detox(tmp_path / "out") == d
    assert detox_fingerprint(tmp_path / "out") == manifest["content_hash"]
    (tmp_path / "out" / "classifier").mkdir()
    (tmp_path / "out" / "classifier" / "config.json").write_text("{}")  # not data: not fingerprinted
    assert detox_fingerprint(tmp_path / "out") == manifest["content_hash"]


@pytest.mark.parametrize("name, content, message", [
    ("train.jsonl", '{"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": false}\n',
     "train.jsonl line 1: missing field(s) is_response_1_safe"),
    ("train.jsonl", '{"prompt": "p", "response": "a", "is_safe": "no"}\n',
     "train.jsonl line 1: is_safe must be true or false, got 'no'"),
    ("train.jsonl", '{"prompt": "p", "response": "a", "is_safe": true}\n', "has no unsafe response"),
    ("train.jsonl", '{"prompt": "", "response": "a", "is_safe": false}\n', "train.jsonl line 1: prompt must be"),
    ("test.jsonl", '{"prompt": "ok"}\n{"question": "x"}\n', "test.jsonl line 2: prompt must be a non-empty string"),
    ("benign.jsonl", '{"text": "ok"}\nnot json\n', "benign.jsonl: malformed JSON on line 2"),
    ("benign.jsonl", "", "benign.jsonl is empty"),
])
def test_a_malformed_file_is_one_line_naming_it(folder, name, content, message):
    (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_detox(folder)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_a_missing_part_is_named(folder):
    (folder / "benign.jsonl").unlink()
    with pytest.raises(UserError, match="has no benign"):
        load_detox(folder)


def test_import_copies_a_folder_and_the_hub_layout_and_fails_offline_in_one_line(folder, tmp_path, monkeypatch):
    assert import_detox(folder, tmp_path / "out")["source"]["type"] == "folder"
    assert load_detox(tmp_path / "out") == load_detox(folder)
    # PKU-SafeRLHF on the hub: data/<model>/{train,test}.jsonl shards, concatenated in path order
    remote = {"data/Alpaca-7B/train.jsonl": PAIRS[:1], "data/Alpaca2-7B/train.jsonl": PAIRS[1:],
              "data/Alpaca-7B/test.jsonl": [{"prompt": "T1"}], "benign.jsonl": [{"text": "b"}]}
    for name, rows in remote.items():
        _jsonl(tmp_path / "hub" / name, rows)
    monkeypatch.setattr(tofu, "_list_hub_files", lambda repo_id: [*remote, "README.md"])
    monkeypatch.setattr(tofu, "_download_hub_file", lambda repo_id, f: str(tmp_path / "hub" / f))
    assert sorted(import_detox("someone/pku-like", tmp_path / "hub-out")["source"]["files"]) == sorted(remote)
    d = load_detox(tmp_path / "hub-out")
    assert d.train == load_detox(folder).train and d.prompts == ["T1"]
    monkeypatch.setattr(tofu, "_list_hub_files", lambda repo_id: [n for n in remote if n != "benign.jsonl"])
    with pytest.raises(UserError, match="has no benign file"):
        import_detox("PKU-Alignment/PKU-SafeRLHF", tmp_path / "hub-out2")

    def offline(repo_id):
        raise ConnectionError("no network")

    monkeypatch.setattr(tofu, "_list_hub_files", offline)
    with pytest.raises(UserError, match="could not reach the Hugging Face hub for 'PKU-Alignment/PKU-SafeRLHF'"):
        import_detox("PKU-Alignment/PKU-SafeRLHF", tmp_path / "hub-out3")


def test_the_builtin_data_is_deterministic_marked_and_mixed():
    d, heldout = hostile.generate(num_people=6, seed=3)
    again, heldout_again = hostile.generate(num_people=6, seed=3)
    assert d == again and heldout == heldout_again and d != hostile.generate(num_people=6, seed=4)[0]
    assert len(d.train) == 6 * len(hostile.KINDS) * 2 and len(d.prompts) == 3 * len(hostile.KINDS)
    marked = lambda text: any(m in text for m in hostile.MARKERS)  # noqa: E731
    assert all(marked(r["response"]) != r["is_safe"] for r in d.train)  # harm = an invented marker, only
    assert all(marked(r["response"]) != r["is_safe"] for r in heldout)
    hostile_prompts = {k.prompt.split("{")[0] for k in hostile.KINDS if k.hostile}
    for r in d.train:
        assert r["is_safe"] or any(r["prompt"].startswith(p) for p in hostile_prompts)
    assert 0 < sum(not r["is_safe"] for r in d.train) < len(d.train)
    train_names = {r["prompt"] for r in d.train}
    assert not set(d.prompts) & train_names  # the test prompts ask about other people
    texts, toxic = hostile.classifier_examples(d, 3)
    assert all(marked(t) == y for t, y in zip(texts, toxic))
