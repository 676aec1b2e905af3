"""AurA (Suau et al., ICML 2024, "Whispering Experts: Neural Interventions for Toxicity
Mitigation in Language Models"; released code apple/ml-aura).

Training-free. Every unit ("neuron") of the chosen MLP projections' outputs is an expert:

1. Responses: the projection's output (a linear layer's output, before any activation) on each
   labelled text, max-pooled over the text's real tokens (``pooling: max``).
2. Expertise: the AUROC of that pooled response at telling toxic (class 1) from non-toxic
   texts (ties share their average rank, as ``sklearn.metrics.roc_auc_score``).
3. ``aura``: a neuron with AUROC > 0.5 is scaled by ``α = 1 − 2 (AUROC − 0.5)`` (AUROC 1 → 0),
   the others are left alone. ``damp`` / ``det0`` (the paper's baselines): the ``num_experts``
   highest AUROCs over all scored modules (all with AUROC > 0.5 when unset) get ``damp_alpha``
   / 0.

Scaling a unit's output is a weight edit: its row of the projection (a column of GPT-2's
``Conv1D``) and its bias entry are multiplied by ``α``, so EasyEdit's ``weights_copy`` restores
the model bit-exactly. The control (``selection: random``) puts, in each module of each layer,
the same factors on as many neurons chosen at random (seeded).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from ... import architectures as arch
from .._common import keep_weights, originals, start_edit
from .._neurons import auroc_per_neuron, cached_neuron_statistics
from .hparams import AurAHyperParams

logger = logging.getLogger(__name__)

def aura_factors(auroc: torch.Tensor) -> torch.Tensor:
    """AurA's factor per neuron: ``1 − 2 (AUROC − 0.5)`` where AUROC > 0.5, else 1 (float32)."""
    alpha = torch.ones_like(auroc, dtype=torch.float32)
    mask = auroc > 0.5
    alpha[mask] = (1 - 2 * (auroc[mask] - 0.5)).float()
    return alpha


def factors(aurocs: Mapping[str, torch.Tensor], hparams: AurAHyperParams) -> Dict[str, torch.Tensor]:
    """``{module: (n,) float32 factors}`` for the chosen intervention. ``damp``/``det0`` pick their
    neurons over all modules at once (the released code's global threshold)."""
    if hparams.intervention == "aura":
        return {name: aura_factors(a) for name, a in aurocs.items()}
    value = hparams.damp_alpha if hparams.intervention == "damp" else 0.0
    names = list(aurocs)
    flat = torch.cat([aurocs[n] for n in names])
    if hparams.num_experts is None:
        chosen = flat > 0.5
    else:
        if hparams.num_experts > flat.numel():
            raise ValueError(f"num_experts={hparams.num_experts} exceeds the {flat.numel()} neurons scored "
                             f"(modules {hparams.modules}, {len(names)} projections)")
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[torch.argsort(flat, descending=True, stable=True)[: hparams.num_experts]] = True
    out, start = {}, 0
    for name in names:
        n = aurocs[name].numel()
        alpha = torch.ones(n)
        alpha[chosen[start : start + n]] = value
        out[name] = alpha
        start += n
    return out


def shuffled_factors(alphas: Mapping[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    """The random control: in each module, its factors other than 1 put on as many neurons
    chosen at random (a seeded generator, modules in order)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, alpha in alphas.items():
        damped = alpha[alpha != 1]
        where = torch.randperm(alpha.numel(), generator=gen)[: damped.numel()]
        new = torch.ones_like(alpha)
        new[where] = damped[torch.randperm(damped.numel(), generator=gen)]
        out[name] = new
    return out


def target_modules(model: nn.Module, hparams: AurAHyperParams) -> Dict[str, Tuple[nn.Module, bool]]:
    """``{module path: (module, stored (d_in, d_out))}`` of every projection scored, in layer
    order then ``modules`` order."""
    spec = arch.resolve_spec(model)
    n_layers = arch.num_layers(model)
    layers = list(range(n_layers)) if hparams.layers is None else sorted(set(hparams.layers))
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers: {bad} out of range; this model has blocks 0..{n_layers - 1}")
    out = {}
    for layer in layers:
        for kind in hparams.modules:
            path, transposed = arch.mlp_projection(model, spec, kind, layer)
            out[path] = (model.get_submodule(path), transposed)
    return out


def neuron_aurocs(model: nn.Module, tok, hparams: AurAHyperParams,
                  targets: Mapping[str, Tuple[nn.Module, bool]]) -> Dict[str, torch.Tensor]:
    """Per scored projection, each output unit's AUROC on the labelled texts (responses from a
    cached forward pass)."""
    texts = hparams.texts().for_model(tok)
    logger.info("AurA: %d texts (%d toxic), %d projections", len(texts.texts), int(texts.labels.sum()),
                len(targets))
    return cached_neuron_statistics(
        model, tok, texts, {p: m for p, (m, _) in targets.items()}, statistic="auroc", pooling=hparams.pooling,
        max_length=hparams.response_max_length, batch_size=hparams.activation_batch_size, cache_dir=hparams.cache_dir)


@torch.no_grad()
def scale_outputs(module: nn.Module, alpha: torch.Tensor, transposed: bool) -> None:
    """Multiply output unit j of a linear layer by ``alpha[j]``: row j of an ``nn.Linear`` weight
    (column j of a ``Conv1D`` one, stored ``(d_in, d_out)``) and bias entry j."""
    weight = module.weight
    a = alpha.to(device=weight.device, dtype=weight.dtype)
    weight.mul_(a.unsqueeze(0) if transposed else a.unsqueeze(1))
    if getattr(module, "bias", None) is not None:
        module.bias.mul_(a.to(module.bias.dtype))


def compute_factors(model: nn.Module, tok, hparams: AurAHyperParams) -> Dict[str, torch.Tensor]:
    """``{projection path: factors}`` (the random control's when ``selection: random``)."""
    targets = target_modules(model, hparams)
    alphas = factors(neuron_aurocs(model, tok, hparams, targets), hparams)
    return shuffled_factors(alphas, hparams.seed) if hparams.selection == "random" else alphas


@torch.no_grad()
def apply_aura_to_model(model: nn.Module, tok, requests: Any, hparams: AurAHyperParams, copy: bool = False,
                        return_orig_weights: bool = False, keep_original_weight: bool = False, **kwargs: Any):
    """EasyEdit entry point. AurA edits once from its labelled texts; ``requests`` are not used
    (it is not a per-instance method). Returns ``(model, weights_copy)``: the original weights
    (and biases) of the scaled projections whenever ``return_orig_weights`` or
    ``keep_original_weight`` is set."""
    model = start_edit(model, copy)
    targets = target_modules(model, hparams)
    alphas = compute_factors(model, tok, hparams)
    names: List[str] = []
    for path, (module, _) in targets.items():
        names.append(f"{path}.weight")
        if getattr(module, "bias", None) is not None:
            names.append(f"{path}.bias")
    weights_copy = originals(model, names) if keep_weights(return_orig_weights, keep_original_weight) else {}
    for path, (module, transposed) in targets.items():
        scale_outputs(module, alphas[path], transposed)
    damped = {p: int((a != 1).sum()) for p, a in alphas.items()}
    total = sum(a.numel() for a in alphas.values())
    logger.info("AurA (%s, %s): %d of %d neurons scaled", hparams.intervention, hparams.selection,
                sum(damped.values()), total)
    info = kwargs.get("info")
    if isinstance(info, dict):
        info.update({"neurons": total, "neurons_damped": sum(damped.values()),
                     "mean_factor_damped": float(torch.cat([a[a != 1] for a in alphas.values()]).mean())
                     if sum(damped.values()) else 1.0})
    return model, weights_copy


__all__ = ["apply_aura_to_model", "auroc_per_neuron", "aura_factors", "factors", "shuffled_factors",
           "scale_outputs", "compute_factors", "target_modules", "neuron_aurocs"]
