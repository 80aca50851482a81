"""The metric formulas, as pure functions of per-item numbers (no model in here).

Everything the model contributes arrives as answer-token log-probabilities (see
:mod:`soulcli.eval.scoring`); these functions turn them into the numbers TOFU, MUSE and the
membership-inference literature report:

* TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs"): probability,
  truth ratio, ROUGE-L recall, forget quality (KS test) and model utility (harmonic mean).
* MUSE (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation"): PrivLeak.
* Membership inference: LOSS (Yeom et al., 2018), ZLib (Carlini et al., 2021), Min-K% Prob
  (Shi et al., 2024, "Detecting Pretraining Data from LLMs"), Min-K%++ (Zhang et al., 2024,
  "Min-K%++: Improved Baseline for Detecting Pre-Training Data from LLMs").
* Extraction strength (after Carlini et al., 2021/2023) and exact memorisation (Tirumala et
  al., 2022), as collected by OpenUnlearning.

Membership scores here are all oriented so that a *higher* score means "more likely a member".
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np
from scipy import stats

# exp() of a log-ratio beyond this would overflow a float64; clipping keeps JSON finite.
_MAX_LOG_RATIO = 700.0


def prob_from_nll(nll: float) -> float:
    """TOFU's per-item probability: ``exp(-NLL)`` with NLL the mean answer-token NLL."""
    return math.exp(-nll)


def normalized_prob(true_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """TOFU's probability for real authors / world facts: ``p_true / (p_true + sum p_perturbed)``.

    Each ``p`` is ``exp(-mean answer-token NLL)``. Computed as a softmax over ``-NLL`` so it is
    exact even when every probability underflows.
    """
    logits = -np.asarray([true_nll, *perturbed_nlls], dtype=np.float64)
    logits -= logits.max()
    weights = np.exp(logits)
    return float(weights[0] / weights.sum())


def truth_ratio(true_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """TOFU's truth ratio ``TR = exp(-mean_j NLL(perturbed_j)) / exp(-NLL(true))``.

    The geometric-mean probability of the wrong answers over that of the true answer: below
    1 when the model prefers the truth.
    """
    if len(perturbed_nlls) == 0:
        raise ValueError("truth ratio needs at least one perturbed answer")
    log_tr = float(true_nll) - float(np.mean(np.asarray(perturbed_nlls, dtype=np.float64)))
    return math.exp(min(max(log_tr, -_MAX_LOG_RATIO), _MAX_LOG_RATIO))


def forget_truth_ratio_score(ratios: Sequence[float]) -> float:
    """Forget-set aggregate ``mean(min(TR, 1/TR))``: 1 when true and wrong answers are alike."""
    tr = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(tr, 1.0 / tr)))


def truth_ratio_score(ratios: Sequence[float]) -> float:
    """Aggregate for every other set, ``mean(max(0, 1 - TR))``: higher when the truth wins."""
    tr = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - tr)))


class RougeL:
    """ROUGE-L of a generation against a reference over ``rouge_score``'s tokens (lower-cased
    alphanumeric words, Porter-stemmed with ``stem``: TOFU stems, MUSE does not): ``recall`` =
    LCS(reference, generation) / len(reference) (TOFU), ``f1`` the F-measure (MUSE)."""

    def __init__(self, variant: str = "recall", stem: bool = True) -> None:
        from rouge_score import rouge_scorer

        self.variant = {"recall": "recall", "f1": "fmeasure"}[variant]
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)

    def __call__(self, reference: str, generation: str) -> float:
        return float(getattr(self._scorer.score(reference, generation)["rougeL"], self.variant))


def ks_test(sample: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(statistic, p-value)``.

    TOFU's forget quality is this p-value between the forget-set truth ratios of the evaluated
    model and those of the retain (never-saw-the-forget-set) model. scipy picks the exact
    distribution for small samples, as TOFU's code (``ks_2samp`` defaults) does.
    """
    res = stats.ks_2samp(
        np.asarray(sample, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    )
    return float(res.statistic), float(res.pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (TOFU's model utility uses ``scipy.stats.hmean``)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("harmonic mean of no values")
    if np.any(arr < 0):
        raise ValueError("harmonic mean needs non-negative values")
    if np.any(arr == 0):
        return 0.0
    return float(arr.size / np.sum(1.0 / arr))


def auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of telling members from non-members, scores oriented "higher = member".

    Equals ``P(score(member) > score(non-member)) + 0.5 P(tie)`` (Mann-Whitney U / n1 n0),
    so 1.0 means every forget item looks more "seen" than every holdout item.
    """
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        raise ValueError("AUC needs at least one member and one non-member")
    ranks = stats.rankdata(np.concatenate([m, n]))
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def privleak(auc_model: float, auc_retain: float) -> float:
    """MUSE's PrivLeak in percent, ``((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain) * 100``.

    With AUCs oriented "forget items score as members", a model that still remembers the
    forget set has AUC near 1 and PrivLeak near -100; the retain model scores 0; an unlearned
    model that makes the forget set look *less* familiar than unseen text goes positive.
    Undefined (``ValueError``) when the retain model separates the sets perfectly.
    """
    base = 1.0 - float(auc_retain)
    if base <= 0.0:
        raise ValueError("the reference AUC is 1, so PrivLeak divides by zero")
    return ((1.0 - float(auc_model)) - base) / base * 100.0


def _lowest_fraction_mean(values: np.ndarray, k: float) -> float:
    count = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values)[:count]))


def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack: ``-NLL`` (mean answer-token log-likelihood)."""
    return float(np.mean(np.asarray(token_logprobs, dtype=np.float64)))


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """ZLib attack: ``-NLL / zlib_entropy``, the entropy being the zlib-compressed byte length."""
    entropy = len(zlib.compress(text.encode("utf-8")))
    return loss_score(token_logprobs) / entropy


def mink_score(token_logprobs: Sequence[float], k: float) -> float:
    """Min-K% Prob (Shi et al., 2024): mean of the lowest ``max(1, floor(k n))`` token
    log-probabilities, open-unlearning's count (``src/evals/metrics/mia/min_k.py``; negated
    there, oriented "lower = member")."""
    return _lowest_fraction_mean(np.asarray(token_logprobs, dtype=np.float64), k)


def minkpp_score(
    token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float], k: float
) -> float:
    """Min-K%++: Min-K% over ``(log p(x_t) - mu_t) / sigma_t``.

    ``mu_t`` and ``sigma_t`` are the mean and standard deviation of ``log p(z)`` for ``z`` drawn
    from the model's next-token distribution at position ``t`` (Zhang et al., 2024, eq. 2; the
    variance floored at 1e-6 as in open-unlearning's ``src/evals/metrics/mia/min_k_plus_plus.py``,
    see :mod:`soulcli.eval.scoring`).
    """
    z = (
        np.asarray(token_logprobs, dtype=np.float64) - np.asarray(mu, dtype=np.float64)
    ) / np.asarray(sigma, dtype=np.float64)
    return _lowest_fraction_mean(z, k)


def extraction_strength(hits: Sequence[bool]) -> float:
    """ES = ``1 - k/n`` over ``n`` answer tokens, open-unlearning's rule
    (``src/evals/metrics/memorization.py``, after Carlini et al., 2021/2023): ``k`` is the
    shortest prefix after which the teacher-forced argmax reproduces the whole rest of the
    answer, searched over ``k = 0 .. n-1``; when none does (even the last token is wrong) the
    search ends at ``k = n-1``, so ES is ``1/n``, not 0 (a one-token answer scores 1 either way).
    Otherwise ``k`` is the index after the last wrong token.
    """
    arr = np.asarray(hits, dtype=bool)
    if arr.size == 0:
        raise ValueError("extraction strength of an empty answer")
    wrong = np.flatnonzero(~arr)
    k = 0 if wrong.size == 0 else min(int(wrong[-1]) + 1, arr.size - 1)
    return 1.0 - k / arr.size


def exact_memorization(hits: Sequence[bool]) -> float:
    """EM: fraction of answer tokens where the teacher-forced argmax equals the answer token
    (Tirumala et al., 2022; open-unlearning's ``exact_memorization``)."""
    arr = np.asarray(hits, dtype=bool)
    if arr.size == 0:
        raise ValueError("exact memorization of an empty answer")
    return float(arr.mean())
