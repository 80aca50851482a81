# Stub: open-unlearning's src/evals/__init__.py imports its LMEvalEvaluator unconditionally,
# which imports lm-eval (an optional extra, `pip install .[lm-eval]`). The TOFU evaluator never
# calls it; these names only satisfy the imports.
def simple_evaluate(*a, **k):
    raise RuntimeError("lm_eval stub: lm-eval is not installed")
