"""Each metric formula against an independent computation on hand-built numbers (to 1e-6)."""

from __future__ import annotations

import itertools
import math
import re
import zlib

import numpy as np
import pytest

from soulcli.data.template import PromptTemplate
from soulcli.eval import metrics as M
from soulcli.eval.kinds import ExactMemorization, ExtractionStrength
from soulcli.eval.kinds.mia import MembershipAUC
from soulcli.eval.metric import QAPairing, Requests, Results
from soulcli.eval.scoring import TokenScores

TOL = 1e-6


def test_prob_and_normalized_prob():
    assert M.prob_from_nll(0.7) == pytest.approx(math.exp(-0.7), abs=TOL)
    true, perturbed = 0.9, [1.5, 0.4, 2.2]
    expected = math.exp(-0.9) / (math.exp(-0.9) + sum(math.exp(-x) for x in perturbed))
    assert M.normalized_prob(true, perturbed) == pytest.approx(expected, abs=TOL)
    # Huge losses underflow every exp(); the softmax form stays exact.
    assert M.normalized_prob(2000.0, [2000.0, 2000.0]) == pytest.approx(1 / 3, abs=TOL)


def test_truth_ratio_and_its_aggregates():
    items = [(1.2, [0.5, 2.0, 3.1]), (0.3, [0.9, 1.1]), (2.5, [0.4, 0.6, 0.2])]
    ratios = [M.truth_ratio(t, p) for t, p in items]
    for (t, p), tr in zip(items, ratios):
        geo_wrong = math.exp(-sum(p) / len(p))
        assert tr == pytest.approx(geo_wrong / math.exp(-t), rel=TOL)
    forget = sum(min(r, 1 / r) for r in ratios) / 3
    other = sum(max(0.0, 1 - r) for r in ratios) / 3
    assert M.forget_truth_ratio_score(ratios) == pytest.approx(forget, abs=TOL)
    assert M.truth_ratio_score(ratios) == pytest.approx(other, abs=TOL)
    # The third item prefers the wrong answers (TR > 1): it adds 0 to the non-forget score.
    assert ratios[2] > 1 and max(0.0, 1 - ratios[2]) == 0.0
    with pytest.raises(ValueError):
        M.truth_ratio(1.0, [])


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


@pytest.mark.parametrize(
    "reference, generation",
    [
        ("The cat sat on the mat.", "the cat is on a mat"),
        ("Basil was born in Kuwait City, Kuwait.", "He was born in Kuwait, in Kuwait City"),
        ("Paris", "It is in Rome"),
        ("Jane Austen wrote Emma", "Emma was written by Jane Austen"),
    ],
)
def test_rouge_l_recall_is_lcs_over_reference_length(reference, generation):
    # Stemming maps equal words to equal stems here, so plain LCS over words is the truth.
    expected = _lcs(_words(reference), _words(generation)) / len(_words(reference))
    assert M.RougeL()(reference, generation) == pytest.approx(expected, abs=TOL)


def test_rouge_l_recall_is_stemmed():
    # running -> run, races -> race, runs -> run: LCS (she, run, race) = 3 of 4 reference words.
    assert M.RougeL()("She was running races", "she runs race") == pytest.approx(
        0.75, abs=TOL
    )


def _ks_exact_by_enumeration(x: list[float], y: list[float]) -> tuple[float, float]:
    """Two-sided KS statistic and exact p-value, P(D >= d) over all splits of the pooled sample."""
    pooled = np.concatenate([x, y])
    n, m = len(x), len(y)

    def stat_scaled(a: np.ndarray, b: np.ndarray) -> int:
        # n*m*D as an integer: max over thresholds of |m * #a<=t - n * #b<=t|.
        return max(abs(m * int((a <= t).sum()) - n * int((b <= t).sum())) for t in pooled)

    observed = stat_scaled(np.asarray(x), np.asarray(y))
    hits = total = 0
    for chosen in itertools.combinations(range(n + m), n):
        mask = np.zeros(n + m, dtype=bool)
        mask[list(chosen)] = True
        total += 1
        hits += stat_scaled(pooled[mask], pooled[~mask]) >= observed
    return observed / (n * m), hits / total


@pytest.mark.parametrize(
    "x, y",
    [
        ([0.12, 0.55, 0.91, 1.7, 2.3], [0.05, 0.33, 0.41, 0.62, 0.8, 0.95]),
        ([3.1, 4.2, 5.9, 6.3, 7.7], [0.2, 0.4, 0.8, 1.1, 1.9, 2.6]),
        ([0.5, 1.5, 2.5, 3.5], [1.0, 2.0, 3.0, 4.0, 5.0]),
    ],
)
def test_ks_test_matches_exact_enumeration(x, y):
    statistic, pvalue = M.ks_test(x, y)
    expected_stat, expected_p = _ks_exact_by_enumeration(x, y)
    assert statistic == pytest.approx(expected_stat, abs=TOL)
    assert pvalue == pytest.approx(expected_p, abs=TOL)


def test_harmonic_mean():
    values = [0.9, 0.5, 0.75, 0.2, 0.66, 0.31, 0.8, 0.45, 0.99]
    assert M.harmonic_mean(values) == pytest.approx(9 / sum(1 / v for v in values), abs=TOL)
    assert M.harmonic_mean([0.5, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError):
        M.harmonic_mean([])


def test_auc_is_the_pairwise_win_rate_and_oriented_to_members(pairwise_auc):
    rng = np.random.default_rng(3)
    members = list(np.round(rng.normal(0.5, 1, 17), 1))  # rounding makes ties
    nonmembers = list(np.round(rng.normal(0.0, 1, 13), 1))
    assert M.auc(members, nonmembers) == pytest.approx(pairwise_auc(members, nonmembers), abs=TOL)
    # Members scoring higher ("seen") give AUC 1, the other way 0.
    assert M.auc([5.0, 6.0], [1.0, 2.0, 3.0]) == 1.0
    assert M.auc([1.0, 2.0], [5.0, 6.0]) == 0.0
    with pytest.raises(ValueError):
        M.auc([], [1.0])


def test_privleak_formula_and_sign():
    auc_model, auc_ref = 0.83, 0.47
    expected = ((1 - 0.83) - (1 - 0.47)) / (1 - 0.47) * 100
    assert M.privleak(auc_model, auc_ref) == pytest.approx(expected, abs=TOL)
    assert M.privleak(1.0, 0.5) == pytest.approx(-100.0, abs=TOL)  # remembers everything
    assert M.privleak(0.5, 0.5) == 0.0  # like the retain model
    with pytest.raises(ValueError):
        M.privleak(0.7, 1.0)


def test_membership_scores():
    lp = [-0.1, -2.0, -0.5, -3.0, -1.0]
    assert M.loss_score(lp) == pytest.approx(-6.6 / 5, abs=TOL)
    text = "Ada Quill writes mystery novels."
    assert M.zlib_score(lp, text) == pytest.approx(
        (-6.6 / 5) / len(zlib.compress(text.encode())), abs=TOL
    )
    # k = 0.4 of 5 tokens -> the 2 lowest: -3.0 and -2.0.
    assert M.mink_score(lp, 0.4) == pytest.approx(-2.5, abs=TOL)
    # Fewer than one token selected -> still the single lowest.
    assert M.mink_score(lp, 0.1) == pytest.approx(-3.0, abs=TOL)
    mu = [-1.0, -1.0, -0.2, -2.0, -0.5]
    sigma = [0.5, 2.0, 0.1, 1.0, 0.25]
    z = [
        (-0.1 + 1.0) / 0.5,
        (-2.0 + 1.0) / 2.0,
        (-0.5 + 0.2) / 0.1,
        (-3.0 + 2.0) / 1.0,
        (-1.0 + 0.5) / 0.25,
    ]
    assert M.minkpp_score(lp, mu, sigma, 0.4) == pytest.approx(sum(sorted(z)[:2]) / 2, abs=TOL)


def _es_by_definition(hits: list[bool]) -> float:
    """open-unlearning's search: the first k in 0..n-1 whose suffix is all right, n-1 if none."""
    n = len(hits)
    k = next((k for k in range(n) if all(hits[k:])), n - 1)
    return 1 - k / n


def test_extraction_strength_and_exact_memorization():
    cases = {
        (False, True, True): 2 / 3,
        (True, True, False): 1 / 3,  # even the last token wrong: 1/n, as open-unlearning
        (False, False, False, False): 1 / 4,
        (False,): 1.0,  # one wrong token: 1/1
        (True, True, True): 1.0,
        (True, False, True, True): 0.5,
    }
    for hits, expected in cases.items():
        assert M.extraction_strength(hits) == pytest.approx(expected, abs=TOL)
    rng = np.random.default_rng(0)
    for _ in range(50):
        hits = list(rng.random(rng.integers(1, 12)) < 0.7)
        assert M.extraction_strength(hits) == pytest.approx(_es_by_definition(hits), abs=TOL)
        assert M.exact_memorization(hits) == pytest.approx(sum(hits) / len(hits), abs=TOL)


def _run_metric(metric, rows: dict[str, list[dict]], scores: list[TokenScores]) -> dict:
    req = Requests()
    plan = metric.plan(rows, req)
    return metric.compute(plan, Results(scores=scores, generations=[]), {}, None, rows)


def test_memorization_and_min_k_leave_the_appended_eos_out():
    """open-unlearning scores EM, ES, Min-K% and Min-K%++ without the EOS prediction; LOSS keeps
    it. Hand-built per-token results: the EOS (last token) decides the outcome if counted."""
    pairing = QAPairing(template=PromptTemplate())
    forget = {"forget": [{"question": "q", "answer": "a"}]}
    hits = TokenScores(np.zeros(5), np.array([True, False, True, True, False]), eos=True)
    em = _run_metric(ExactMemorization("em", "forget", pairing), forget, [hits])
    es = _run_metric(ExtractionStrength("es", "forget", pairing), forget, [hits])
    assert em["value"] == pytest.approx(3 / 4)  # with the EOS it would be 3/5
    assert es["value"] == pytest.approx(1 - 2 / 4)  # with the EOS: 1/5
    rows = {"members": [{"question": "m", "answer": "a"}], "others": [{"question": "o", "answer": "a"}]}
    member = TokenScores(np.array([-1.0, -1.0, -9.0]), np.zeros(3, bool), np.zeros(3), np.ones(3), eos=True)
    other = TokenScores(np.array([-2.0, -2.0, -0.1]), np.zeros(3, bool), np.zeros(3), np.ones(3), eos=True)
    for attack, value in (("mink", 1.0), ("minkpp", 1.0), ("loss", 0.0)):
        auc = MembershipAUC("auc", attack, "members", "others", pairing, k=0.4)
        assert _run_metric(auc, rows, [member, other])["value"] == value, attack
