"""DPO (Rafailov et al., NeurIPS 2023, "Direct Preference Optimization"): the training-based
reference the editing methods are compared with (as in ProFS, Uppaal et al. 2025, and Lee et
al. 2024, "A Mechanistic Understanding of Alignment Algorithms: A Case Study on DPO and
Toxicity").

A LoRA adapter (``peft``; rank ``lora_r``, scale ``lora_alpha / lora_r``, on the
``lora_target_modules`` projections: by default every attention and MLP projection) is trained
with ``trl``'s ``DPOTrainer`` on ``num_pairs`` preference pairs (default: ParaDetox, the neutral
rewrite preferred over the toxic original; JailbreakBench's refused vs jailbroken responses to
the same behaviour also work, see :mod:`.pairs`), loss ``-log sigmoid(beta * margin)`` with the
margin ``[log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]`` and the
reference = the same model with the adapter disabled. The adapter is then merged into the
weights, so the edited model has its original architecture and only the target projections'
weights differ. The method ignores the edit requests (it trains once from its own data). It has
no direction to randomise; its control, ``DPO_shuffled``, trains the same adapter on the same
pairs for the same steps with chosen and rejected swapped in a random half of them.

Settings and their defaults: :class:`DPOHyperParams`; YAMLs in ``hparams/DPO/``. Needs ``trl``
and ``peft`` (imported only when an edit runs).
"""

from __future__ import annotations

from .. import Algorithm, register_algorithm
from .hparams import ALG_NAME, DEFAULT_TARGETS, LOSS_TYPES, DPOHyperParams
from .pairs import PairDataConfig, load_preference_pairs
from .train import apply_dpo_to_model, resolve_target_modules

ALGORITHM = register_algorithm(Algorithm(
    name=ALG_NAME,
    hparams_cls=DPOHyperParams,
    apply=apply_dpo_to_model,
    description="DPO baseline: LoRA adapter trained with trl's DPOTrainer on preference pairs, merged into the weights",
    controls={"DPO_shuffled": {"preference": "shuffled"}},
    info_keys=("preference", "num_pairs", "beta", "loss_type", "learning_rate", "num_epochs", "per_device_batch_size",
               "gradient_accumulation_steps", "lora_r", "lora_alpha", "lora_target_modules", "max_seq_length",
               "seed"),
))

__all__ = ["DPOHyperParams", "PairDataConfig", "apply_dpo_to_model", "load_preference_pairs",
           "resolve_target_modules", "DEFAULT_TARGETS", "LOSS_TYPES", "ALGORITHM"]
