"""``apply_dpo_to_model``: LoRA-DPO training with trl, merged into the model's own weights."""

from __future__ import annotations

import contextlib
import dataclasses
import copy as copy_module
import logging
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...infra.extras import require
from ...infra.resources import PeakRSS
from .._common import originals as saved_weights
from .hparams import DPOHyperParams
from .pairs import load_preference_pairs

logger = logging.getLogger(__name__)


# ---- target modules ---------------------------------------------------------------------

# imported when an edit runs (the extra ``dpo``)
_TRAINING_PACKAGES = ("trl", "peft", "datasets", "psutil")


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name or its last parts."""
    return name == target or name.endswith("." + target)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's Conv1D: peft handles it


def resolve_target_modules(model: nn.Module, targets: Sequence[str]) -> List[str]:
    """Full names of the modules that ``targets`` (name suffixes) select; ``ValueError``
    naming every target that matches no module, and the Linear layer names available."""
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(_matches(n, t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and _is_linear(m)})
        raise ValueError(
            f"lora_target_modules: {missing} match no module of {type(model).__name__}; its Linear layers are named "
            f"{linear}")
    selected = [n for n in names if any(_matches(n, t) for t in targets)]
    bad = [n for n in selected if not _is_linear(model.get_submodule(n))]
    if bad:
        raise ValueError(f"lora_target_modules select modules that are not Linear layers: {bad[:5]}"
                         f"{' ...' if len(bad) > 5 else ''}; target the projections inside them")
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None and any(model.get_submodule(n) is out_emb for n in selected):
        raise ValueError("lora_target_modules select the LM head; trl scores tokens with lm_head.weight directly, "
                         "so an adapter there would never train")
    return selected


# ---- leaving the model as it was found ---------------------------------------------------

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on (transformers 5 renamed the property)."""
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if attr in dir(type(model)):
            return bool(getattr(model, attr))
    return False


class _ModelState:
    """Everything about ``model`` (and ``tok``) that training touches besides the merged
    weights, recorded before and put back after (also after a failure)."""

    def __init__(self, model: nn.Module, tok) -> None:
        self.model, self.tok = model, tok
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self.training = {n: m.training for n, m in model.named_modules()}
        self.dropout_p = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
        self.attrs = {n: set(vars(m)) for n, m in model.named_modules()}
        self.hooks = {n: {h: set(getattr(m, h)) for h in _HOOK_DICTS if isinstance(getattr(m, h, None), dict)}
                      for n, m in model.named_modules()}
        self.checkpointing = _checkpointing(model)
        config = getattr(model, "config", None)
        gen = getattr(model, "generation_config", None)
        self.config = {k: getattr(config, k) for k in ("pad_token_id", "use_cache") if hasattr(config, k)}
        self.gen_pad = getattr(gen, "pad_token_id", None) if gen is not None else None
        self.tok_state = ({k: getattr(tok, k) for k in ("padding_side", "truncation_side", "pad_token")}
                          if tok is not None else {})
        self.device = next((p.device for p in model.parameters()), None)
        self.devices = {p.device for p in model.parameters()}
        self.env = dict(os.environ)
        self.rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
                    else None)

    def restore(self) -> None:
        model = self.model
        if _checkpointing(model) and not self.checkpointing:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        for name, module in model.named_modules():
            for key in set(vars(module)) - self.attrs.get(name, set(vars(module))):
                delattr(module, key)  # e.g. trl's fused-LM-head `forward`, `model_tags`, peft's `peft_config`
            for attr, before in self.hooks.get(name, {}).items():
                hooks = getattr(module, attr)
                for key in set(hooks) - before:
                    del hooks[key]  # e.g. the input-embedding hooks of enable_input_require_grads()
            if name in self.training:
                module.training = self.training[name]
            if name in self.dropout_p:
                module.p = self.dropout_p[name]
        for name, param in model.named_parameters():
            if name in self.requires_grad:
                param.requires_grad_(self.requires_grad[name])
        config = getattr(model, "config", None)
        for key, value in self.config.items():
            setattr(config, key, value)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = self.gen_pad
        for key, value in self.tok_state.items():
            if getattr(self.tok, key) != value:
                setattr(self.tok, key, value)
        if len(self.devices) == 1 and self.device is not None and \
                next((p.device for p in model.parameters()), self.device) != self.device:
            model.to(self.device)
        for key in set(os.environ) - set(self.env):
            del os.environ[key]
        for key, value in self.env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.random.set_rng_state(self.rng[2])
        if self.rng[3] is not None:
            torch.cuda.set_rng_state_all(self.rng[3])


def _strip_lora(model: nn.Module, merge: bool) -> None:
    """Replace every peft tuner layer inside ``model`` by its base layer (merging the adapter
    into it first when ``merge``), in place; the base layers are the model's original modules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer) or not name:
            continue
        try:
            model.get_submodule(name)
        except AttributeError:
            continue  # inside a layer replaced already
        if merge:
            module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())


# ---- measuring ----------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_datasets():
    """No ``datasets`` progress bars inside the block (the previous setting is kept)."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _truncate_start(text: str, tok, n: int) -> str:
    """The end of ``text`` holding its last ``n`` tokens (the whole text when shorter)."""
    if not text:
        return text
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= n:
            return text
        return text[enc["offset_mapping"][len(enc["input_ids"]) - n][0]:]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else tok.decode(ids[-n:])


def _truncate_prompts(pairs: List[Dict[str, Any]], tok, n: int) -> int:
    """Cut every prompt (a chat prompt's user turn) to its last ``n`` tokens; returns how many were cut."""
    cut = 0
    for p in pairs:
        if isinstance(p["prompt"], list):
            for turn in p["prompt"]:
                short = _truncate_start(turn["content"], tok, n)
                cut += short != turn["content"]
                turn["content"] = short
        else:
            short = _truncate_start(p["prompt"], tok, n)
            cut += short != p["prompt"]
            p["prompt"] = short
    return cut


def shuffle_preferences(pairs: List[Dict[str, Any]], seed: int) -> List[Dict[str, Any]]:
    """The control's pairs: chosen and rejected swapped in a seeded random half of them
    (exactly ``len // 2``), so training sees the same texts with no consistent preference."""
    rng = np.random.default_rng(seed)
    swap = set(rng.permutation(len(pairs))[: len(pairs) // 2].tolist())
    return [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} if i in swap else dict(p)
            for i, p in enumerate(pairs)]


def _log_callback(history: List[Dict[str, float]]):
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers' signature
            if not logs:
                return
            row = {"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                 if isinstance(v, (int, float)) and not isinstance(v, bool)}}
            history.append(row)
            if "loss" in row:
                logger.info("DPO step %d: loss %.4f, reward accuracy %s, reward margin %s", row["step"], row["loss"],
                            row.get("rewards/accuracies"), row.get("rewards/margins"))

    return _Log()


# ---- the method ---------------------------------------------------------------------------

def apply_dpo_to_model(model: nn.Module, tok, requests: Sequence[Dict[str, Any]], hparams: DPOHyperParams,
                       copy: bool = False, return_orig_weights: bool = False, keep_original_weight: bool = False,
                       **kwargs: Any) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """EasyEdit entry point: DPO-train a LoRA adapter on ``hparams.pairs`` and merge it into
    ``model``'s weights (in place, or into a deep copy with ``copy=True``).

    ``requests`` are ignored: DPO is the training-based reference, trained once from its own
    preference data (ParaDetox rewrites by default; see :mod:`.pairs` for how prompts are
    built) rather than from the edit request. The reference model is the adapter-disabled base
    (trl's default with a ``peft_config``; no copy of the model). Training uses trl's
    ``DPOTrainer`` with the seeded settings of ``hparams``, on the CPU when the weights are
    there, with no checkpoint, no report and its scratch folder removed; nothing is cached on
    disk. The adapter is then merged (``W += (lora_alpha / lora_r) B A``) and removed, so the
    same model object comes back with its original plain ``nn.Linear`` modules and changed
    weights; ``requires_grad`` flags, train/eval modes, dropout rates, config pad token,
    tokenizer padding side, environment and RNG states are as before.

    Returns ``(model, weights_copy)``: ``weights_copy`` maps the name of every parameter the
    merge changed (as ``model.get_parameter`` resolves it) to a copy of its original tensor in
    host memory, taken before training, whenever ``return_orig_weights`` or ``keep_original_weight`` is
    set (else ``{}``), so EasyEdit's restore loop puts the model back bit-exactly.

    ``info=<dict>`` (keyword) is filled with: ``train_seconds`` (wall time of the training
    loop), ``peak_rss_mb`` / ``start_rss_mb`` (process RSS sampled with psutil every 50 ms
    during the call, absolute, not a delta), ``steps`` (optimizer steps), ``final_loss``,
    ``reward_accuracy`` / ``reward_margin`` (trl's ``rewards/accuracies`` and
    ``rewards/margins``; these three from the last logged step), ``final_loss_mean`` /
    ``reward_accuracy_mean`` / ``reward_margin_mean`` (means over the last quarter of the logged
    steps), ``train_loss`` (trainer's mean over all steps), ``num_pairs``, ``pairs_source``,
    ``lora_modules``, ``trainable_params``, ``changed_parameters`` and ``history`` (every
    logged row: step, loss, rewards/*, logps/*, learning_rate, grad_norm).
    """
    info: Optional[Dict[str, Any]] = kwargs.get("info") if isinstance(kwargs.get("info"), dict) else None
    for module in _TRAINING_PACKAGES:  # before anything is changed or read
        require(module, "dpo", "the DPO baseline")
    if copy:
        model = copy_module.deepcopy(model)
    selected = resolve_target_modules(model, hparams.lora_target_modules)
    weight_names = [f"{name}.weight" for name in selected]
    originals = saved_weights(model, weight_names) if (return_orig_weights or keep_original_weight) else {}

    pairs, source = load_preference_pairs(hparams.pairs, hparams.num_pairs, hparams.seed, hparams.data_dir, tok)
    if hparams.preference == "shuffled":
        pairs = shuffle_preferences(pairs, hparams.seed)
    cut = _truncate_prompts(pairs, tok, hparams.max_prompt_length)
    if cut:
        logger.info("DPO: %d prompts cut to their last %d tokens", cut, hparams.max_prompt_length)

    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    state = _ModelState(model, tok)
    history: List[Dict[str, float]] = []
    scratch = tempfile.mkdtemp(prefix="surgery_editor_dpo_")
    merged = False
    try:
        # The base model's own dropout is off while training (trl's disable_dropout, done here so
        # that the LoRA dropout stays active), restored afterwards.
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        fields = {f.name for f in dataclasses.fields(DPOConfig)}
        checkpointing_arg = ("activation_checkpointing" if "activation_checkpointing" in fields
                             else "gradient_checkpointing")
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        steps_per_epoch = math.ceil(len(pairs) / (hparams.per_device_batch_size * hparams.gradient_accumulation_steps))
        args = DPOConfig(
            output_dir=scratch, use_cpu=on_cpu, report_to="none", save_strategy="no", eval_strategy="no",
            logging_strategy="steps", logging_steps=hparams.logging_steps, disable_tqdm=True,
            seed=hparams.seed, data_seed=hparams.seed,
            per_device_train_batch_size=hparams.per_device_batch_size,
            gradient_accumulation_steps=hparams.gradient_accumulation_steps,
            num_train_epochs=hparams.num_epochs, learning_rate=hparams.learning_rate,
            lr_scheduler_type=hparams.lr_scheduler_type,
            warmup_steps=int(round(hparams.warmup_ratio * steps_per_epoch * hparams.num_epochs)),
            weight_decay=hparams.weight_decay, max_grad_norm=hparams.max_grad_norm,
            beta=hparams.beta, loss_type=[hparams.loss_type], label_smoothing=hparams.label_smoothing,
            max_length=hparams.max_seq_length, truncation_mode="keep_start",
            bf16=False, fp16=False,
            disable_dropout=False, dataloader_num_workers=0, dataloader_pin_memory=False,
            remove_unused_columns=False, save_only_model=True,
            # transformers 5 renamed gradient_checkpointing (the old name warns; trl defaults it to True)
            **{checkpointing_arg: hparams.gradient_checkpointing},
        )
        peft_config = LoraConfig(r=hparams.lora_r, lora_alpha=hparams.lora_alpha, lora_dropout=hparams.lora_dropout,
                                 target_modules=list(hparams.lora_target_modules), bias="none", task_type="CAUSAL_LM")
        with _quiet_datasets(), PeakRSS(interval=0.05) as rss, warnings.catch_warnings():
            # peft and trl still call transformers' gradient_checkpointing* names, renamed in transformers 5
            warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6", category=FutureWarning)
            trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                 processing_class=tok, peft_config=peft_config)
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(_log_callback(history))
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            steps = trainer.state.global_step
            peft_model = trainer.model
            del trainer
            unloaded = peft_model.merge_and_unload(safe_merge=True)
            merged = True
        if unloaded is not model:
            raise RuntimeError("DPO: merge_and_unload returned another object than the model trained")
    finally:
        if not merged:
            _strip_lora(model, merge=False)  # a failure: no adapter is left in the model
        state.restore()
        shutil.rmtree(scratch, ignore_errors=True)

    # exactly the weights the merge changed (a LoRA B left at zero changes nothing)
    changed = [n for n in weight_names if n in originals
               and not torch.equal(model.get_parameter(n).detach(), originals[n].to(model.get_parameter(n).device))]
    weights_copy = {n: originals[n] for n in changed}
    losses = [row for row in history if "loss" in row]
    last = losses[-1] if losses else {}
    tail = losses[-max(1, len(losses) // 4):]

    def tail_mean(key: str) -> Optional[float]:
        values = [row[key] for row in tail if key in row]
        return sum(values) / len(values) if values else None

    if info is not None:
        info.update({
            "train_seconds": round(seconds, 3), "peak_rss_mb": round(rss.peak_mb, 1), "start_rss_mb": round(rss.start_mb, 1),
            "steps": steps, "final_loss": last.get("loss"), "reward_accuracy": last.get("rewards/accuracies"),
            "reward_margin": last.get("rewards/margins"), "final_loss_mean": tail_mean("loss"),
            "reward_accuracy_mean": tail_mean("rewards/accuracies"), "reward_margin_mean": tail_mean("rewards/margins"),
            "train_loss": next((row["train_loss"] for row in history if "train_loss" in row), None),
            "num_pairs": len(pairs), "pairs_source": source,
            "lora_modules": len(selected), "trainable_params": trainable,
            "changed_parameters": len(changed) if originals else None, "history": history,
        })
    logger.info("DPO: %d pairs, %d steps in %.1f s, loss over the last quarter of the steps %s", len(pairs), steps,
                seconds, tail_mean("loss"))
    return model, weights_copy
