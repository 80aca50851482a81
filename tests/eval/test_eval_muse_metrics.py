"""The MUSE task's metrics on hand-built cases, each against an independent computation.

No model: each metric plans its requests, the test fills in the results (generations, per-token
scores) by hand, and the value is recomputed from the definitions (MUSE's VerbMem / KnowMem /
PrivLeak, SOUL's leakage BLEU)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from soulcli.eval import EvalConfig
from soulcli.eval.kinds.bleu import sentence_bleu
from soulcli.eval.metric import Requests, Results
from soulcli.eval.scoring import TokenScores
from soulcli.tasks import MuseTask, MuseTaskData


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _f1(ref: str, gen: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric words, no stemming (MUSE)."""
    import re

    r, g = re.findall(r"[a-z0-9]+", ref.lower()), re.findall(r"[a-z0-9]+", gen.lower())
    lcs = _lcs(r, g)
    if not lcs:
        return 0.0
    p, q = lcs / len(g), lcs / len(r)
    return 2 * p * q / (p + q)


SUITE = MuseTask(MuseTaskData()).suite(EvalConfig())


def _run(name: str, data: dict, generations: dict[str, str] | None = None,
         scores: dict[str, TokenScores] | None = None, done=None, reference=None, tokenizer=None):
    """Plan ``name`` on ``data``, answer its requests from the hand-made tables, compute it."""
    metric = SUITE[name]
    req = Requests()
    plan = metric.plan(data, req)
    gens = [(generations or {})[g.prompt.prefix] for g in req.generations]
    sc = [(scores or {})[p.continuation] for p in req.pairs]
    return metric.compute(plan, Results(sc, gens, tokenizer), done or {}, reference, data), req


def test_verbmem_is_rouge_f1_without_stemming_and_cuts_the_reference():
    rows = [{"prompt": "Once upon", "gt": "a time the walking cats walked far away"},
            {"prompt": "In the", "gt": "beginning was the word"}]
    gens = {"Once upon": "a time the walking cat walks", "In the": "beginning was nothing"}
    entry, req = _run("forget_verbmem_rougeL", {"verbmem_forget": rows}, gens, tokenizer=_Identity())
    assert [g.max_new_tokens for g in req.generations] == [128, 128]
    expected = [_f1(r["gt"], gens[r["prompt"]]) for r in rows]
    assert entry["per_item"] == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8))  # "cats" != "cat" unstemmed
    assert entry["value"] == pytest.approx(np.mean(expected))


class _Identity:
    """Tokenizer stand-in whose tokens are words (BOS first), to check the 128-token cut."""

    def __call__(self, text):
        return {"input_ids": ["<s>"] + text.split()}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(i for i in ids if not (skip_special_tokens and i == "<s>"))


def test_verbmem_reference_is_cut_to_its_first_tokens_bos_included():
    metric = SUITE["forget_verbmem_rougeL"]
    long = " ".join(f"w{i}" for i in range(200))
    rows = [{"prompt": "p", "gt": long}]
    req = Requests()
    plan = metric.plan({"verbmem_forget": rows}, req)
    gen = " ".join(f"w{i}" for i in range(127))  # exactly the first 127 words
    entry = metric.compute(plan, Results([], [gen], _Identity()), {}, None, {"verbmem_forget": rows})
    assert entry["per_item"] == [1.0]  # 128 tokens with BOS = 127 words, all matched


def test_knowmem_uses_muses_few_shot_prompt_and_cuts_the_answer():
    from soulcli.data.muse import knowmem_prompt

    icl = [{"question": "Who wrote X?", "answer": "Ann"}]
    row = {"question": "Where is Y?", "answer": "in Oslo", "prompt": knowmem_prompt(icl, "Where is Y?")}
    assert row["prompt"] == "Question: Who wrote X?\nAnswer: Ann\n\nQuestion: Where is Y?\nAnswer: "
    gens = {row["prompt"]: "in Oslo town\n\nQuestion: next"}
    entry, req = _run("forget_knowmem_rougeL", {"knowmem_forget": [row]}, gens)
    assert req.generations[0].max_new_tokens == 32
    assert entry["generations"] == ["in Oslo town"]
    assert entry["per_item"] == [pytest.approx(_f1("in Oslo", "in Oslo town"))]  # 2 * 1 * 2/3 / (5/3) = 0.8
    assert entry["per_item"][0] == pytest.approx(0.8)


def _scores(logprobs: list[float]) -> TokenScores:
    return TokenScores(np.asarray(logprobs, dtype=np.float64), np.zeros(len(logprobs), dtype=bool))


def test_privleak_follows_muses_orientation_and_sign():
    """MUSE: AUC over (forget = 0, holdout = 1) with score -Min-40%, i.e. P(holdout more likely
    than forget); PrivLeak = (AUC - AUC_retrain) / AUC_retrain x 100."""
    forget = {"f1": [-0.1, -0.2, -0.3, -0.1, -0.2], "f2": [-0.5, -0.4, -0.6, -0.5, -0.4]}
    holdout = {"h1": [-0.3, -0.9, -1.2, -0.8, -0.7], "h2": [-0.05, -0.1, -0.2, -0.1, -0.1]}
    data = {"privleak_forget": [{"text": t} for t in forget],
            "privleak_holdout": [{"text": t} for t in holdout]}
    scores = {t: _scores(lp) for t, lp in {**forget, **holdout}.items()}
    auc, req = _run("mia_mink_auc", data, scores=scores)
    assert all(not p.eos and p.prefix == "" for p in req.pairs)

    def min40(lp):
        return float(np.mean(np.sort(lp)[: max(1, int(0.4 * len(lp)))]))

    f = [min40(lp) for lp in forget.values()]
    h = [min40(lp) for lp in holdout.values()]
    muse_auc = sum((b > a) + 0.5 * (b == a) for a in f for b in h) / (len(f) * len(h))
    assert auc["value"] == pytest.approx(1 - muse_auc)  # soulcli's AUC is "higher = member"
    ref_muse_auc = 0.4
    reference = {"metrics": {"mia_mink_auc": {"value": 1 - ref_muse_auc}}, "fingerprints": {}}
    leak, _ = _run("privleak", data, done={"mia_mink_auc": auc}, reference=reference)
    assert leak["value"] == pytest.approx((muse_auc - ref_muse_auc) / ref_muse_auc * 100)


def test_leak_bleu_is_sacrebleu_sentence_bleu_by_hand():
    # identical text: BLEU 1; a 3-word prefix of a 6-word reference: precisions 1 for n = 1..3
    # (no 4-gram: effective order 3), brevity penalty exp(1 - 6/3)
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert sentence_bleu("the cat sat on the mat", "the cat sat") == pytest.approx(math.exp(-1))
    rows = [{"prompt": "a b", "gt": "the cat sat on the mat"}]
    entry, req = _run("forget_leak_bleu", {"leak_forget": rows}, {"a b": "the cat sat"})
    assert entry["value"] == pytest.approx(math.exp(-1))
    assert req.generations[0].max_new_tokens == MuseTaskData().leak_max_new_tokens


def test_leak_items_are_word_cuts_of_the_forget_passages(tmp_path):
    from soulcli.data import books, muse

    corpus = books.generate_corpus(num_books=4, passages_per_book=4, seed=0)
    muse.write_muse(corpus, tmp_path / "c")
    task = MuseTask(MuseTaskData(leak_prompt_words=5, leak_continuation_words=7))
    leak = task.eval_splits(tmp_path / "c")["leak_forget"]
    assert len(leak) == len(corpus.raw["forget"])
    for row, text in zip(leak, corpus.raw["forget"]):
        words = text.split()
        assert row == {"prompt": " ".join(words[:5]), "gt": " ".join(words[5:12])}


def test_knowmem_prompts_end_before_muses_final_space_and_the_builtin_learns_them_few_shot(tmp_path):
    """Generation starts after ``"Answer:"`` (the space belongs to the answer's first token); the
    built-in model, having no pretraining, learns each KnowMem pair under its split's few-shot
    prompt, the shots alone, and nothing of forget for the retrain model."""
    from soulcli.data import books, muse

    corpus = books.generate_corpus(num_books=4, passages_per_book=4, seed=0)
    muse.write_muse(corpus, tmp_path / "c")
    task = MuseTask(MuseTaskData())
    splits = task.eval_splits(tmp_path / "c")
    for split in ("forget", "retain"):
        icl, qa = corpus.knowmem[f"{split}_qa_icl"], corpus.knowmem[f"{split}_qa"]
        assert [r["prompt"] for r in splits[f"knowmem_{split}"]] == \
            [muse.knowmem_prompt(icl, r["question"])[:-1] for r in qa]
        assert all(r["prompt"].endswith("\nAnswer:") for r in splits[f"knowmem_{split}"])
    shots = [f"Question: {r['question']}\nAnswer: {r['answer']}"
             for s in ("forget", "retain") for r in corpus.knowmem[f"{s}_qa_icl"]]
    few_shot = {s: [muse.knowmem_prompt(corpus.knowmem[f"{s}_qa_icl"], r["question"]) + r["answer"]
                    for r in corpus.knowmem[f"{s}_qa"]] for s in ("forget", "retain")}
    target = [r["text"] for r in task.train_set(tmp_path / "c", "target", pretrained=False).rows]
    retrain = [r["text"] for r in task.train_set(tmp_path / "c", "retrain", pretrained=False).rows]
    assert target == corpus.raw["forget"] + corpus.raw["retain1"] + corpus.raw["retain2"] + \
        few_shot["forget"] + few_shot["retain"] + shots
    assert retrain == corpus.raw["retain1"] + corpus.raw["retain2"] + few_shot["retain"] + shots
    pretrained = [r["text"] for r in task.train_set(tmp_path / "c", "target", pretrained=True).rows]
    assert pretrained == corpus.raw["forget"] + corpus.raw["retain1"] + corpus.raw["retain2"]
