"""Model Surgery: probe -> select gate rows -> move them along the probe direction.

Paper recipe (Wang et al. 2024, arXiv 2407.08770):

1. ``w = W[1]`` of a linear softmax probe on mean-pooled ``hidden_states[-1]``;
2. score every row ``g`` of every layer's MLP gate projection by ``-cos(g, w)``, take the
   global top-K over all layers;
3. ``g <- g + alpha * w`` for the selected rows.

Options (each a field of :class:`~surgery_editor.hparams.ModelSurgeryHyperParams`) cover the
reversed push (``select: most_aligned`` or a negative ``alpha``), a random-direction control
(``edit_direction: random``), a norm-aware variant (``scoring: norm_aware``,
``step: row_norm``) that scores and moves each gate row through the RMSNorm gains that sit
between the residual stream and the gate, and a layer-wise variant (``probe_mode:
layerwise``): each layer ``l`` gets its own direction ``w_l`` read where its gate reads (the
output of the norm in front of its MLP), its rows are scored by ``-cos(g, w_l)`` and moved
along ``w_l``, so no direction is carried across layers whose bases drift.
"""

from __future__ import annotations

import copy as copy_module
import logging
import time
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ... import architectures as arch
from ...activations import (cached_pooled_block_outputs, cached_pooled_hidden_states, ensure_pad_token,
                            pooled_hidden_states)
from ...infra.cache import TensorCache, config_hash, stable_hash, weights_fingerprint
from ...data import LabelledTexts, load_probe_texts
from .._neurons import cached_neuron_statistics
from .hparams import ModelSurgeryHyperParams
from .patch import RowEdit, SurgeryPatch
from .probe import LinearProbe, check_probe_labels, train_probe

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Probe
# ---------------------------------------------------------------------------------------
def probe_texts(hparams: ModelSurgeryHyperParams, tok=None) -> LabelledTexts:
    """``hparams.probe_data`` read (relative paths under ``hparams.data_dir``) and, where a
    probe is trained on it, checked to hold enough examples of each class for the probe and its
    held-out split (:func:`~surgery_editor.methods.ModelSurgery.probe.check_probe_labels`).
    Given ``tok``, the texts are as the model reads them (prompted answers in its chat
    template, :meth:`~surgery_editor.data.LabelledTexts.for_model`)."""
    data = load_probe_texts(hparams.probe_data, hparams.data_dir)
    if hparams.probe_mode == "single" or hparams.layer_direction == "probe":
        check_probe_labels(data.labels, hparams.probe_val_fraction, f"{data.source} (probe_data)")
    return data if tok is None else data.for_model(tok)


def train_behaviour_probe(model: nn.Module, tok, hparams: ModelSurgeryHyperParams,
                          fingerprint: Optional[str] = None, use_cache: bool = True) -> LinearProbe:
    """Train (or load from the probe cache) the probe on ``hparams.probe_data``."""
    data = probe_texts(hparams, tok)
    fingerprint = fingerprint or weights_fingerprint(model)
    ensure_pad_token(tok)
    probe_settings = {k: getattr(hparams, k) for k in (
        "probe_layer", "probe_pooling", "probe_max_length", "probe_lr", "probe_batch_size", "probe_epochs",
        "probe_val_fraction", "seed")}
    key = stable_hash({"config": config_hash(model), "weights": fingerprint, "data": data.content_hash(),
                       "tokenizer": [getattr(tok, "name_or_path", ""), len(tok)], **probe_settings})
    cache = TensorCache("probes", hparams.cache_dir, enabled=use_cache)
    hit = cache.get(key)
    if hit is not None:
        logger.info("probe: cache hit %s", cache.path(key))
        return LinearProbe.from_tensors(hit[0], hit[1]["info"])
    feats = cached_pooled_hidden_states(
        model, tok, data.texts, data.content_hash(), layer=hparams.probe_layer, pooling=hparams.probe_pooling,
        max_length=hparams.probe_max_length, batch_size=hparams.activation_batch_size,
        cache_dir=hparams.cache_dir, fingerprint=fingerprint, use_cache=use_cache)
    probe = train_probe(feats, torch.from_numpy(data.labels), lr=hparams.probe_lr,
                        batch_size=hparams.probe_batch_size, epochs=hparams.probe_epochs,
                        val_fraction=hparams.probe_val_fraction, seed=hparams.seed)
    cache.put(key, probe.tensors(), {"info": probe.info(), "data": data.source, **probe_settings})
    return probe


def request_direction(model: nn.Module, tok, requests: Sequence[Dict[str, Any]],
                      hparams: ModelSurgeryHyperParams) -> torch.Tensor:
    """Per-request direction for EasyEdit's one-instance protocol.

    For each request, the unsafe response (``ground_truth``) and the safe response
    (``target_new``) are embedded like probe texts (hidden_states[probe_layer], pooled);
    the direction is the mean over requests of ``h(unsafe) - h(safe)`` -- the
    difference-of-means probe, the only linear direction two examples determine -- rescaled
    to norm ``request_direction_norm``. Like ``W[1]``, it points towards the behaviour to avoid.
    """
    if not requests:
        raise ValueError("probe_source: request needs at least one request")
    texts: List[str] = []
    for i, req in enumerate(requests):
        for key in ("ground_truth", "target_new"):
            value = req.get(key)
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"request {i}: probe_source: request needs a non-empty {key!r} "
                                 f"({'unsafe' if key == 'ground_truth' else 'safe'} response), got {value!r}")
            texts.append(value)
    feats = pooled_hidden_states(model, tok, texts, layer=hparams.probe_layer, pooling=hparams.probe_pooling,
                                 max_length=hparams.probe_max_length, batch_size=hparams.activation_batch_size,
                                 show_progress=False)
    diff = (feats[0::2] - feats[1::2]).mean(dim=0)
    norm = diff.norm()
    if norm == 0:
        raise ValueError("the unsafe and safe responses have identical representations; no direction to edit along")
    return diff / norm * hparams.request_direction_norm


def layer_directions(model: nn.Module, tok, hparams: ModelSurgeryHyperParams, layers: Sequence[int],
                     fingerprint: Optional[str] = None) -> Tuple[Dict[int, torch.Tensor], Dict[str, Any]]:
    """``probe_mode: layerwise``: ``{layer: w_l}``, each read at the input of layer ``l``'s MLP
    (pooled per ``probe_pooling``, every layer from one cached forward pass over the probe
    texts): the class-1 mean minus the class-0 mean (``mean_difference``), or a linear probe's
    ``probe_direction`` (``probe``). Also returns per-layer probe accuracies (``probe``)."""
    data = probe_texts(hparams, tok)
    feats = cached_pooled_block_outputs(model, tok, data.texts, data.content_hash(), layers,
                                        pooling=hparams.probe_pooling, max_length=hparams.probe_max_length,
                                        batch_size=hparams.activation_batch_size, cache_dir=hparams.cache_dir,
                                        site="mlp_in", fingerprint=fingerprint)
    labels = torch.from_numpy(data.labels)
    directions: Dict[int, torch.Tensor] = {}
    accuracy: Dict[int, float] = {}
    for layer in layers:
        x = feats[layer].float()
        if hparams.layer_direction == "mean_difference":
            directions[layer] = x[labels == 1].mean(dim=0) - x[labels == 0].mean(dim=0)
        else:
            probe = train_probe(x, labels, lr=hparams.probe_lr, batch_size=hparams.probe_batch_size,
                                epochs=hparams.probe_epochs, val_fraction=hparams.probe_val_fraction,
                                seed=hparams.seed)
            directions[layer] = probe.direction(hparams.probe_direction)
            accuracy[layer] = probe.val_accuracy
        if directions[layer].norm() == 0:
            raise ValueError(f"probe_mode=layerwise: layer {layer}'s direction is zero (both classes have the same "
                             "features there); drop it from edit_layers")
    info = {"probe_data": data.source, "n_texts": len(data.texts), "layer_probe_accuracy": accuracy or None}
    return directions, info


# ---------------------------------------------------------------------------------------
# Selection and edit
# ---------------------------------------------------------------------------------------
def candidate_layers(model: nn.Module, edit_layers: Optional[Sequence[int]]) -> List[int]:
    n = arch.num_layers(model)
    if edit_layers is None:
        return list(range(n))
    bad = [l for l in edit_layers if not 0 <= l < n]
    if bad:
        raise ValueError(f"edit_layers {bad} out of range: the model has layers 0..{n - 1}")
    return sorted(set(edit_layers))


def _probe_reads_final_norm(model: nn.Module, hparams: ModelSurgeryHyperParams) -> bool:
    n = arch.num_layers(model)
    return hparams.probe_layer in (-1, n) and hparams.probe_pooling == "mean"


def _scoring_direction(model, spec, w, hparams) -> torch.Tensor:
    """The direction rows are scored against and moved along: ``w`` itself (paper), or for
    ``norm_aware`` the probe direction on the unit-RMS residual stream the gates read."""
    w = w.float()
    if hparams.scoring == "norm_aware" and _probe_reads_final_norm(model, hparams):
        return w * arch.norm_gain(model, spec, None)
    return w


def _layer_gain(model, spec, layer: int, floor: float) -> Tuple[torch.Tensor, torch.Tensor]:
    gain = arch.norm_gain(model, spec, layer)
    keep = gain.abs() >= floor * gain.abs().median()
    return gain, keep


def score_rows(model: nn.Module, spec: arch.ArchSpec, w: torch.Tensor, layers: Sequence[int],
               hparams: ModelSurgeryHyperParams) -> Dict[int, torch.Tensor]:
    """Per layer, fp32 scores of every gate row; higher = selected first.

    ``cosine``: ``-cos(g, w)`` (paper) or ``+cos`` for ``select: most_aligned``.
    ``norm_aware``: the same with ``g * gain_l`` and the residual-space direction.
    """
    direction = _scoring_direction(model, spec, w, hparams)
    return _cosine_scores(model, spec, {layer: direction for layer in layers}, hparams)


def _cosine_scores(model, spec, directions: Dict[int, torch.Tensor],
                   hparams: ModelSurgeryHyperParams) -> Dict[int, torch.Tensor]:
    """``{layer: sign * cos(row, directions[layer])}`` over the layer's gate rows (through the
    layer's norm gain for ``norm_aware``); sign -1 for ``most_opposed``."""
    sign = -1.0 if hparams.select == "most_opposed" else 1.0
    scores = {}
    for layer, d in directions.items():
        rows = arch.gate_rows(model.get_parameter(arch.gate_param_name(spec, layer)).detach(), spec).float()
        if hparams.scoring == "norm_aware":
            rows = rows * arch.norm_gain(model, spec, layer).to(rows.device)
        scores[layer] = (sign * torch.nn.functional.cosine_similarity(
            rows, d.float().to(rows.device).unsqueeze(0), dim=1)).cpu()
    return scores


def _write_scores(model, spec, directions: Dict[int, torch.Tensor],
                  hparams: ModelSurgeryHyperParams) -> Dict[int, torch.Tensor]:
    """``scoring: writes``: ``{layer: sign * cos(down column j, d_layer)}``, neuron j's
    down-projection column (through the post-MLP norm's gain where the architecture has one) as
    what the neuron adds to the residual stream; sign -1 for ``most_opposed``."""
    sign = -1.0 if hparams.select == "most_opposed" else 1.0
    scores = {}
    for layer, d in directions.items():
        path, transposed = arch.mlp_projection(model, spec, "down", layer, key="scoring: writes")
        weight = model.get_submodule(path).weight.detach().float()
        columns = weight if transposed else weight.t()  # (n_neurons, d_model)
        gain = arch.mlp_out_gain(model, spec, layer)
        if gain is not None:
            columns = columns * gain.to(columns.device)
        scores[layer] = (sign * torch.nn.functional.cosine_similarity(
            columns, d.float().to(columns.device).unsqueeze(0), dim=1)).cpu()
    return scores


def neuron_statistics(model: nn.Module, tok, hparams: ModelSurgeryHyperParams, layers: Sequence[int],
                      fingerprint: Optional[str] = None) -> Dict[int, torch.Tensor]:
    """``scoring: activation_*``: per candidate layer, each gate neuron's ``AUROC - 0.5``
    (``activation_auroc``) or class-1-minus-class-0 mean (``activation_difference``) of its gate
    output pooled over each probe text (``neuron_pooling``), from one cached forward pass."""
    data = probe_texts(hparams, tok)
    spec = _spec(model, hparams)
    paths = {layer: arch.gate_param_name(spec, layer)[: -len(".weight")] for layer in layers}
    stats = cached_neuron_statistics(
        model, tok, data, {p: model.get_submodule(p) for p in paths.values()},
        statistic="auroc" if hparams.scoring == "activation_auroc" else "mean_difference",
        pooling=hparams.neuron_pooling, max_length=hparams.probe_max_length,
        batch_size=hparams.activation_batch_size, cache_dir=hparams.cache_dir, fingerprint=fingerprint)
    centre = 0.5 if hparams.scoring == "activation_auroc" else 0.0
    return {layer: stats[p] - centre for layer, p in paths.items()}


def _row_scores(model, spec, w, directions, layers, hparams,
                neuron_stats: Optional[Dict[int, torch.Tensor]]) -> Dict[int, torch.Tensor]:
    """Per candidate layer, the fp32 score of every gate row under ``hparams.scoring`` (higher =
    selected first)."""
    if hparams.scoring.startswith("activation_"):
        if neuron_stats is None or set(neuron_stats) != set(layers):
            raise ValueError(f"scoring={hparams.scoring!r} needs each candidate layer's neuron statistics on "
                             "probe_data (neuron_statistics; compute_patch collects them)")
        sign = -1.0 if hparams.select == "most_opposed" else 1.0
        return {layer: (sign * neuron_stats[layer]).float() for layer in layers}
    if hparams.scoring == "writes":
        # into the residual stream: a direction read after an RMSNorm is d * gain there
        if directions is None:
            d = w.float() * arch.norm_gain(model, spec, None) if _probe_reads_final_norm(model, hparams) else w
            directions = {layer: d for layer in layers}
        else:
            directions = {layer: d.float() * arch.norm_gain(model, spec, layer) for layer, d in directions.items()}
        return _write_scores(model, spec, directions, hparams)
    if directions is None:
        return score_rows(model, spec, w, layers, hparams)
    return _cosine_scores(model, spec, directions, hparams)


def resolve_top_k(total: int, hparams: ModelSurgeryHyperParams) -> int:
    k = int(hparams.top_k) if hparams.top_k is not None else int(round(hparams.top_k_fraction * total))
    if not 1 <= k <= total:
        raise ValueError(f"top_k resolves to {k}, but there are {total} candidate rows")
    return k


def select_top_k(scores: Dict[int, torch.Tensor], k: int) -> Dict[int, torch.Tensor]:
    """Global top-``k`` over all layers: ``{layer: sorted row indices}`` (layers with none omitted)."""
    layers = list(scores)
    flat = torch.cat([scores[l] for l in layers])
    top = torch.topk(flat, k).indices
    sizes = torch.tensor([scores[l].numel() for l in layers])
    offsets = torch.cumsum(sizes, 0) - sizes
    picked: Dict[int, torch.Tensor] = {}
    layer_of = torch.searchsorted(torch.cumsum(sizes, 0), top, right=True)
    for li in layer_of.unique().tolist():
        rows = top[layer_of == li] - offsets[li]
        picked[layers[li]] = torch.sort(rows).values.long()
    return picked


def select_per_layer(scores: Dict[int, torch.Tensor], k: int) -> Dict[int, torch.Tensor]:
    """``k`` split evenly over the layers (the first ``k mod L`` layers take one more), the top
    of each layer: ``{layer: sorted row indices}``."""
    layers = list(scores)
    base, extra = divmod(k, len(layers))
    picked: Dict[int, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        n = min(base + (i < extra), scores[layer].numel())
        if n:
            picked[layer] = torch.sort(torch.topk(scores[layer], n).indices).values.long()
    return picked


def _random_like(v: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r = torch.randn(v.shape, generator=generator)
    return r / r.norm() * v.norm()


def _edit_vector(model, spec, w, hparams, generator: torch.Generator) -> torch.Tensor:
    """The direction rows move along (residual space for norm_aware), maybe the random control."""
    v = _scoring_direction(model, spec, w, hparams)
    return _random_like(v, generator) if hparams.edit_direction == "random" else v


def edited_rows(rows: torch.Tensor, v: torch.Tensor, alpha: float, step: str,
                gain: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """New fp32 rows. Without ``gain``: ``rows + alpha*v`` (absolute) or
    ``rows + alpha*|row|*v/|v|`` (row_norm). With ``gain`` (norm_aware), the effective row
    ``row*gain`` moves that way instead, i.e. the weight moves by ``delta/gain`` on the
    dimensions in ``keep`` (tiny gains are left unedited)."""
    rows = rows.float()
    v = v.to(rows.device).float()
    eff = rows if gain is None else rows * gain
    if step == "absolute":
        delta = alpha * v.expand_as(rows)
    else:
        delta = alpha * eff.norm(dim=1, keepdim=True) * (v / v.norm())
    if gain is not None:
        delta = torch.where(keep, delta / gain, torch.zeros_like(delta))
    return rows + delta


def _check_rows_changed(selected: int, unchanged: int, alpha: float, dtype: torch.dtype) -> None:
    """A step smaller than half the spacing of ``dtype`` near a row's values rounds the row
    back to itself: warn when some selected rows do not change, refuse when none does."""
    if unchanged == 0:
        return
    hint = (f"use a larger alpha (now {alpha}) or load the model in float32 (model.dtype=float32 / "
            f"load_model(dtype='float32'))")
    if unchanged == selected:
        raise ValueError(f"model surgery would change nothing: all {selected} selected rows round back to their "
                         f"original values in {dtype} at alpha={alpha}; {hint}")
    message = (f"model surgery: {unchanged} of {selected} selected rows round back to their original values in "
               f"{dtype} at alpha={alpha}, so only {selected - unchanged} rows change; {hint}")
    logger.warning(message)
    warnings.warn(message, stacklevel=3)


def _spec(model: nn.Module, hparams: ModelSurgeryHyperParams) -> arch.ArchSpec:
    return arch.resolve_spec(model, {k: getattr(hparams, k) for k in ("gate_module_tmp", "mlp_norm_tmp",
                                                                      "final_norm_module")})


def check_selection(model: nn.Module, hparams: ModelSurgeryHyperParams) -> None:
    """``edit_layers`` and ``top_k`` / ``top_k_fraction`` against this model's gate rows, as
    :func:`build_patch` resolves them, checked before activations are collected or a probe is
    trained (layer-wise, the candidate layers are ``edit_layers`` too)."""
    spec = _spec(model, hparams)
    layers = candidate_layers(model, hparams.edit_layers)
    resolve_top_k(sum(arch.gate_rows(model.get_parameter(arch.gate_param_name(spec, layer)), spec).shape[0]
                      for layer in layers), hparams)


@torch.no_grad()
def build_patch(model: nn.Module, w: Optional[torch.Tensor], hparams: ModelSurgeryHyperParams,
                probe: Optional[LinearProbe] = None, metadata: Optional[Dict[str, Any]] = None,
                directions: Optional[Dict[int, torch.Tensor]] = None,
                neuron_stats: Optional[Dict[int, torch.Tensor]] = None) -> SurgeryPatch:
    """Score, select and compute the edited rows for direction ``w`` (or, layer-wise, for
    ``directions = {layer: w_l}``, which then also fixes the candidate layers); the model is not
    changed. ``neuron_stats`` (:func:`neuron_statistics`) scores the rows for ``activation_*``."""
    spec = _spec(model, hparams)
    hidden = arch.gate_rows(model.get_parameter(arch.gate_param_name(spec, 0)), spec).shape[1]
    for name_, vec in ([("probe direction", w)] if directions is None else
                       [(f"layer {l}'s direction", d) for l, d in directions.items()]):
        if vec is None or vec.shape != (hidden,):
            shape = None if vec is None else tuple(vec.shape)
            raise ValueError(f"{name_} has shape {shape}, gate rows have length {hidden}")
    gen = torch.Generator().manual_seed(hparams.seed)
    if directions is None:
        layers = candidate_layers(model, hparams.edit_layers)
        scores = _row_scores(model, spec, w, None, layers, hparams, neuron_stats)
        v = _edit_vector(model, spec, w.float().cpu(), hparams, gen)
        vectors = {layer: v for layer in layers}
    else:
        layers = candidate_layers(model, list(directions))
        scores = _row_scores(model, spec, None, directions, layers, hparams, neuron_stats)
        vectors = {layer: directions[layer].float().cpu() for layer in layers}
        if hparams.edit_direction == "random":
            vectors = {layer: _random_like(vectors[layer], gen) for layer in layers}
    total = sum(s.numel() for s in scores.values())
    k = resolve_top_k(total, hparams)
    picked = select_top_k(scores, k) if hparams.budget == "global" else select_per_layer(scores, k)
    edits = []
    unchanged = 0
    for layer, rows_idx in picked.items():
        name = arch.gate_param_name(spec, layer)
        param = model.get_parameter(name)
        view = arch.gate_rows(param.detach(), spec)
        original = view[rows_idx.to(param.device)].cpu().clone()
        v = vectors[layer]
        if directions is None and hparams.scoring == "norm_aware":
            gain, keep = _layer_gain(model, spec, layer, hparams.gain_floor)
            new = edited_rows(original, v, hparams.alpha, hparams.step, gain.cpu(), keep.cpu())
        else:
            new = edited_rows(original, v, hparams.alpha, hparams.step)
        new = new.to(param.dtype)
        unchanged += int((new == original).all(dim=1).sum())
        edits.append(RowEdit(param_name=name, layer=layer, rows=rows_idx.cpu(), original=original,
                             edited=new, rows_are_columns=spec.rows_are_columns))
    dtype = next(model.parameters()).dtype
    _check_rows_changed(k, unchanged, hparams.alpha, dtype)
    selected_scores = torch.cat([scores[l][picked[l]] for l in picked])
    meta = {
        "model_name": str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")),
        "model_type": getattr(model.config, "model_type", None),
        "hidden_size": hidden,
        "config_hash": config_hash(model),
        "dtype": str(dtype),
        "n_candidates": total, "top_k": k, "rows_changed": k - unchanged, "candidate_layers": layers,
        "selected_score_mean": float(selected_scores.mean()), "selected_score_min": float(selected_scores.min()),
        "probe_accuracy": probe.val_accuracy if probe is not None else None,
        "hparams": {k_: v_ for k_, v_ in hparams.to_dict().items() if k_ != "model_name"},
    }
    meta.update(metadata or {})
    v = vectors[layers[0]] if directions is None else torch.stack([vectors[layer] for layer in layers])
    return SurgeryPatch(edits=edits, alpha=hparams.alpha, direction=v, metadata=meta,
                        probe_weight=probe.weight if probe is not None else None,
                        probe_bias=probe.bias if probe is not None else None)


# ---------------------------------------------------------------------------------------
# Whole pipeline
# ---------------------------------------------------------------------------------------
_PATCH_CACHE: "OrderedDict[str, SurgeryPatch]" = OrderedDict()
_PATCH_CACHE_SIZE = 4


def clear_patch_cache() -> None:
    _PATCH_CACHE.clear()


def forward_floor(model: nn.Module, tok, hparams: ModelSurgeryHyperParams, limit: Optional[int] = None) -> int:
    """The forward passes alone over the first ``limit`` (``None``: all) probe texts, pooled as
    the probe reads them (the least a cold edit costs); returns how many texts it read."""
    texts = probe_texts(hparams, tok).texts[:limit]
    pooled_hidden_states(model, tok, texts, layer=hparams.probe_layer, pooling=hparams.probe_pooling,
                         max_length=hparams.probe_max_length, batch_size=hparams.activation_batch_size,
                         show_progress=False)
    return len(texts)


def sweep_step(hparams: ModelSurgeryHyperParams) -> Dict[str, Any]:
    """A sweep step's settings: half the ``alpha`` and half the rows (the probe and activations
    the first edit cached serve it; the in-memory patch memo does not)."""
    step: Dict[str, Any] = {"alpha": hparams.alpha * 0.5}
    if hparams.top_k is not None:
        step["top_k"] = max(1, hparams.top_k // 2)
    else:
        step["top_k_fraction"] = hparams.top_k_fraction / 2
    return step


def compute_patch(model: nn.Module, tok, hparams: ModelSurgeryHyperParams,
                  requests: Optional[Sequence[Dict[str, Any]]] = None, use_cache: bool = True) -> SurgeryPatch:
    """The patch for ``hparams`` on ``model`` (not applied).

    ``probe_source: dataset``: the probe comes from the disk cache or is trained once; the
    patch is memoised in memory per (weights, hparams), so per-request calls are cheap.
    ``probe_source: request``: a fresh direction from ``requests``.
    """
    start = time.perf_counter()
    check_selection(model, hparams)
    if hparams.probe_source == "request":
        w = request_direction(model, tok, requests or [], hparams)
        patch = build_patch(model, w, hparams, metadata={"probe_source": "request"})
    else:
        fingerprint = weights_fingerprint(model)
        key = f"{fingerprint}:{config_hash(model)}:{hparams.method_key()}"
        if use_cache and key in _PATCH_CACHE:
            _PATCH_CACHE.move_to_end(key)
            return _PATCH_CACHE[key]
        layers = candidate_layers(model, hparams.edit_layers)
        stats = (neuron_statistics(model, tok, hparams, layers, fingerprint)
                 if hparams.scoring.startswith("activation_") else None)
        if hparams.probe_mode == "layerwise":
            directions, info = layer_directions(model, tok, hparams, layers, fingerprint)
            patch = build_patch(model, None, hparams, directions=directions, neuron_stats=stats,
                                metadata={"probe_source": "dataset", "probe_mode": "layerwise", "probe": info,
                                          "probe_data": hparams.probe_data})
        else:
            probe = train_behaviour_probe(model, tok, hparams, fingerprint=fingerprint, use_cache=use_cache)
            w = probe.direction(hparams.probe_direction)
            patch = build_patch(model, w, hparams, probe=probe, neuron_stats=stats,
                                metadata={"probe_source": "dataset", "probe": probe.info(),
                                          "probe_data": hparams.probe_data})
        if use_cache:
            _PATCH_CACHE[key] = patch
            while len(_PATCH_CACHE) > _PATCH_CACHE_SIZE:
                _PATCH_CACHE.popitem(last=False)
    patch.metadata["compute_seconds"] = time.perf_counter() - start
    logger.info("model surgery: %d rows selected over %d layers (K of %d candidates), %d of them changed",
                patch.num_rows, len(patch.edits), patch.metadata["n_candidates"], patch.metadata["rows_changed"])
    return patch


_APPLIED = "_model_surgery_applied"  # on a model: {method_key: patch} of the dataset-probe edits applied to it


def applied_patch(model: nn.Module, hparams: ModelSurgeryHyperParams) -> Optional[SurgeryPatch]:
    """The ``probe_source: dataset`` patch of these settings (``hparams.method_key()``) that
    ``model`` carries now: applied by :func:`apply_model_surgery_to_model` and its rows still
    the edited ones (a model restored since, by EasyEdit's restore loop or
    :meth:`SurgeryPatch.revert`, carries none); ``None`` otherwise."""
    patch = getattr(model, _APPLIED, {}).get(hparams.method_key())
    if patch is None:
        return None
    try:
        patch.check_compatible(model, "edited")
    except ValueError:
        return None
    return patch


def apply_model_surgery_to_model(model: nn.Module, tok, requests: Sequence[Dict[str, Any]],
                                 hparams: ModelSurgeryHyperParams, copy: bool = False,
                                 return_orig_weights: bool = False, keep_original_weight: bool = False,
                                 **kwargs: Any) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """EasyEdit entry point: edit ``model`` in place (or a deep copy with ``copy=True``).

    Returns ``(model, weights_copy)``; ``weights_copy`` maps each edited parameter's name (as
    ``model.get_parameter`` resolves it) to its tensor before the edit whenever
    ``return_orig_weights`` or ``keep_original_weight`` is set, so EasyEdit's restore loop
    puts the model back bit-exactly. Extra ``kwargs`` from EasyEdit's editors are ignored.

    Called again on a model it already edited (EasyEdit's ``sequential_edit=True`` calls it
    once per request without restoring in between):

    - ``probe_source: dataset``: the edit does not depend on the request, so a model that
      carries the edit of these same settings (:func:`applied_patch`) is left as it is: N
      sequential requests give the model one edit gives, not N edits stacked. ``weights_copy``
      then holds the tensors from before that edit, so restoring with it still gives the
      unedited model. A model restored since is edited again as usual.
    - ``probe_source: request``, or other settings (another ``alpha``, layers, data): a new
      edit, computed on the model as it is now and added on top of the earlier ones, as
      sequential editing does for every method; ``weights_copy`` holds the tensors from
      before this call.
    """
    if isinstance(requests, dict):
        requests = [requests]
    keep = return_orig_weights or keep_original_weight
    if copy:
        model = copy_module.deepcopy(model)
    if hparams.probe_source == "dataset":
        carried = applied_patch(model, hparams)
        if carried is not None:
            logger.info("model surgery: the model already carries this edit (%d rows); left as it is",
                        carried.num_rows)
            return model, carried.weights_before(model) if keep else {}
    patch = compute_patch(model, tok, hparams, requests)
    if isinstance(kwargs.get("info"), dict):
        kwargs["info"]["rows_edited"] = patch.num_rows
        if patch.metadata.get("probe_accuracy") is not None:  # the probe's held-out accuracy
            kwargs["info"]["probe_accuracy"] = patch.metadata["probe_accuracy"]
    weights_copy = patch.weights_copy(model) if keep else {}
    patch.apply(model, check=False)
    if hparams.probe_source == "dataset":
        setattr(model, _APPLIED, {**getattr(model, _APPLIED, {}), hparams.method_key(): patch})
    return model, weights_copy
