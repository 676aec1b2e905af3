"""DINM's settings (EasyEdit's DINM keys, checked on load) and the constants they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, List, Optional, Union

from ...hparams import _HyperParamsBase, _help


ALG_NAME = "DINM"
DEFAULT_SUFFIX_SYSTEM_PROMPT = (
    "If the user's request is reasonable, give the correct answer. Please give the right response:"
)
LOCALITY_KEY = "general knowledge constraint"  # EasyEdit's locality_inputs key for SafeEdit
LOCATE_MEASURES = ("response_mean", "easyedit")
KL_FACTOR_SCALES = ("edit", "kl")
TEMPLATE_KEYS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module",
                 "lm_head_module")


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
