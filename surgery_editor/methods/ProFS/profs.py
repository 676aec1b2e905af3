"""ProFS (Uppaal et al., ICLR 2025, "Model Editing as a Robust and Denoised Variant of DPO: A
Case Study on Toxicity"; preprint "DeTox: Toxic Subspace Projection for Model Editing").

Training-free. From N preference pairs (toxic, non-toxic), for each edited block l:

1. Embed both texts of every pair alone; the sentence embedding is block l's output (the
   residual stream after it, before any final norm) mean-pooled over the text's tokens.
2. ``T0 = E_toxic − E_nontoxic`` (N × d; the sign does not matter). Centring (``centering``):
   remove from every row the top right singular vector ``v1`` of the raw non-toxic embedding
   matrix (the "stopword"/mean direction every sentence shares): ``T = T0 (I − v1 v1ᵀ)``.
3. The toxic subspace is the span of T's top-``rank`` right singular vectors ``U`` (d × k).
4. Block l's MLP output ("value") matrix is projected so that nothing it writes lies in that
   subspace: ``W ← (I − U Uᵀ) W`` (``nn.Linear``, weight ``d × d_ff``); GPT-2's ``Conv1D``
   (``d_ff × d``) gets ``W ← W (I − U Uᵀ)``. Biases are not touched (as in the released code).

Differences from the released code (`Uppaal/detox-edit`), on purpose, all stated in the README:
the mean pooling is over real tokens only (the released code averages padded positions too,
which makes an embedding depend on the batch's padding); pairs stay aligned (the released code
samples the two sides with separate random indices since a late-2024 change); the pairs are
ParaDetox rewrites (toxic, neutral), because the paper's pairs (Lee et al. 2024, PPLM
continuations) are not available offline. Where an architecture normalises the MLP output before
adding it to the residual stream (Gemma-2/3's ``post_feedforward_layernorm``, gain ``γ``), the
projection removes ``span(diag(γ) U)`` from the MLP output instead, so that what reaches the
residual stream (``γ ⊙ y / rms(y)``) has no component in ``U``; the paper has no such model.

Options beyond the paper (defaults = the paper): ``strength`` s scales the projection
(``I − s U Uᵀ``; 1 = ProFS); ``pooling: rms_mean`` pools unit-RMS token states; ``subspace:
random`` is the control: a seeded random orthonormal basis of the same rank in each layer.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
from torch import nn

from ... import architectures as arch
from .._common import keep_weights, originals, start_edit
from .hparams import ProFSHyperParams


logger = logging.getLogger(__name__)


def toxic_subspace(toxic: torch.Tensor, non_toxic: torch.Tensor, rank: int, centering: bool = True) -> torch.Tensor:
    """``(d, rank)`` orthonormal basis of the toxic subspace of one layer's pair embeddings
    (``(n, d)`` each, row i of both from pair i), computed in float64."""
    if toxic.shape != non_toxic.shape or toxic.dim() != 2:
        raise ValueError(f"pair embeddings must be two (n, d) matrices of one shape, got {tuple(toxic.shape)} "
                         f"and {tuple(non_toxic.shape)}")
    n, d = toxic.shape
    if rank > min(n, d):
        raise ValueError(f"rank {rank} exceeds min(pairs, hidden size) = {min(n, d)}")
    diff = (toxic - non_toxic).double()
    if centering:
        v1 = torch.linalg.svd(non_toxic.double(), full_matrices=False).Vh[0]
        diff = diff - torch.outer(diff @ v1, v1)
    return torch.linalg.svd(diff, full_matrices=False).Vh[:rank].T.contiguous()


def random_subspace(d: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))
    return q


def output_basis(basis: torch.Tensor, gain: Optional[torch.Tensor]) -> torch.Tensor:
    """The directions to remove from the MLP output so that the residual-stream write has no
    component in ``span(basis)``: ``basis`` itself, or, behind a post-MLP norm with gain ``γ``,
    an orthonormal basis of ``span(diag(γ) basis)``."""
    if gain is None:
        return basis
    q, _ = torch.linalg.qr(gain.double().unsqueeze(1) * basis)
    return q


def project_out(weight: torch.Tensor, basis: torch.Tensor, strength: float = 1.0,
                transposed: bool = False) -> torch.Tensor:
    """``(I − s B Bᵀ) W`` (output dimension first) or, for ``transposed`` (Conv1D, output
    dimension last), ``W (I − s B Bᵀ)``; computed in float64, returned in ``weight``'s dtype."""
    w = weight.double()
    b = basis.double().to(w.device)
    if transposed:
        out = w - strength * (w @ b) @ b.T
    else:
        out = w - strength * b @ (b.T @ w)
    return out.to(weight.dtype)


def compute_subspaces(model: nn.Module, tok, hparams: ProFSHyperParams) -> Dict[int, torch.Tensor]:
    """Per edited layer, the ``(d, rank)`` basis (toxic, or the random control's)."""
    n_layers = arch.num_layers(model)
    bad = [i for i in hparams.layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has blocks 0..{n_layers - 1}")
    if hparams.subspace == "random":
        gen = torch.Generator().manual_seed(hparams.seed)
        d = model.get_input_embeddings().weight.shape[1]
        return {i: random_subspace(d, hparams.rank, gen) for i in sorted(hparams.layers)}
    toxic, non_toxic, n = hparams.states(model, tok, hparams.layers)
    logger.info("ProFS: %d pairs, rank %d, layers %s", n, hparams.rank, sorted(hparams.layers))
    # the float64 SVDs run where the model is when that is a GPU (a 7B layer's 500 x 4,096 pair
    # matrices take seconds per layer on a CPU thread)
    device = next(model.parameters()).device
    where = device if device.type == "cuda" else torch.device("cpu")
    return {i: toxic_subspace(toxic[i].to(where), non_toxic[i].to(where), hparams.rank, hparams.centering)
            for i in sorted(hparams.layers)}


@torch.no_grad()
def apply_profs_to_model(model: nn.Module, tok, requests: Any, hparams: ProFSHyperParams, copy: bool = False,
                         return_orig_weights: bool = False, keep_original_weight: bool = False, **kwargs: Any):
    """EasyEdit entry point. ProFS edits once from its preference pairs; ``requests`` are not
    used (it is not a per-instance method). Returns ``(model, weights_copy)``, the original
    MLP output matrices whenever ``return_orig_weights`` or ``keep_original_weight`` is set."""
    model = start_edit(model, copy)
    spec = arch.resolve_spec(model)
    bases = compute_subspaces(model, tok, hparams)
    names = [f"{spec.mlp_out_tmp.format(i)}.weight" for i in bases]
    weights_copy = originals(model, names) if keep_weights(return_orig_weights, keep_original_weight) else {}
    for (layer, basis), name in zip(bases.items(), names):
        param = model.get_parameter(name)
        out_basis = output_basis(basis.to(param.device), arch.mlp_out_gain(model, spec, layer))
        param.data.copy_(project_out(param.data, out_basis, hparams.strength, spec.mlp_out_transposed))
    info = kwargs.get("info")
    if isinstance(info, dict):
        info.update({"layers": sorted(bases), "rank": hparams.rank, "subspace": hparams.subspace})
    return model, weights_copy
