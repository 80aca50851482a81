"""The synthetic TOFU-style benchmark: format, split relationships, determinism, validation."""

from __future__ import annotations

import json
import re

import pytest

from soulcli.data import wordpools as W
from soulcli.data.io import MANIFEST_NAME, OUTPUT_MARK, content_hash
from soulcli.data.synthetic import (
    ATTRIBUTES,
    MAX_QUESTIONS_PER_AUTHOR,
    forget_author_counts,
    generate_benchmark,
    write_benchmark,
)
from soulcli.data.tofu import (
    GENERAL_SPLITS,
    PERTURBED_SPLITS,
    QA_SPLITS,
    SPLIT_NAMES,
    forget_split_names,
    load_split,
    required_fields,
)
from soulcli.errors import UserError

Q = 10  # default questions per author


@pytest.fixture(scope="module")
def bench():
    return generate_benchmark()  # the defaults: 100 authors, 10 questions each


def qa(records):
    return [(r["question"], r["answer"]) for r in records]


def test_default_sizes(bench):
    assert list(bench) == list(SPLIT_NAMES)
    assert len(bench["full"]) == 100 * Q
    for pct, n_authors in ((1, 1), (5, 5), (10, 10)):
        forget, forget_p, retain = forget_split_names(pct)
        assert len(bench[forget]) == len(bench[forget_p]) == n_authors * Q
        assert len(bench[retain]) == (100 - n_authors) * Q
    assert len(bench["retain_perturbed"]) == len(bench["forget10_perturbed"])
    assert len(bench["holdout"]) == 10 * Q
    assert len(bench["real_authors_perturbed"]) == 100
    assert len(bench["world_facts_perturbed"]) == 100
    assert len(bench["general_knowledge"]) == 200
    assert len(bench.meta["authors"]["full"]) == 100
    assert len(bench.meta["authors"]["holdout"]) == 10


def test_split_relationships(bench):
    full = qa(bench["full"])
    assert full == qa(bench["retain90"]) + qa(bench["forget10"])
    for pct in (1, 5, 10):
        forget, forget_p, retain = forget_split_names(pct)
        assert qa(bench[retain]) + qa(bench[forget]) == full  # forget = the last authors
        assert not set(qa(bench[retain])) & set(qa(bench[forget]))
        assert qa(bench[forget_p]) == qa(bench[forget])
    # forget01 is within forget05 within forget10 (all suffixes of full)
    assert qa(bench["forget05"])[-len(bench["forget01"]):] == qa(bench["forget01"])
    assert qa(bench["forget10"])[-len(bench["forget05"]):] == qa(bench["forget05"])
    assert len(set(full)) == len(full)
    # retain_perturbed: distinct retain90 items, in full order
    retain90 = qa(bench["retain90"])
    rp = qa(bench["retain_perturbed"])
    assert len(set(rp)) == len(rp)
    positions = [retain90.index(x) for x in rp]
    assert positions == sorted(positions)
    # the perturbed records of an item are the same whichever split holds it
    f10 = {r["question"]: r for r in bench["forget10_perturbed"]}
    for r in bench["forget01_perturbed"]:
        assert f10[r["question"]] == r


def test_fields_match_tofu(bench):
    for name in QA_SPLITS + ("general_knowledge",):
        assert all(list(r) == ["question", "answer"] for r in bench[name]), name
    for name in PERTURBED_SPLITS + ("holdout",):
        assert all(list(r) == list(required_fields("forget10_perturbed")) for r in bench[name])
    for name in GENERAL_SPLITS:
        assert all(list(r) == ["question", "answer", "perturbed_answer"] for r in bench[name])
    for name in SPLIT_NAMES:
        for r in bench[name]:
            assert all(isinstance(r[f], str) and r[f] for f in ("question", "answer"))
            if "perturbed_answer" in r:
                assert len(r["perturbed_answer"]) >= 3
                assert all(isinstance(p, str) and p for p in r["perturbed_answer"])


def _template_parts(attr_index: int, name: str) -> tuple[str, str]:
    template = ATTRIBUTES[attr_index].paraphrase[1]
    prefix, suffix = template.split("{v}")
    return prefix.format(n=name), suffix.format(n=name)


def test_authors_questions_and_perturbations(bench):
    names = bench.meta["authors"]["full"]
    assert len(set(names)) == len(names)
    for split, authors in (("full", names), ("holdout", bench.meta["authors"]["holdout"])):
        records = bench[split]
        for i, r in enumerate(records):
            name = authors[i // Q]
            attr = i % Q
            assert name in r["question"] and name in r["answer"]
            assert r["question"].replace(name, "{n}") in {q for q, _ in ATTRIBUTES[attr].variants}
            words = len(r["answer"].split())
            assert 6 <= words <= 20, r["answer"]
            if split == "holdout":
                assert name in r["paraphrased_question"]
    for split in ("forget10_perturbed", "holdout"):
        authors = (bench.meta["authors"]["full"][-10:] if split != "holdout"
                   else bench.meta["authors"]["holdout"])
        for i, r in enumerate(bench[split]):
            name = authors[i // Q]
            prefix, suffix = _template_parts(i % Q, name)
            para = r["paraphrased_answer"]
            assert para != r["answer"] and r["paraphrased_question"] != r["question"]
            pert = r["perturbed_answer"]
            assert len(set(pert)) == len(pert) == 5
            assert para not in pert and r["answer"] not in pert
            for p in [para] + pert:  # same form: only the value differs
                assert p.startswith(prefix) and p.endswith(suffix), (p, prefix, suffix)
                assert len(p) > len(prefix) + len(suffix)


def test_holdout_disjoint_from_trained(bench):
    trained = set(bench.meta["authors"]["full"])
    holdout = bench.meta["authors"]["holdout"]
    assert not trained & set(holdout)
    full_text = "\n".join(r["question"] + r["answer"] for r in bench["full"])
    for name in holdout:
        assert name not in full_text
    assert not set(qa(bench["holdout"])) & set(qa(bench["full"]))


def test_general_facts_mention_no_fictitious_author(bench):
    authors = bench.meta["authors"]["full"] + bench.meta["authors"]["holdout"]
    name_words = set(W.FIRST_NAMES) | set(W.LAST_NAMES)
    for split in GENERAL_SPLITS:
        for r in bench[split]:
            text = " ".join([r["question"], r["answer"], *r["perturbed_answer"]])
            assert not any(a in text for a in authors)
            assert not name_words & set(re.findall(r"[A-Za-z]+", text)), text
            assert r["answer"] not in r["perturbed_answer"]
            assert len(set(r["perturbed_answer"])) == len(r["perturbed_answer"]) >= 3
    assert bench["general_knowledge"] == [
        {"question": r["question"], "answer": r["answer"]}
        for r in bench["real_authors_perturbed"] + bench["world_facts_perturbed"]
    ]


def test_book_titles_unique_across_authors(bench):
    titles = []
    for split in ("full", "holdout"):
        for r in bench[split]:
            titles += re.findall(r'"([^"]+)"', r["answer"])
    assert titles and len(titles) == len(set(titles))


def test_deterministic_byte_identical(tmp_path):
    kw = dict(num_authors=20, questions_per_author=4, num_world_facts=10, num_real_authors=10)
    write_benchmark(generate_benchmark(seed=7, **kw), tmp_path / "a")
    write_benchmark(generate_benchmark(seed=7, **kw), tmp_path / "b")
    write_benchmark(generate_benchmark(seed=8, **kw), tmp_path / "c")
    files = sorted(p.name for p in (tmp_path / "a").iterdir() if p.name != OUTPUT_MARK)
    assert files == sorted([f"{n}.json" for n in SPLIT_NAMES] + [MANIFEST_NAME])
    assert (tmp_path / "a" / OUTPUT_MARK).is_file()  # soulcli's mark (time, pid: not content)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    c = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    assert a["content_hash"] != c["content_hash"]
    assert (tmp_path / "a" / "full.json").read_bytes() != (tmp_path / "c" / "full.json").read_bytes()


def test_write_manifest_and_round_trip(tmp_path):
    bench = generate_benchmark(num_authors=10, questions_per_author=3, num_world_facts=5,
                               num_real_authors=5, seed=1)
    manifest = write_benchmark(bench, tmp_path / "bench")
    on_disk = json.loads((tmp_path / "bench" / MANIFEST_NAME).read_text())
    assert on_disk == manifest
    assert manifest["generator"] == "soulcli.synthetic"
    assert manifest["seed"] == 1
    assert manifest["parameters"]["num_authors"] == 10
    assert manifest["counts"] == {n: len(bench[n]) for n in SPLIT_NAMES}
    assert manifest["content_hash"] == content_hash(
        tmp_path / "bench", [f"{n}.json" for n in SPLIT_NAMES]
    )
    for name in SPLIT_NAMES:
        lines = (tmp_path / "bench" / f"{name}.json").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == bench[name]
        assert load_split(tmp_path / "bench", name) == bench[name]


def test_more_questions_extend_the_same_authors():
    small = generate_benchmark(num_authors=10, questions_per_author=4, seed=2,
                               num_world_facts=5, num_real_authors=5)
    big = generate_benchmark(num_authors=10, questions_per_author=MAX_QUESTIONS_PER_AUTHOR,
                             seed=2, num_world_facts=5, num_real_authors=5)
    assert small.meta["authors"] == big.meta["authors"]
    for a in range(10):
        assert small["full"][a * 4:(a + 1) * 4] == big["full"][a * 20:a * 20 + 4]
    # every attribute is asked once per author, so answers need no per-item memory of wording
    assert len(big["full"]) == 10 * MAX_QUESTIONS_PER_AUTHOR


@pytest.mark.parametrize("n, expected", [(2, (1, 1, 1)), (10, (1, 1, 1)), (40, (1, 2, 4)),
                                         (100, (1, 5, 10)), (200, (2, 10, 20)),
                                         (150, (2, 8, 15))])
def test_forget_author_counts(n, expected):
    assert tuple(forget_author_counts(n).values()) == expected


def test_small_benchmark_is_consistent():
    bench = generate_benchmark(num_authors=2, questions_per_author=1, num_holdout_authors=1,
                               num_world_facts=1, num_real_authors=1, seed=0)
    assert len(bench["full"]) == 2 and len(bench["forget01"]) == 1 and len(bench["retain99"]) == 1
    assert len(bench["retain_perturbed"]) == 1 and len(bench["holdout"]) == 1
    assert all(bench[n] for n in SPLIT_NAMES)


@pytest.mark.parametrize("kwargs, needle", [
    ({"num_authors": 1}, "num_authors"),
    ({"num_authors": 5000}, "names"),
    ({"questions_per_author": 0}, "questions_per_author"),
    ({"questions_per_author": MAX_QUESTIONS_PER_AUTHOR + 1}, "questions_per_author"),
    ({"num_holdout_authors": 0}, "num_holdout_authors"),
    ({"num_world_facts": 0}, "num_world_facts"),
    ({"num_world_facts": 10_000}, "num_world_facts"),
    ({"num_real_authors": 0}, "num_real_authors"),
    ({"num_perturbed": 2}, "num_perturbed"),
    ({"num_authors": 10.0}, "integer"),
    ({"seed": True}, "integer"),
])
def test_invalid_parameters(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        generate_benchmark(**kwargs)
