"""Round-to-nearest weight quantization, simulated in floating point ("fake" quantization).

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (ICLR 2025), quantize
unlearned models to 8 and 4 bits with RTN, GPTQ and AWQ and find that 4 bits bring much of the
forgotten knowledge back. This is their RTN: each output channel (row) of a ``[out, in]``
weight is cut into groups of ``group_size`` consecutive input weights, and each group is rounded
to ``2**bits`` levels

    s = (max - min) / (2**bits - 1),   z = round(-min / s)
    q = (clamp(round(w / s) + z, 0, 2**bits - 1) - z) * s

asymmetric with an integer zero point ``z``, the format GPTQ and AWQ store by default (a
symmetric grid would waste one of 4-bit's 16 levels on a sign and a range on the side the
group does not use). Since ``|z + min / s| <= 1/2`` the grid reaches within ``s / 2`` of both
``min`` and ``max``, so ``|w - q| <= s / 2`` for every weight, and weights already on the grid
are kept exactly. A group whose weights are all equal is kept as it is.

No CPU quantization library is a dependency of soulcli (torchao, optimum-quanto, bitsandbytes,
GPTQ and AWQ kernels target GPUs or are not installed), and an evaluation only needs the
rounded values, not integer kernels: the weights are replaced by ``q`` in their own dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn



def fake_quantize(weight: Tensor, bits: int, group_size: int | None = None) -> Tensor:
    """``weight`` ([out, in]) rounded to ``bits`` bits per group of ``group_size`` input weights
    of each row (None, or a size of at least ``in``: one group per output channel; where
    ``group_size`` does not divide ``in``, each row's last group holds the ``in % group_size``
    weights left); computed in fp32 and
    returned in the weight's dtype."""
    if weight.ndim != 2:
        raise ValueError(f"expected a [out, in] weight, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    size = in_features if group_size is None or group_size >= in_features else group_size
    groups = -(-in_features // size)
    w = weight.detach().float()
    if in_features % size:  # the last group is shorter: padded with its own last column, which
        # leaves its min and max, so its grid, unchanged; the padding is cut off below
        w = torch.cat([w, w[:, -1:].expand(out_features, groups * size - in_features)], 1)
    w = w.reshape(out_features, groups, size)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    levels = 2**bits - 1
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), (hi - lo) / levels)
    zero = torch.round(-lo / scale)
    q = (torch.clamp(torch.round(w / scale) + zero, 0, levels) - zero) * scale
    return torch.where(flat, w, q).reshape(out_features, -1)[:, :in_features].to(weight.dtype)


def quantize_linears(model: nn.Module, bits: int, group_size: int | None = None) -> list[str]:
    """Quantize, in place, the weight of every ``nn.Linear`` of ``model`` but the output head
    (``get_output_embeddings()``, full precision in GPTQ and AWQ, and tied to the input
    embedding in many models); embeddings, norms and biases stay as they are. Returns the names
    of the layers quantized."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    done = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module is not head:
                module.weight.copy_(fake_quantize(module.weight, bits, group_size))
                done.append(name)
    return done
