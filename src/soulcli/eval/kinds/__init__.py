"""The metric kinds, one module per family; importing this package registers them all in
:data:`soulcli.eval.metric.METRIC_KINDS`. A task's suite instantiates them by name."""

from soulcli.eval.kinds.aggregate import HarmonicMean, KSTest
from soulcli.eval.kinds.bleu import GeneratedBleu
from soulcli.eval.kinds.choice import ChoiceAccuracy
from soulcli.eval.kinds.likelihood import AnswerProb, NormalizedProb, TruthRatio
from soulcli.eval.kinds.memorization import ExactMemorization, ExtractionStrength
from soulcli.eval.kinds.mia import MembershipAUC, PrivLeak
from soulcli.eval.kinds.rouge import GeneratedRouge
from soulcli.eval.kinds.toxicity import Perplexity, ToxicRate

__all__ = [
    "AnswerProb", "ChoiceAccuracy", "ExactMemorization", "GeneratedBleu", "ExtractionStrength", "GeneratedRouge", "HarmonicMean",
    "KSTest", "MembershipAUC", "NormalizedProb", "Perplexity", "PrivLeak", "ToxicRate", "TruthRatio",
]
