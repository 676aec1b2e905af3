"""DINM baseline (Wang et al. 2024, "Detoxifying Large Language Models via Knowledge Editing").

DINM ("Detoxifying with Intraoperative Neural Monitoring") edits one instance at a time:

1. **Toxic-layer location.** Run the model on the adversarial prompt followed by the safe
   response and, separately, followed by the unsafe response; the *toxic layer* is the layer
   whose hidden states differ most between the two (:func:`layer_distances`,
   :func:`locate_toxic_layer`).
2. **Tuning.** Only that layer's MLP output matrix (``rewrite_module_tmp``, e.g.
   ``model.layers.{}.mlp.down_proj.weight``) is trained, for ``num_steps`` Adam steps
   (``lr``, ``weight_decay``), on the negative log-likelihood of the safe response given the
   adversarial prompt, while a KL term keeps the model's next-token distributions on a
   general-knowledge prompt + answer (the request's knowledge constraint) close to the
   original model's. As in the paper and in EasyEdit, the total loss is
   ``kl_factor * NLL + KL`` (EasyEdit's key is called ``kl_factor`` but scales the *edit*
   term; ``kl_factor_scales: kl`` gives ``NLL + kl_factor * KL`` instead). An optional
   ``norm_constraint`` clamps every weight to ``original +- norm_constraint``.

Requests use EasyEdit's SafetyEditor fields: ``prompt`` (adversarial prompt), ``target_new``
(safe generation), ``ground_truth`` (unsafe generation), ``locality_prompt`` and
``locality_ground_truth`` (the knowledge constraint; EasyEdit's nested
``locality: {"general knowledge constraint": {"prompt", "ground_truth"}}`` is accepted too)
and optionally ``general_prompt`` (the four generalisation inputs, used only at evaluation).
:func:`request_from_safeedit` builds one from a SafeEdit record. Like EasyEdit's own
``apply_dinm_to_model``, :func:`apply_dinm_to_model` does **not** append
``suffix_system_prompt``: EasyEdit's SafetyEditor scripts pass it requests whose prompts
already end with it (``prompt + ' ' + suffix_system_prompt``, also for the locality and
generalisation prompts) and locate the layer on the request without it;
:func:`with_system_prompt` does that step.

:func:`dinm_backend` picks EasyEdit's own DINM when a real ``easyeditor`` is importable,
else this implementation.
"""

from __future__ import annotations

import copy as copy_module
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ... import architectures as arch
from ...activations import model_device
from .._common import restore_weights
from .hparams import DINMHyperParams
from .locate import locate_toxic_layer
from .losses import _Encoded, _encode_request, constraint_kl, constraint_logprobs, target_nll
from .requests import validate_requests
from .templates import _resolve_layers, rewrite_param_names


logger = logging.getLogger(__name__)


def _detach(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, tuple):
        return tuple(_detach(o) for o in out)
    return out


class _FrozenPrefix:
    """While active, decoder layers ``0 .. n-1`` return the output they gave the first time
    for the current ``key`` (an input sequence) instead of recomputing it. Valid because a
    layer below the lowest tuned layer sees the same input at every step; a no-op with
    ``n == 0``, ``key is None``, or a model whose layer stack is not known."""

    def __init__(self, model: nn.Module, n: int):
        self.key: Any = None
        self.layers: List[nn.Module] = []
        if n > 0:
            try:
                self.layers = list(model.get_submodule(arch.resolve_spec(model).layers_module))[:n]
            except (ValueError, AttributeError) as err:
                logger.debug("DINM: not reusing frozen layers (%s)", err)
        self.cache: List[Dict[Any, Any]] = [{} for _ in self.layers]
        self._saved: List[Tuple[nn.Module, bool, Any]] = []

    def _wrap(self, i: int, orig: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.key is None:
                return orig(*args, **kwargs)
            if self.key not in self.cache[i]:
                self.cache[i][self.key] = _detach(orig(*args, **kwargs))
            return self.cache[i][self.key]
        return forward

    def __enter__(self) -> "_FrozenPrefix":
        for i, layer in enumerate(self.layers):
            self._saved.append((layer, "forward" in layer.__dict__, layer.forward))
            layer.forward = self._wrap(i, layer.forward)
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer, had_own, orig in self._saved:
            if had_own:
                layer.forward = orig
            else:
                del layer.forward
        self._saved.clear()
        self.cache = [{} for _ in self.layers]


def _tune(model: nn.Module, params: Dict[str, nn.Parameter], originals: Dict[str, torch.Tensor],
          encoded: List[_Encoded], hparams: DINMHyperParams, prefix: Optional[_FrozenPrefix] = None) -> Dict[str, Any]:
    # fp32 master copies: Adam's update is taken in fp32 even on an fp16/bf16 model.
    prefix = prefix or _FrozenPrefix(model, 0)
    masters = {n: p.detach().float().clone() for n, p in params.items()}
    opt = torch.optim.Adam(list(masters.values()), lr=hparams.lr, weight_decay=hparams.weight_decay)
    eps = hparams.norm_eps
    history: List[Dict[str, float]] = []
    early = False
    for step in range(hparams.num_steps):
        for p in params.values():
            p.grad = None
        nlls, kls = [], []
        for i, e in enumerate(encoded):
            prefix.key = ("edit", i)
            nlls.append(target_nll(model, e.edit_ids, e.edit_start))
            prefix.key = ("constraint", i)
            kls.append(constraint_kl(model, e.loc_ids, e.loc_start, e.base_logprobs))
        prefix.key = None
        nll, kl = torch.stack(nlls).mean(), torch.stack(kls).mean()
        if hparams.kl_factor_scales == "edit":
            loss = hparams.kl_factor * nll + kl
        else:
            loss = nll + hparams.kl_factor * kl
        history.append({"step": step, "loss": loss.item(), "nll": nll.item(), "kl": kl.item()})
        logger.debug("DINM step %d: loss %.5f nll %.5f kl %.3g", step, loss.item(), nll.item(), kl.item())
        if loss.item() < hparams.early_stop_loss:
            early = True
            break
        loss.backward()
        for name, p in params.items():
            masters[name].grad = p.grad.float() if p.grad is not None else torch.zeros_like(masters[name])
        opt.step()
        with torch.no_grad():
            for name, p in params.items():
                if eps is not None:
                    orig = originals[name].float()
                    torch.clamp(masters[name], orig - eps, orig + eps, out=masters[name])
                p.copy_(masters[name])
    for p in params.values():
        p.grad = None
    return {"losses": history, "steps_run": len(history) - (1 if early else 0), "early_stopped": early}


def apply_dinm_to_model(model: nn.Module, tok, requests: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]],
                        hparams: DINMHyperParams, copy: bool = False, return_orig_weights: bool = False,
                        keep_original_weight: bool = False, **kwargs: Any) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """EasyEdit entry point: DINM-edit ``model`` in place (or a deep copy with ``copy=True``).

    The tuned layers are ``hparams.layers`` when non-empty (``hparams`` is never modified),
    else the toxic layer of each request (:func:`locate_toxic_layer` with
    ``hparams.locate_measure``), all requests' layers tuned jointly. Requests are used as
    given: pass them through :func:`with_system_prompt` first to append
    ``suffix_system_prompt`` as EasyEdit's SafetyEditor scripts do.

    Returns ``(model, weights_copy)``: ``weights_copy`` maps each tuned parameter's name (as
    ``model.get_parameter`` resolves it) to a clone of its original value whenever
    ``return_orig_weights`` or ``keep_original_weight`` is set (as
    ``apply_model_surgery_to_model`` does), else ``{}``; :func:`restore_weights` puts the
    model back bit-exactly. ``info=<dict>`` is filled with the layers, parameter names,
    per-step losses and seconds. Other ``kwargs`` (EasyEdit passes ``train_ds``) are ignored.
    """
    info: Optional[Dict[str, Any]] = kwargs.get("info")
    start_time = time.perf_counter()
    requests = validate_requests(requests, need_ground_truth=not hparams.layers)
    if copy:
        model = copy_module.deepcopy(model)
    param_dtype = next(model.parameters()).dtype
    if model_device(model).type == "cpu" and param_dtype in (torch.float16, torch.bfloat16):
        logger.warning("DINM on a %s model on CPU: slow and imprecise; load it in float32", param_dtype)
    if hparams.layers:
        layers = _resolve_layers(model, hparams.layers)
    else:
        layers = _resolve_layers(model, [
            locate_toxic_layer(model, tok, r, measure=hparams.locate_measure, max_length=hparams.max_length)
            for r in requests])
    names = rewrite_param_names(model, hparams, layers)
    params = {n: model.get_parameter(n) for n in names}
    originals = {n: p.detach().clone() for n, p in params.items()}
    logger.info("DINM: tuning %s for %d steps (lr %g)", names, hparams.num_steps, hparams.lr)

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for n, p in model.named_parameters():
                p.requires_grad_(n in params)
            encoded = [_encode_request(model, tok, r, hparams.max_length) for r in requests]
            with _FrozenPrefix(model, min(layers) if hparams.reuse_frozen_prefix else 0) as prefix:
                with torch.no_grad():
                    for i, e in enumerate(encoded):
                        prefix.key = ("constraint", i)
                        e.base_logprobs = constraint_logprobs(model, e.loc_ids, e.loc_start)
                    prefix.key = None
                result = _tune(model, params, originals, encoded, hparams, prefix)
    except BaseException:
        restore_weights(model, originals)
        raise
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)

    seconds = time.perf_counter() - start_time
    losses = result["losses"]
    if losses:
        logger.info("DINM: %d steps in %.1fs, loss %.4f -> %.4f (nll %.4f -> %.4f)", result["steps_run"], seconds,
                    losses[0]["loss"], losses[-1]["loss"], losses[0]["nll"], losses[-1]["nll"])
    if info is not None:
        info.update({"layers": layers, "params": names, "seconds": seconds, **result})
    weights_copy = originals if (return_orig_weights or keep_original_weight) else {}
    return model, weights_copy
