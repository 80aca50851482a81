# Stub: open-unlearning's trainer package (imported by src/eval.py) does `import deepspeed`
# in trainer/unlearn/rmu.py only to test isinstance(model, deepspeed.DeepSpeedEngine).
# Evaluation never uses DeepSpeed; this stub has no package metadata, so
# transformers/accelerate's is_deepspeed_available() stays False.
class DeepSpeedEngine:  # never instantiated
    pass
