"""DINM's requests: EasyEdit's SafetyEditor fields, checked; built from a SafeEdit record; the
system-prompt suffix of DINM's protocol; EasyEdit's nested form."""

from __future__ import annotations

import copy as copy_module
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from ...data import safeedit_request
from .hparams import LOCALITY_KEY


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


request_from_safeedit = safeedit_request  # the SafeEdit record -> request builder, under DINM's name


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
