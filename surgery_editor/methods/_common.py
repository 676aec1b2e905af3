"""Pieces every method folder shares: the ``weights_copy`` bookkeeping of the EasyEdit contract."""

from __future__ import annotations

import copy as copy_module
from typing import Any, Dict, Iterable, Mapping, Tuple

import torch
from torch import nn


def originals(model: nn.Module, names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Copies of the named parameters (EasyEdit's ``weights_copy``), kept in host memory: on a
    GPU they would hold accelerator memory for as long as the edit lasts (LoRA-DPO's merge
    changes every projection of the model, i.e. a second copy of the model), and restoring
    copies them back to the parameter's device (EasyEdit's loop moves them there too)."""
    return {name: model.get_parameter(name).detach().to("cpu", copy=True) for name in names}


def bytes_on_device(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``tensors`` that sit on the model's device when that device is an accelerator
    (what an edit's ``weights_copy`` adds to its memory there); 0 on a CPU model."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        return 0
    return sum(t.numel() * t.element_size() for t in tensors.values()
               if isinstance(t, torch.Tensor) and t.device == device)


def restore_weights(model: nn.Module, weights_copy: Mapping[str, torch.Tensor]) -> None:
    """Copy each saved tensor back into the parameter of that name (bit-exact): EasyEdit's
    restore loop."""
    with torch.no_grad():
        for name, value in weights_copy.items():
            model.get_parameter(name).copy_(value)


def start_edit(model: nn.Module, copy: bool) -> nn.Module:
    return copy_module.deepcopy(model) if copy else model


def keep_weights(return_orig_weights: bool, keep_original_weight: bool) -> bool:
    return bool(return_orig_weights or keep_original_weight)


def as_requests(requests: Any) -> list:
    if requests is None:
        return []
    return [requests] if isinstance(requests, dict) else list(requests)


EditResult = Tuple[nn.Module, Dict[str, torch.Tensor]]
