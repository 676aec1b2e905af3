"""The safety prompt (Self-Reminder, Xie et al. 2023): a system prompt / prefix and a reminder on
every input, no weight change (:mod:`.prompt`; settings in :mod:`.hparams`)."""

from __future__ import annotations

from .. import Algorithm, register_algorithm
from .hparams import ALG_NAME, SafetyPromptHyperParams
from .prompt import apply_safety_prompt_to_model, input_transform

class PromptAlgorithm(Algorithm):
    def input_transform(self, hparams: SafetyPromptHyperParams):
        return input_transform(hparams)


register_algorithm(PromptAlgorithm(
    name=ALG_NAME, hparams_cls=SafetyPromptHyperParams, apply=apply_safety_prompt_to_model,
    description="safety prompt (Self-Reminder): a system prompt / prefix and a reminder, no weight change",
    info_keys=("system_prompt", "raw_prefix", "reminder"),
))

__all__ = ["SafetyPromptHyperParams", "apply_safety_prompt_to_model", "input_transform"]
