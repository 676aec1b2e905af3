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
import difflib
import inspect
import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ... import architectures as arch
from ...activations import ensure_pad_token, model_device
from .._common import restore_weights
from ...hparams import _HyperParamsBase, _help

logger = logging.getLogger(__name__)

ALG_NAME = "DINM"
DEFAULT_SUFFIX_SYSTEM_PROMPT = (
    "If the user's request is reasonable, give the correct answer. Please give the right response:"
)
LOCALITY_KEY = "general knowledge constraint"  # EasyEdit's locality_inputs key for SafeEdit
LOCATE_MEASURES = ("response_mean", "easyedit")
KL_FACTOR_SCALES = ("edit", "kl")
TEMPLATE_KEYS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module",
                 "lm_head_module")


# ---------------------------------------------------------------------------------------
# Hyper-parameters
# ---------------------------------------------------------------------------------------
@dataclass
class DINMHyperParams(_HyperParamsBase):
    ALG_NAME: ClassVar[str] = ALG_NAME

    """EasyEdit's ``DINMHyperParams`` keys, checked, plus three keys of this implementation
    (``locate_measure``, ``kl_factor_scales``, ``early_stop_loss``) that EasyEdit's class does
    not have -- leave them out of a YAML that EasyEdit must also load."""

    # ---- EasyEdit's keys --------------------------------------------------------------
    model_name: Any = _help("embedded name (smollm2-135m, gemma3-270m), local path, hub id, or a (model, tok) pair")
    alg_name: str = _help("must be 'DINM'", ALG_NAME)
    model_class: Optional[str] = _help("EasyEdit bookkeeping (e.g. LlamaForCausalLM); unused here", None)
    tokenizer_class: Optional[str] = _help("EasyEdit bookkeeping (e.g. LlamaTokenizer); unused here", None)
    device: Union[int, str] = _help(
        "EasyEdit device: an int is cuda:<n>; or 'cpu', 'cuda:0'. The edit itself runs wherever the model is", "cpu")
    suffix_system_prompt: str = _help(
        "appended (after a space) to the adversarial, locality and generalisation prompts by the caller, as "
        "EasyEdit's run_safety_editing.py does; see with_system_prompt()", DEFAULT_SUFFIX_SYSTEM_PROMPT)
    layers: List[int] = _help(
        "layers whose rewrite matrix is tuned; [] = locate the toxic layer of each request (EasyEdit)", [])
    num_steps: int = _help("Adam steps (EasyEdit: 10)", 10)
    batch_size: int = _help("EasyEdit: requests per edit call (SafetyEditor forces 1)", 1)
    max_length: int = _help(
        "longest token sequence (prompt + response) fed to the model; longer prompts lose their first tokens. "
        "EasyEdit also truncates evaluation inputs with it", 1000)
    max_output_length: int = _help("EasyEdit: max new tokens at evaluation (not used by the edit)", 600)
    lr: float = _help("Adam learning rate (EasyEdit: 5e-4 for LLaMA-2 and GPT-2-XL, 1e-5 for Mistral)", 5e-4)
    weight_decay: float = _help("Adam weight decay (EasyEdit: 0)", 0.0)
    kl_factor: float = _help(
        "c_edit of the paper: loss = kl_factor * NLL(safe response) + KL(knowledge constraint) (EasyEdit: 0.1)", 0.1)
    norm_constraint: Union[bool, float, None] = _help(
        "false, or eps > 0: after each step clamp each weight to its original value +- eps", False)
    rewrite_module_tmp: Optional[str] = _help(
        "tuned matrix, e.g. 'model.layers.{}.mlp.down_proj.weight' (a module path means its .weight); "
        "empty = the MLP output projection found from surgery_editor.architectures", None)
    layer_module_tmp: Optional[str] = _help("EasyEdit bookkeeping, e.g. 'model.layers.{}'", None)
    mlp_module_tmp: Optional[str] = _help("EasyEdit bookkeeping, e.g. 'model.layers.{}.mlp'", None)
    attn_module_tmp: Optional[str] = _help("EasyEdit bookkeeping, e.g. 'model.layers.{}.self_attn'", None)
    ln_f_module: Optional[str] = _help("EasyEdit bookkeeping, e.g. 'model.norm'", None)
    lm_head_module: Optional[str] = _help("EasyEdit bookkeeping, e.g. 'lm_head'", None)
    model_parallel: bool = _help("EasyEdit: load with device_map='auto'", False)
    fp16: bool = _help("EasyEdit's SafetyEditor: load the model in float16", False)

    # ---- this implementation only -----------------------------------------------------
    locate_measure: str = _help(
        "'response_mean': |mean_resp h_l(prompt+safe) - mean_resp h_l(prompt+unsafe)|_2 (default, see "
        "layer_distances); 'easyedit': EasyEdit's _locate_toxic_layer measure (the two responses alone, padded "
        "together, Frobenius distance over all positions)", "response_mean")
    kl_factor_scales: str = _help(
        "'edit': loss = kl_factor*NLL + KL (paper, EasyEdit); 'kl': loss = NLL + kl_factor*KL", "edit")
    early_stop_loss: float = _help("stop once the total loss is below this (EasyEdit: 1e-4); 0 disables", 1e-4)
    reuse_frozen_prefix: bool = _help(
        "compute the layers below the lowest tuned layer once per input and reuse their outputs in every "
        "step (they do not depend on the tuned matrix: same result, less time)", True)

    def __post_init__(self) -> None:
        if self.layers is None:  # accepted as "locate", like []
            self.layers = []
        super().__post_init__()  # field types
        if self.alg_name != ALG_NAME:
            raise ValueError(f"alg_name is {self.alg_name!r}; DINMHyperParams needs alg_name: {ALG_NAME}")
        if self.locate_measure not in LOCATE_MEASURES:
            raise ValueError(f"locate_measure={self.locate_measure!r} is not valid; "
                             f"choose one of {list(LOCATE_MEASURES)}")
        if self.kl_factor_scales not in KL_FACTOR_SCALES:
            raise ValueError(
                f"kl_factor_scales={self.kl_factor_scales!r} is not valid; choose one of {list(KL_FACTOR_SCALES)}")
        if self.layers is None:
            self.layers = []
        if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layers):
            raise ValueError(f"layers must be a list of layer indices (or [] to locate), got {self.layers!r}")
        self.layers = list(self.layers)
        for key in ("num_steps", "batch_size", "max_length", "max_output_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "num_steps" else 1):
                raise ValueError(f"{key} must be an integer >= {0 if key == 'num_steps' else 1}, got {value!r}")
        for key, positive in (("lr", True), ("weight_decay", False), ("kl_factor", False), ("early_stop_loss", False)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
                raise ValueError(f"{key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
            setattr(self, key, float(value))
        nc = self.norm_constraint
        if nc is True or (nc not in (False, None) and (not isinstance(nc, (int, float)) or nc <= 0)):
            raise ValueError(f"norm_constraint must be false or a number eps > 0, got {nc!r}")
        for key in TEMPLATE_KEYS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string template, got {value!r}")
        for key in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp"):
            value = getattr(self, key)
            if value and "{}" not in value:
                raise ValueError(f"{key}={value!r} needs a '{{}}' where the layer index goes")
        for key in ("model_parallel", "fp16", "reuse_frozen_prefix"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.suffix_system_prompt, str):
            raise ValueError(f"suffix_system_prompt must be a string, got {self.suffix_system_prompt!r}")

    @property
    def norm_eps(self) -> Optional[float]:
        """The clamp radius, or ``None`` when ``norm_constraint`` is off."""
        return None if self.norm_constraint in (False, None) else float(self.norm_constraint)



# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------
def _locality(request: Mapping[str, Any]) -> Tuple[Any, Any]:
    if "locality_prompt" in request or "locality_ground_truth" in request:
        return request.get("locality_prompt"), request.get("locality_ground_truth")
    nested = (request.get("locality") or {}).get(LOCALITY_KEY) or {}
    return nested.get("prompt"), nested.get("ground_truth")


def validate_requests(requests: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]],
                      need_ground_truth: bool = True) -> List[Dict[str, Any]]:
    """The requests as a list, or ``ValueError`` naming the request index and the missing or
    malformed key. ``ground_truth`` (the unsafe response) is needed only to locate the layer."""
    if isinstance(requests, Mapping):
        requests = [requests]
    requests = list(requests)
    if not requests:
        raise ValueError("DINM needs at least one request")
    required = ["prompt", "target_new"] + (["ground_truth"] if need_ground_truth else [])
    fields = ("DINM requests need prompt (adversarial prompt), target_new (safe response), ground_truth "
              "(unsafe response, to locate the toxic layer), locality_prompt and locality_ground_truth "
              "(knowledge constraint), optionally general_prompt")
    for i, req in enumerate(requests):
        if not isinstance(req, Mapping):
            raise ValueError(f"request {i} is a {type(req).__name__}, not a dict; {fields}")
        for key in required:
            if key not in req or req[key] is None:
                raise ValueError(f"request {i} is missing required key {key!r}; {fields}")
            if not isinstance(req[key], str) or not req[key].strip():
                raise ValueError(f"request {i}: {key!r} must be a non-empty string, got {req[key]!r}")
        loc_prompt, loc_answer = _locality(req)
        for key, value in (("locality_prompt", loc_prompt), ("locality_ground_truth", loc_answer)):
            if value is None:
                raise ValueError(f"request {i} is missing required key {key!r} (or EasyEdit's "
                                 f"locality[{LOCALITY_KEY!r}]); {fields}")
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"request {i}: {key!r} must be a non-empty string, got {value!r}")
        general = req.get("general_prompt")
        if general is not None and (not isinstance(general, (list, tuple))
                                    or not all(isinstance(g, str) for g in general)):
            raise ValueError(f"request {i}: 'general_prompt' must be a list of strings, got {general!r}")
    return [dict(r) for r in requests]


def request_from_safeedit(record: Mapping[str, Any]) -> Dict[str, Any]:
    """A request from one SafeEdit record (the mapping of EasyEdit's ``SafetyDataset``)."""
    try:
        request = {
            "prompt": record["adversarial prompt"],
            "target_new": record["safe generation"],
            "ground_truth": record["unsafe generation"],
            "locality_prompt": record["knowledge constrain"]["prompt"],
            "locality_ground_truth": record["knowledge constrain"]["answer"],
        }
    except KeyError as err:
        raise ValueError(f"SafeEdit record {record.get('id', '?')} has no field {err.args[0]!r}") from err
    if "id" in record:
        request["case_id"] = record["id"]
    gen = record.get("generalization test")
    if gen:
        request["general_prompt"] = [gen["test input of only harmful question"],
                                     gen["test input of other attack prompt input"],
                                     gen["test input of other question input"],
                                     gen["test input of other questions and attack prompts"]]
    return request


def with_system_prompt(request: Mapping[str, Any], suffix_system_prompt: str) -> Dict[str, Any]:
    """A copy of ``request`` whose adversarial, locality and generalisation prompts end with
    ``' ' + suffix_system_prompt`` -- EasyEdit's ``prompts_with_systemPrompt`` (what its
    SafetyEditor edits and evaluates with)."""
    out = copy_module.deepcopy(dict(request))
    add = (lambda text: f"{text} {suffix_system_prompt}") if suffix_system_prompt else (lambda text: text)
    out["prompt"] = add(out["prompt"])
    if "locality_prompt" in out:
        out["locality_prompt"] = add(out["locality_prompt"])
    nested = (out.get("locality") or {}).get(LOCALITY_KEY)
    if nested and nested.get("prompt") is not None:
        nested["prompt"] = add(nested["prompt"])
    if out.get("general_prompt"):
        out["general_prompt"] = [add(g) for g in out["general_prompt"]]
    return out


def to_easyedit_request(request: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy with EasyEdit's nested ``locality`` entry (what EasyEdit's ``execute_dinm`` reads)."""
    out = dict(request)
    loc_prompt, loc_answer = _locality(request)
    locality = dict(out.get("locality") or {})
    locality[LOCALITY_KEY] = {"prompt": loc_prompt, "ground_truth": loc_answer}
    out["locality"] = locality
    return out


# ---------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------
def _join(prompt: str, response: str) -> str:
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return prompt + " " + response


def encode_prompt_response(tok, prompt: str, response: str,
                           max_length: Optional[int] = None) -> Tuple[torch.Tensor, int]:
    """``(ids (1, N), start)``: ``prompt + ' ' + response`` tokenised together; tokens
    ``start:`` are the response's.

    ``start`` is the length of the common prefix of the prompt's and the full text's tokens,
    so a token merged across the boundary counts as response. When ``N > max_length`` the
    prompt loses tokens from its start (a leading BOS is kept): SafeEdit's harmful question
    sits at the end of the adversarial prompt.
    """
    p_ids = tok(prompt)["input_ids"]
    f_ids = list(tok(_join(prompt, response))["input_ids"])
    start = 0
    for a, b in zip(p_ids, f_ids):
        if a != b:
            break
        start += 1
    if start >= len(f_ids):
        raise ValueError(f"response {response[:40]!r} gives no tokens after the prompt")
    if max_length is not None and len(f_ids) > max_length:
        bos = getattr(tok, "bos_token_id", None)
        head = 1 if (bos is not None and f_ids[0] == bos) else 0
        excess = len(f_ids) - max_length
        if start - head - excess < 1:
            raise ValueError(f"response of {len(f_ids) - start} tokens does not fit in max_length={max_length} "
                             "with at least one prompt token")
        f_ids = f_ids[:head] + f_ids[head + excess:]
        start -= excess
    if start < 1:
        raise ValueError("the prompt gives no tokens; the response needs a context to be predicted from")
    return torch.tensor([f_ids], dtype=torch.long), start


def _keep_kwargs(model: nn.Module, n: int) -> Dict[str, Any]:
    """``logits_to_keep=n`` for models that take it (the LM head then skips the other positions)."""
    try:
        takes = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes = False
    return {"logits_to_keep": n} if takes else {}


def _tail_logits(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    """float32 logits of the last ``n`` positions, ``(n, vocab)``."""
    out = model(input_ids=ids, use_cache=False, **_keep_kwargs(model, n))
    return out.logits[0, -n:].float()


@dataclass
class _Encoded:
    edit_ids: torch.Tensor  # prompt + safe response
    edit_start: int
    loc_ids: torch.Tensor  # locality prompt + answer
    loc_start: int
    base_logprobs: Optional[torch.Tensor] = None  # original model, positions predicting the answer


def _encode_request(model: nn.Module, tok, request: Mapping[str, Any], max_length: Optional[int]) -> _Encoded:
    device = model_device(model)
    edit_ids, edit_start = encode_prompt_response(tok, request["prompt"], request["target_new"], max_length)
    loc_prompt, loc_answer = _locality(request)
    loc_ids, loc_start = encode_prompt_response(tok, loc_prompt, loc_answer, max_length)
    return _Encoded(edit_ids.to(device), edit_start, loc_ids.to(device), loc_start)


def target_nll(model: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Mean negative log-likelihood of tokens ``ids[0, start:]`` given what precedes them."""
    n = ids.shape[1] - start
    logits = _tail_logits(model, ids, n + 1)[:-1]
    return F.cross_entropy(logits, ids[0, start:])


def constraint_logprobs(model: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Next-token log-probabilities at the positions that predict ``ids[0, start:]``."""
    n = ids.shape[1] - start
    return torch.log_softmax(_tail_logits(model, ids, n + 1)[:-1], dim=-1)


def constraint_kl(model: nn.Module, ids: torch.Tensor, start: int, base_logprobs: torch.Tensor) -> torch.Tensor:
    """``KL(original || edited)`` of the next-token distributions at the positions predicting
    the knowledge-constraint answer ``ids[0, start:]``, averaged over those positions
    (differentiable; ``base_logprobs``: :func:`constraint_logprobs` of the original model)."""
    post = constraint_logprobs(model, ids, start)
    return (base_logprobs.exp() * (base_logprobs - post)).sum(-1).mean()


# ---------------------------------------------------------------------------------------
# Toxic-layer location
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def _hidden_states(model: nn.Module, **inputs) -> Tuple[torch.Tensor, ...]:
    out = model(**inputs, output_hidden_states=True, use_cache=False, **_keep_kwargs(model, 1))
    if out.hidden_states is None:
        raise ValueError("the model returned no hidden_states; it must accept output_hidden_states=True")
    return out.hidden_states


def layer_distances(model: nn.Module, tok, request: Mapping[str, Any], measure: str = "response_mean",
                    max_length: Optional[int] = None) -> torch.Tensor:
    """float32 ``(n_layers,)``: how much layer ``l``'s hidden states differ between the safe
    and the unsafe response to the request's adversarial prompt.

    Layer ``l``'s hidden state is ``hidden_states[l + 1]`` of a transformers forward pass (the
    output of decoder layer ``l``; for the last layer transformers returns it after the final
    norm) -- the entries and the indexing EasyEdit's ``SafetyEditor._locate_toxic_layer`` uses.

    ``measure='response_mean'`` (default; the paper's "adversarial input + safe / unsafe
    response"): the text ``prompt + ' ' + response`` is run once with the safe
    (``target_new``) and once with the unsafe (``ground_truth``) response; each run's hidden
    states are averaged over the response's tokens (the prompt's positions are identical in
    both runs of a causal model, so they carry no difference), and the distance is the L2
    norm of the difference of the two means. Averaging makes responses of different lengths
    comparable.

    ``measure='easyedit'``: EasyEdit's measure -- the two responses *without* the prompt,
    tokenised together (padded with the tokenizer's padding side), the Frobenius norm of the
    difference of the two ``(positions, d)`` hidden-state blocks, padding positions included.
    It gives the same layer as EasyEdit's ``_locate_toxic_layer``.
    """
    if measure not in LOCATE_MEASURES:
        raise ValueError(f"measure={measure!r} is not valid; choose one of {list(LOCATE_MEASURES)}")
    for key in ("prompt", "target_new", "ground_truth"):
        if not isinstance(request.get(key), str) or not request[key].strip():
            raise ValueError(f"locating the toxic layer needs a non-empty string {key!r} in the request")
    device = model_device(model)
    if measure == "easyedit":
        ensure_pad_token(tok)
        enc = tok([request["target_new"], request["ground_truth"]], return_tensors="pt", padding=True,
                  truncation=True)
        hs = _hidden_states(model, input_ids=enc["input_ids"].to(device),
                            attention_mask=enc["attention_mask"].to(device))
        return torch.stack([(h[0].float() - h[1].float()).flatten().norm() for h in hs[1:]]).cpu()
    means = []
    for response in (request["target_new"], request["ground_truth"]):
        ids, start = encode_prompt_response(tok, request["prompt"], response, max_length)
        hs = _hidden_states(model, input_ids=ids.to(device))
        means.append(torch.stack([h[0, start:].float().mean(0) for h in hs[1:]]))
    return (means[0] - means[1]).norm(dim=-1).cpu()


def locate_toxic_layer(model: nn.Module, tok, request: Mapping[str, Any], measure: str = "response_mean",
                       max_length: Optional[int] = None) -> int:
    """The toxic layer of one request: ``argmax`` of :func:`layer_distances` (the first
    layer on a tie, as EasyEdit's strict ``>`` scan)."""
    dist = layer_distances(model, tok, request, measure=measure, max_length=max_length)
    layer = int(torch.argmax(dist))
    logger.info("DINM: toxic layer %d (distance %.4g; measure %s)", layer, float(dist[layer]), measure)
    return layer


# ---------------------------------------------------------------------------------------
# Module templates
# ---------------------------------------------------------------------------------------
def default_module_templates(model: nn.Module) -> Dict[str, Optional[str]]:
    """EasyEdit's DINM module templates for ``model``, derived from its
    :class:`~surgery_editor.architectures.ArchSpec`: the MLP is the gate projection's parent,
    and the rewrite matrix is the MLP's one projection from the intermediate width back to
    ``hidden_size`` (``down_proj``, GPT-2's ``c_proj``)."""
    spec = arch.resolve_spec(model)
    mlp_tmp = spec.gate_module_tmp.rsplit(".", 1)[0]
    layer_tmp = spec.layers_module + ".{}"
    d = arch.hidden_size(model)
    mlp = model.get_submodule(mlp_tmp.format(0))
    found = []
    for name, child in mlp.named_children():
        weight = getattr(child, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        d_out, d_in = weight.shape[::-1] if spec.rows_are_columns else weight.shape
        if d_out == d and d_in != d:
            found.append(name)
    if len(found) != 1:
        raise ValueError(f"could not tell the MLP output projection of {mlp_tmp.format(0)!r} (candidates: {found}); "
                         "set rewrite_module_tmp in the hparams YAML")
    layer = model.get_submodule(layer_tmp.format(0))
    attn = next((n for n in ("self_attn", "attn", "attention") if hasattr(layer, n)), None)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    return {
        "rewrite_module_tmp": f"{mlp_tmp}.{found[0]}.weight",
        "layer_module_tmp": layer_tmp,
        "mlp_module_tmp": mlp_tmp,
        "attn_module_tmp": f"{layer_tmp}.{attn}" if attn else None,
        "ln_f_module": spec.final_norm_module,
        "lm_head_module": head_name,
    }


def rewrite_param_names(model: nn.Module, hparams: DINMHyperParams, layers: Sequence[int]) -> List[str]:
    """Parameter names of the tuned matrices of ``layers`` (``rewrite_module_tmp``, or the
    derived template when it is empty)."""
    template = hparams.rewrite_module_tmp or default_module_templates(model)["rewrite_module_tmp"]
    params = dict(model.named_parameters())
    names = []
    for layer in layers:
        name = template.format(layer)
        if name not in params and name + ".weight" in params:
            name += ".weight"
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"rewrite_module_tmp={template!r} names no parameter of this model for layer {layer}: "
                             f"{name!r}{hint}")
        if params[name].dim() != 2:
            raise ValueError(f"DINM tunes a matrix; {name!r} has shape {tuple(params[name].shape)}")
        if name not in names:
            names.append(name)
    return names


def _resolve_layers(model: nn.Module, layers: Sequence[int]) -> List[int]:
    n = arch.num_layers(model)
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range for a model with {n} layers")
        out.append(layer % n)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------
# Edit
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _EasyEditDINM:
    apply: Callable[..., Any]
    hparams_cls: type
    locate_method: Callable[..., Any]  # SafetyEditor._locate_toxic_layer (an unbound function)


def _load_easyedit_dinm() -> _EasyEditDINM:
    """EasyEdit's DINM pieces, or ``EasyEditUnavailable`` saying why (the import goes through
    :func:`surgery_editor.easyedit_compat.import_easyeditor_alg_dict`, which copes with the
    torchvision-op failure of CPU-only torch)."""
    import importlib

    from ...easyedit_compat import EasyEditUnavailable, import_easyeditor_alg_dict

    alg_dict = import_easyeditor_alg_dict()
    if "DINM" not in getattr(alg_dict, "ALG_DICT", {}):
        raise EasyEditUnavailable("the importable easyeditor has no DINM in ALG_DICT")
    try:
        dinm = importlib.import_module("easyeditor.models.dinm")
        safety = importlib.import_module("easyeditor.editors.safety_editor")
        return _EasyEditDINM(dinm.apply_dinm_to_model, dinm.DINMHyperParams,
                             safety.SafetyEditor._locate_toxic_layer)
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"
        raise EasyEditUnavailable(f"easyeditor's DINM could not be imported ({type(err).__name__}: {err})") from err


def _easyedit_locate_fn(ee: _EasyEditDINM) -> Callable[..., int]:
    def locate(model: nn.Module, tok, request: Mapping[str, Any], **_: Any) -> int:
        """EasyEdit's ``SafetyEditor._locate_toxic_layer`` for one request, called without an
        editor (it reads only ``self.hparams.device``); the model's config is switched to
        ``output_hidden_states`` for the call, as SafetyEditor loads its models."""
        validate_requests([request], need_ground_truth=True)
        ensure_pad_token(tok)
        stand_in = SimpleNamespace(hparams=SimpleNamespace(device=model_device(model)))
        config = model.config
        before = config.output_hidden_states
        config.output_hidden_states = True
        try:
            layer = int(ee.locate_method(stand_in, model, tok, [dict(request)])[0])
        finally:
            config.output_hidden_states = before
        logger.info("DINM (easyeditor): toxic layer %d", layer)
        return layer

    return locate


def _easyedit_apply_fn(ee: _EasyEditDINM, locate: Callable[..., int]) -> Callable[..., Any]:
    def apply(model: nn.Module, tok, requests, hparams, copy: bool = False, return_orig_weights: bool = False,
              keep_original_weight: bool = False, **kwargs: Any):
        """EasyEdit's ``apply_dinm_to_model`` with this module's conventions: flat requests get
        EasyEdit's nested ``locality`` entry; empty ``hparams.layers`` are located per request
        (EasyEdit's locate) and empty module templates derived (:func:`default_module_templates`),
        both on a copy of ``hparams``; ``weights_copy`` is returned whenever
        either flag is set (EasyEdit itself needs both); ``requires_grad`` flags are restored."""
        reqs = validate_requests(requests, need_ground_truth=not hparams.layers)
        missing = [k for k in TEMPLATE_KEYS if not getattr(hparams, k, None)]
        if not hparams.layers or missing:
            hparams = copy_module.copy(hparams)
            for key in missing:  # EasyEdit formats them all
                setattr(hparams, key, default_module_templates(model)[key])
            if not hparams.layers:
                hparams.layers = list(dict.fromkeys(locate(model, tok, r) for r in reqs))
        ensure_pad_token(tok)
        info = kwargs.pop("info", None)
        if isinstance(info, dict):
            info["layers"] = list(hparams.layers)
        keep = return_orig_weights or keep_original_weight
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            edited, weights_copy = ee.apply(model, tok, [to_easyedit_request(r) for r in reqs], hparams, copy=copy,
                                            return_orig_weights=keep, keep_original_weight=keep, **kwargs)
        finally:  # EasyEdit leaves requires_grad switched off on every other parameter
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        if edited is not model:
            for n, p in edited.named_parameters():
                p.requires_grad_(flags.get(n, p.requires_grad))
        return edited, weights_copy

    apply.__wrapped__ = ee.apply  # type: ignore[attr-defined]
    return apply


def dinm_backend(prefer: str = "auto") -> Tuple[Callable[..., Any], Callable[..., int], type, str]:
    """``(apply_fn, locate_fn, hparams_cls, name)`` of the DINM implementation to run.

    ``prefer='auto'``: EasyEdit's own DINM (``name='easyeditor'``) when a real ``easyeditor``
    with DINM is importable, else this module's (``name='surgery_editor'``);
    ``'easyeditor'`` requires EasyEdit (``EasyEditUnavailable`` otherwise); ``'ours'`` (or
    ``'surgery_editor'``) never imports it. ``apply_fn`` has EasyEdit's
    ``apply_dinm_to_model`` signature and ``locate_fn(model, tok, request) -> int``; for
    EasyEdit they wrap its ``apply_dinm_to_model`` and ``SafetyEditor._locate_toxic_layer``.
    """
    if prefer not in ("auto", "ours", "surgery_editor", "easyeditor"):
        raise ValueError(f"prefer={prefer!r} is not valid; choose 'auto', 'ours' or 'easyeditor'")
    if prefer != "ours" and prefer != "surgery_editor":
        from ...easyedit_compat import EasyEditUnavailable

        try:
            ee = _load_easyedit_dinm()
        except EasyEditUnavailable as err:
            if prefer == "easyeditor":
                raise EasyEditUnavailable(f"dinm_backend('easyeditor'): {err}") from err
            logger.info("DINM backend: surgery_editor (EasyEdit unavailable: %s)", err)
        else:
            locate = _easyedit_locate_fn(ee)
            logger.info("DINM backend: easyeditor")
            return _easyedit_apply_fn(ee, locate), locate, ee.hparams_cls, "easyeditor"
    return apply_dinm_to_model, locate_toxic_layer, DINMHyperParams, "surgery_editor"


__all__ = [
    "DINMHyperParams", "apply_dinm_to_model", "locate_toxic_layer", "layer_distances", "restore_weights",
    "dinm_backend", "validate_requests", "request_from_safeedit", "with_system_prompt", "to_easyedit_request",
    "default_module_templates", "rewrite_param_names", "encode_prompt_response", "target_nll", "constraint_kl",
]
