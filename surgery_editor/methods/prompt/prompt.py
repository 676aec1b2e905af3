"""Safety prompt (Self-Reminder, Xie et al. 2023, "Defending ChatGPT against jailbreak attack via
self-reminders"; the prompt baseline of the SafeEdit paper): no weight change, a system prompt
(or, for raw text, a prefix) on every input and a reminder after every instruction.

Zero edit cost: the floor any edit must beat. In the harness the inputs are rewritten by the
protocols through :class:`~surgery_editor.methods.InputTransform` (chat inputs: the system
message + the reminder after the user turn; raw instructions: prefix + text + reminder; texts to
be continued (RTP, ToxiGen): prefix + text). Under EasyEdit, ``apply_safety_prompt_to_model``
rewrites the requests it is given **in place** (``prompt`` and ``general_prompt``: prefix + text
+ reminder), which is what ``SafetyEditor.edit`` evaluates after the call; ``weights_copy`` is
empty and the model is not touched.
"""

from __future__ import annotations

from typing import Any

from .. import InputTransform
from .._common import as_requests
from .hparams import SafetyPromptHyperParams


def input_transform(hparams: SafetyPromptHyperParams) -> InputTransform:
    return InputTransform(system=hparams.system_prompt,
                          prefix=hparams.raw_prefix.format(system_prompt=hparams.system_prompt),
                          suffix=hparams.reminder)


def apply_safety_prompt_to_model(model, tok, requests: Any, hparams: SafetyPromptHyperParams, copy: bool = False,
                                 return_orig_weights: bool = False, keep_original_weight: bool = False, **kwargs: Any):
    """EasyEdit entry point: the requests' ``prompt`` and ``general_prompt`` inputs are rewritten
    in place as raw instructions (prefix + text + reminder); no weight changes, so ``weights_copy``
    is empty (and ``copy`` is moot: the model is returned as it is)."""
    transform = input_transform(hparams)
    for request in as_requests(requests):
        if isinstance(request.get("prompt"), str):
            request["prompt"] = transform.instruction(request["prompt"])
        if isinstance(request.get("general_prompt"), list):
            request["general_prompt"] = [transform.instruction(p) if isinstance(p, str) and p.strip() else p
                                         for p in request["general_prompt"]]
    return model, {}
