"""``rmu``: steer one layer's activations on forget data to a random direction."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from soulcli.errors import UserError
from soulcli.data.encode import answer_mask
from soulcli.objectives.base import Forward, Objective, ReferenceFn, Terms, UnlearnBatch, row_count
from soulcli.objectives.reference import Batch
from soulcli.schema import NON_NEGATIVE, POSITIVE


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM, through a peft wrapper if there is one."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        layers = getattr(get_decoder(), "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    found = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")
    ]
    if len(found) != 1:
        raise UserError(
            f"objective 'rmu' cannot tell which modules are the decoder layers of "
            f"{type(model).__name__}; use another objective for this model"
        )
    return found[0]


def layer_output(model: nn.Module, layer: nn.Module, data: Batch) -> torch.Tensor:
    """``[B, T, H]``: what ``layer`` returns (its hidden states) when ``model`` reads ``data``."""
    seen: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(keep)
    try:
        model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    finally:
        handle.remove()
    return seen[0]  # the first call: activation checkpointing may run the layer again in backward


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: :func:`~soulcli.data.encode.answer_mask` widened to every position of the
    hidden states (the last position predicts nothing)."""
    return torch.nn.functional.pad(answer_mask(labels), (0, 1), value=False)


def _sequence_mean(sq_err: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's mean over its positions ``pos`` (``[B, T]`` both)."""
    return ((sq_err * pos).sum(-1) / pos.sum(-1).clamp_min(1)).mean()


class RMU(Objective):
    """Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark: Measuring
    and Reducing Malicious Use With Unlearning", arXiv:2403.03218, the RMU forget and retain
    losses):

        L_forget = mean_{x in forget} 1/|x| sum_t || h_l(t) - c * u ||^2 / H
        L_retain = mean_{x in retain} 1/|x| sum_t || h_l(t) - h_l^start(t) ||^2 / H
        L        = gamma * L_forget + alpha * L_retain

    ``h_l`` is the output of decoder layer ``layer`` (default: the middle one, ``n_layers // 2``),
    ``u`` a fixed unit vector with i.i.d. uniform [0, 1) entries before normalisation (seeded by
    ``seed``) and ``c`` the ``steering_coeff``. The squared norms are divided by the hidden size
    ``H`` (a per-element MSE), the scale of the authors' released code, so their ``c`` (6.5 for
    Zephyr-7B) and ``alpha`` (about 1e3) carry over.

    Positions ``t`` are each sequence's answer positions (those whose logits predict an answer
    token, the positions the NLL scores): the shared prompt template would otherwise be pushed
    towards ``c * u`` by forget items and held in place by retain items at once.
    ``h_l^start`` is cached by ``setup`` per retain item at those positions, in the model's dtype
    (``H * n_answer * bytes`` per item, e.g. 8 KiB per answer token for a 4096-wide bf16 model).
    The retain term is always this activation MSE: ``unlearn.retain_loss`` has no effect.
    Parameters above ``layer`` receive no gradient; train those up to it (the paper updates the
    MLPs of layers ``l-2..l``).
    """

    name = "rmu"
    retain_kind = "activations"
    layer: Annotated[
        int | None, NON_NEGATIVE, "decoder layer whose output is steered (default: n_layers // 2)"
    ] = None
    steering_coeff: Annotated[float, POSITIVE, "c: the norm of the target activation c*u"] = 6.5
    seed: Annotated[int, "seed of the random direction u"] = 0

    def reference_tables(self) -> dict[str, tuple[str, ReferenceFn]]:
        return {"retain_act": ("retain", self._reference_activations)} if self.uses_retain else {}

    def cache_meta(self) -> dict[str, Any]:
        return {**super().cache_meta(), "layer": self.layer}

    def target_layer(self, model: nn.Module) -> nn.Module:
        layers = decoder_layers(model)
        index = len(layers) // 2 if self.layer is None else self.layer
        if index >= len(layers):
            raise UserError(
                f"objective 'rmu': layer must be < {len(layers)}, the model's number of decoder "
                f"layers; got {index}"
            )
        return layers[index]

    def direction(self, hidden: int) -> torch.Tensor:
        """The unit vector ``u`` (fp32, CPU), the same for a given seed and width."""
        u = torch.rand(hidden, generator=torch.Generator().manual_seed(self.seed))
        return u / u.norm()

    def counts(self, batch: UnlearnBatch) -> tuple[int, int]:
        """Both terms are means over sequences: their counts are rows."""
        return row_count(batch.forget), row_count(batch.retain)

    def forget_term(self, fwd: Forward, batch: UnlearnBatch) -> Terms:
        data = batch.forget
        h = layer_output(fwd.model, self.target_layer(fwd.model), data).float()
        target = self.steering_coeff * self.direction(h.shape[-1]).to(h.device)
        pos = answer_positions(data["labels"])
        loss = _sequence_mean((h - target).pow(2).mean(-1), pos)
        return loss, {"forget_act_norm": float(h.detach()[pos].norm(dim=-1).mean())}

    def retain_term(self, fwd: Forward, data: Batch) -> torch.Tensor:
        h = layer_output(fwd.model, self.target_layer(fwd.model), data).float()
        pos = answer_positions(data["labels"])
        reference = torch.cat(self.cache.rows("retain_act", data)).to(h.device, torch.float32)
        target = torch.zeros_like(h)
        target[pos] = reference
        return _sequence_mean((h - target).pow(2).mean(-1), pos)

    def _reference_activations(self, model: nn.Module, data: Batch) -> list[torch.Tensor]:
        pos = answer_positions(data["labels"])
        h = layer_output(model, self.target_layer(model), data)
        return list(h[pos].cpu().split(pos.sum(-1).tolist()))
