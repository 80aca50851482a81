"""The TOFU suite for the evaluation tests (a module, not a fixture: plain helpers)."""

from __future__ import annotations

from soulcli.data.template import PromptTemplate
from soulcli.eval import EvalConfig, evaluate_model
from soulcli.tasks import TofuData, TofuTask


def tofu_suite(template: PromptTemplate, cfg: EvalConfig | None = None):
    """The TOFU task's metric suite under ``template``."""
    return TofuTask(TofuData(template=template)).suite(cfg or EvalConfig())


def tofu_eval(model, tokenizer, template, splits, cfg=None, reference=None, progress=None):
    """``evaluate_model`` with the TOFU suite (what `soul evaluate` runs on a TOFU recipe)."""
    return evaluate_model(model, tokenizer, tofu_suite(template, cfg), splits, cfg, reference, progress)
