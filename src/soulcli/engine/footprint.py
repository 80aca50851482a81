"""Memory per device of a training run, estimated from the model's shapes (``--dry-run``).

Every figure is bytes on one device, from a model built on the meta device (shapes, no
weights) and the run's settings; the parts (b = bytes of ``model.dtype``, c = bytes of the
compute dtype: 2 under bf16-mixed / bf16-true, else 4; T trained and F frozen parameters):

* weights: fp32 ``4 (T + F)``; bf16-mixed ``4 T + b F`` (fp32 masters of the trained
  parameters, the frozen ones in ``model.dtype``); bf16-true ``2 (T + F)``;
* autocast copies (bf16-mixed only): ``2 T``, the bf16 cast of every trained weight that
  autocast makes in the forward and autograd keeps for the backward;
* gradients: ``T`` times the trained parameters' bytes (4, or 2 under bf16-true);
* DDP buckets (ddp on more than one device): as much again, DDP's gradient buckets
  (``gradient_as_bucket_view=False``, torch's default);
* optimizer state and curvature: 4 bytes per element of each fp32 state tensor the optimizer
  declares for a parameter (:meth:`soulcli.optim.base.RuleOptimizer.state_names_for`); the
  one named by its ``curvature_state`` (Sophia's ``hessian``) is the curvature line;
* activations, at ``S`` sequences of ``data.max_length`` tokens forwarded per micro-batch:
  per token and decoder layer, the tensors autograd keeps in a Llama-style layer with fused
  (SDPA) attention, ``A = 7 h + 2 h_kv + 4 i`` elements (attention: norm input and output, q,
  attention output, o_proj input = 5 h, k and v = 2 h_kv; MLP: norm input and output = 2 h,
  gate, its SiLU, up, their product = 4 i; the norms' fp32 internals and the attention's
  log-sum-exp are left out), so ``S * max_length * (L * A) * c``; with gradient checkpointing
  each layer keeps only its input, and one layer's ``A`` is live while it is recomputed:
  ``S * max_length * (L * h + A) * c``; plus the logits and their float32 log-softmax,
  ``S * max_length * V * (c + 4)``;
* fsdp shards weights, gradients, optimizer state and curvature across the N devices
  (``ceil(x / N)`` each) and adds the gathered parameters of two decoder layers (the one
  computing and the one prefetched), each parameter at its bytes in the weights line.

Activations are not divided: each device forwards its own micro-batch. Allocator
fragmentation, the CUDA context and temporary buffers are not counted.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from soulcli.optim.base import RuleOptimizer

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def activation_elements(config: Any) -> int:
    """``A``: elements kept for the backward per token and decoder layer (module docstring)."""
    h = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    return 7 * h + 2 * kv + 4 * config.intermediate_size


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (the largest ``ModuleList``)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


def estimate(model: torch.nn.Module, config: Any, optimizer: type[RuleOptimizer], *, precision: str,
             dtype: str, gradient_checkpointing: bool, strategy: str, devices: int, sequences: int,
             max_length: int) -> dict[str, int]:
    """Bytes per device of each part (module docstring), and their ``total``."""
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    t = sum(p.numel() for p in trained)
    f = sum(p.numel() for p in params) - t
    trained_bytes = 2 if precision == "bf16-true" else 4
    frozen_bytes = {"fp32": 4, "bf16-true": 2}.get(precision, DTYPE_BYTES[dtype])
    compute = 4 if precision == "fp32" else 2

    curvature_name = getattr(optimizer, "curvature_state", None)
    state = curvature = 0
    for p in trained:
        names = optimizer.state_names_for(p)
        curvature += 4 * p.numel() * (curvature_name in names)
        state += 4 * p.numel() * sum(name != curvature_name for name in names)

    sharded = strategy == "fsdp"
    share = (lambda x: math.ceil(x / devices)) if sharded else (lambda x: x)
    out = {
        "weights": share(trained_bytes * t + frozen_bytes * f),
        "autocast_copies": share(2 * t) if precision == "bf16-mixed" else 0,
        "gradients": share(trained_bytes * t),
        "ddp_buckets": trained_bytes * t if strategy == "ddp" and devices > 1 else 0,
        "optimizer_state": share(state),
        "curvature": share(curvature),
    }
    if sharded and devices > 1:
        layer = max((sum(p.numel() * (trained_bytes if p.requires_grad else frozen_bytes) for p in m.parameters())
                     for m in _layers(model)), default=0)
        out["fsdp_gathered_layers"] = 2 * layer
    tokens = sequences * max_length
    per_layer = activation_elements(config)
    layers = config.num_hidden_layers
    kept = layers * config.hidden_size + per_layer if gradient_checkpointing else layers * per_layer
    out["activations"] = tokens * (kept * compute + config.vocab_size * (compute + 4))
    out["total"] = sum(out.values())
    return out
