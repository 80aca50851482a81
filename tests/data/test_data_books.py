"""The built-in MUSE-style corpus: sizes, determinism, where each piece comes from, bounds."""

from __future__ import annotations

import re

import pytest

from soulcli.data import wordpools as W
from soulcli.data.books import (
    FACTS,
    GENERATOR_VERSION,
    ICL_SHOTS,
    MAX_PASSAGES_PER_BOOK,
    WORDS,
    generate_corpus,
)
from soulcli.data.muse import load_muse, write_muse
from soulcli.errors import UserError


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus()  # the defaults: 24 books of 12 passages


def words(text: str) -> int:
    return len(text.split(" "))


def test_default_sizes(corpus):
    assert {s: len(v) for s, v in corpus.raw.items()} == {"forget": 72, "retain1": 72, "retain2": 72, "holdout": 72}
    assert len(corpus.verbmem) == 72
    assert {s: len(v) for s, v in corpus.knowmem.items()} == {
        "forget_qa": 144, "retain_qa": 144, "forget_qa_icl": ICL_SHOTS, "retain_qa_icl": ICL_SHOTS}
    assert {s: len(v) for s, v in corpus.privleak.items()} == {"forget": 72, "retain": 72, "holdout": 72}
    total = sum(words(t) for texts in corpus.raw.values() for t in texts)
    trained = sum(words(t) for s in ("forget", "retain1", "retain2") for t in corpus.raw[s])
    assert 15_000 <= total <= 40_000 and 10_000 <= trained <= 16_000
    assert all(WORDS[0] <= words(t) <= WORDS[1] for texts in corpus.raw.values() for t in texts)
    assert all("  " not in t and "\n" not in t for texts in corpus.raw.values() for t in texts)
    assert corpus.meta["generator_version"] == GENERATOR_VERSION
    assert [b["split"] for b in corpus.meta["books"]] == ["forget"] * 6 + ["retain1"] * 6 + ["retain2"] * 6 + ["holdout"] * 6


def test_micro_size():
    micro = generate_corpus(num_books=4, passages_per_book=4)
    assert {s: len(v) for s, v in micro.raw.items()} == {"forget": 4, "retain1": 4, "retain2": 4, "holdout": 4}
    assert len(micro.knowmem["forget_qa"]) == len(micro.knowmem["retain_qa"]) == 8
    assert len(micro.knowmem["forget_qa_icl"]) == len(micro.knowmem["retain_qa_icl"]) == ICL_SHOTS
    # an uneven count: retain1 takes the remainder
    assert {s: len(v) for s, v in generate_corpus(num_books=6, passages_per_book=4).raw.items()} == {
        "forget": 4, "retain1": 12, "retain2": 4, "holdout": 4}


def test_deterministic_for_a_seed(corpus):
    assert generate_corpus() == corpus
    assert generate_corpus().meta == corpus.meta
    other = generate_corpus(seed=1)
    assert other.raw["forget"] != corpus.raw["forget"]
    assert not set(other.raw["forget"]) & set(corpus.raw["forget"])


def test_splits_are_disjoint(corpus):
    seen: set[str] = set()
    for texts in corpus.raw.values():
        assert not seen & set(texts)
        seen |= set(texts)
    assert len(seen) == 288
    casts = [name for b in corpus.meta["books"] for name in b["cast"]]
    assert len(set(casts)) == len(casts) == 72
    assert len({b["title"] for b in corpus.meta["books"]}) == 24


def test_privleak_sets_are_the_passages(corpus):
    assert corpus.privleak["forget"] == corpus.raw["forget"]
    assert corpus.privleak["retain"] == corpus.raw["retain2"]
    assert corpus.privleak["holdout"] == corpus.raw["holdout"]


def test_verbmem_is_verbatim_forget_passage(corpus):
    for item, passage in zip(corpus.verbmem, corpus.raw["forget"], strict=True):
        assert item["prompt"] + " " + item["gt"] == passage
        assert words(item["prompt"]) == words(passage) // 3 and words(item["gt"]) > words(item["prompt"])


def _person(question: str) -> str:
    names = [n for n in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", question)
             if n.split()[0] in W.FIRST_NAMES and n.split()[1] in W.LAST_NAMES]
    assert len(names) == 1, question
    return names[0]


@pytest.mark.parametrize("qa_split, raw_split", [
    ("forget_qa", "forget"), ("retain_qa", "retain2"), ("forget_qa_icl", "retain1"), ("retain_qa_icl", "retain1")])
def test_every_answer_is_stated_with_its_person(corpus, qa_split, raw_split):
    for record in corpus.knowmem[qa_split]:
        person = _person(record["question"])
        stated = [p for p in corpus.raw[raw_split] if person in p and record["answer"] in p]
        assert stated, record
        assert 1 <= words(record["answer"]) <= 5


def test_questions_unique_and_icl_not_evaluated(corpus):
    evaluated = [r["question"] for s in ("forget_qa", "retain_qa") for r in corpus.knowmem[s]]
    shots = [r["question"] for s in ("forget_qa_icl", "retain_qa_icl") for r in corpus.knowmem[s]]
    assert len(set(evaluated + shots)) == len(evaluated) + len(shots)
    per_person = {}
    for r in corpus.knowmem["forget_qa"]:
        per_person[_person(r["question"])] = per_person.get(_person(r["question"]), 0) + 1
    assert sum(per_person.values()) == 144 and max(per_person.values()) <= len(FACTS)


@pytest.mark.parametrize("kwargs, needle", [
    ({"num_books": 3}, "num_books"),
    ({"passages_per_book": 3}, "passages_per_book"),
    ({"passages_per_book": MAX_PASSAGES_PER_BOOK + 1}, "passages_per_book"),
    ({"seed": -1}, "seed"),
])
def test_bounds(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        generate_corpus(**kwargs)


def test_largest_book_states_every_fact_once():
    big = generate_corpus(num_books=4, passages_per_book=MAX_PASSAGES_PER_BOOK)
    assert len(big.knowmem["forget_qa"]) == MAX_PASSAGES_PER_BOOK * 2 == 26


def test_written_corpus_loads_back(corpus, tmp_path):
    manifest = write_muse(corpus, tmp_path / "books")
    assert manifest["generator"] == "soulcli.books" and manifest["parameters"]["num_books"] == 24
    assert manifest["counts"]["raw/forget"] == 72
    assert load_muse(tmp_path / "books") == corpus
