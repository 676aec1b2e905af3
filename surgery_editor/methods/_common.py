"""Pieces every method folder shares: the ``weights_copy`` bookkeeping of the EasyEdit contract."""

from __future__ import annotations

import copy as copy_module
from typing import Any, Dict, Iterable, Mapping, Tuple

import torch
from torch import nn


def originals(model: nn.Module, names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Clones of the named parameters (EasyEdit's ``weights_copy``)."""
    return {name: model.get_parameter(name).detach().clone() for name in names}


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
