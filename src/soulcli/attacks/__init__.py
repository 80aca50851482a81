"""Attacks on an unlearned model: does the forgetting survive? Weight quantization
(:mod:`soulcli.attacks.quantize`) and the recovered share of the target-vs-unlearned gap
(:mod:`soulcli.attacks.recovery`). Relearning reuses the finetuning loop and probing the task's
prompts (:meth:`soulcli.tasks.Task.probe`); ``soul attack`` (:mod:`soulcli.workflows.attack`)
runs them all."""

from soulcli.attacks.quantize import fake_quantize, quantize_linears
from soulcli.attacks.recovery import ATTACKS, recovered, recovery_view

__all__ = ["ATTACKS", "fake_quantize", "quantize_linears", "recovered", "recovery_view"]
