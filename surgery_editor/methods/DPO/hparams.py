"""``DPOHyperParams``: EasyEdit's common keys, the preference data, LoRA and DPO settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from ...hparams import EasyEditKeys, _help
from .pairs import PairDataConfig

ALG_NAME = "DPO"

# trl's DPO losses (DPOConfig.loss_type) that compare a chosen with a rejected response; "sft"
# alone is no preference loss and is left out.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_PAIRS = {"path": "paradetox/paradetox.tsv", "chosen_column": "neutral1", "rejected_column": "toxic"}


PREFERENCES = ("as_given", "shuffled")


@dataclass
class DPOHyperParams(EasyEditKeys):
    ALG_NAME: ClassVar[str] = ALG_NAME

    # ---- preference data --------------------------------------------------------------
    pairs: Dict[str, Any] = _help(
        "preference data config (surgery_editor.methods.DPO.pairs.PairDataConfig): path + chosen_column/"
        "rejected_column (one pair per row, e.g. ParaDetox neutral1/toxic) or response_column/label_column/"
        "chosen_values/group_column (labelled responses, e.g. JailbreakBench refused vs jailbroken); optional "
        "prompt_column, prompt_mode (common_prefix|empty), chat", DEFAULT_PAIRS)
    num_pairs: int = _help("preference pairs trained on (the first num_pairs after a seeded shuffle)", 256)
    seed: int = _help("seed of the pair shuffle, the LoRA init, the data order and the trainer", 0)
    preference: str = _help(
        "'as_given': chosen over rejected (the method); 'shuffled': chosen and rejected swapped in a seeded random "
        "half of the pairs, the control: the same data, steps and adapter, no consistent preference", "as_given")
    data_dir: Optional[str] = _help(
        "root for a relative pairs.path (default: $SURGERY_EDITOR_DATA_DIR, else ../shared/data)", None)

    # ---- LoRA -------------------------------------------------------------------------
    lora_r: int = _help("LoRA rank", 16)
    lora_alpha: float = _help("LoRA scale numerator: the update is (lora_alpha / lora_r) * B A", 32.0)
    lora_dropout: float = _help("dropout on the LoRA branch's input during training (the base model's own dropout "
                                "is off during training, as trl does, and restored afterwards)", 0.0)
    lora_target_modules: List[str] = _help(
        "module name suffixes given a LoRA adapter (Linear layers; every name must match at least one module; "
        "not the LM head)", DEFAULT_TARGETS)

    # ---- DPO --------------------------------------------------------------------------
    beta: float = _help("DPO beta: strength of the implicit KL penalty to the reference (higher = closer to it)", 0.1)
    loss_type: str = _help(f"trl DPO loss, one of {list(LOSS_TYPES)}", "sigmoid")
    label_smoothing: float = _help("robust: assumed label-flip rate in [0, 0.5); exo_pair: epsilon > 0", 0.0)
    learning_rate: float = _help("AdamW learning rate of the LoRA parameters", 2e-4)
    lr_scheduler_type: str = _help(f"learning-rate schedule, one of {list(LR_SCHEDULERS)}", "linear")
    warmup_ratio: float = _help("share of the optimizer steps with a linear warm-up, in [0, 1)", 0.1)
    weight_decay: float = _help("AdamW weight decay on the LoRA parameters", 0.0)
    max_grad_norm: float = _help("gradient-norm clipping (0 = none)", 1.0)
    num_epochs: int = _help("passes over the pairs", 1)
    per_device_batch_size: int = _help("pairs per forward/backward pass (each pair = 2 sequences)", 8)
    gradient_accumulation_steps: int = _help("passes accumulated per optimizer step", 1)
    max_prompt_length: int = _help("prompt tokens kept (the end of a longer prompt, nearest the response)", 64)
    max_seq_length: int = _help("tokens of prompt + response kept in training (trl's max_length; the start is kept)",
                                128)
    gradient_checkpointing: bool = _help("recompute activations in the backward pass (saves memory on large "
                                         "models, ~20-30% slower; switched off again afterwards)", False)
    logging_steps: int = _help("optimizer steps between logged loss / reward values", 1)

    def __post_init__(self) -> None:
        super().__post_init__()  # alg_name and field types
        choices = {"loss_type": LOSS_TYPES, "lr_scheduler_type": LR_SCHEDULERS, "preference": PREFERENCES}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r} is not valid; choose one of {list(valid)}")
        for key in ("num_pairs", "lora_r", "num_epochs", "per_device_batch_size", "gradient_accumulation_steps",
                    "max_prompt_length", "max_seq_length", "logging_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("beta", "learning_rate", "lora_alpha"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("weight_decay", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("lora_dropout", "warmup_ratio"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.loss_type == "robust" and not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5) for loss_type robust, got {self.label_smoothing!r}")
        if self.loss_type == "exo_pair" and not 0 < self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in (0, 1) for loss_type exo_pair (EXO paper: 1e-3), got "
                             f"{self.label_smoothing!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.max_prompt_length >= self.max_seq_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_seq_length "
                             f"({self.max_seq_length}), or no response token would be left")
        if not self.lora_target_modules or not all(isinstance(m, str) and m for m in self.lora_target_modules):
            raise ValueError(f"lora_target_modules must be a non-empty list of module names, got "
                             f"{self.lora_target_modules!r}")
        if "lm_head" in self.lora_target_modules:
            raise ValueError("lora_target_modules: 'lm_head' is not supported (trl scores tokens with lm_head.weight "
                             "directly, so an adapter there would never train)")
        PairDataConfig.from_dict(dict(self.pairs) if isinstance(self.pairs, dict) else self.pairs)  # checks it

    def check_data(self) -> None:
        """The preference pairs are read and paired as training reads them (a missing file or
        column, or no pair left, is an error naming the file), before minutes of training."""
        from .pairs import load_preference_pairs

        load_preference_pairs(self.pairs, self.num_pairs, self.seed, self.data_dir)
