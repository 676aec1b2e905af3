"""On-disk cache of expensive intermediates (activations, probes), keyed by all they depend on.

Entries are safetensors files (tensors) with their JSON-able metadata stored in the
safetensors header, written to a temporary file and renamed, so a crash never leaves a
half-written entry. A key includes the model's *weights* fingerprint, so an edited model
never reuses the activations of the unedited one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .fileio import atomic_file

logger = logging.getLogger(__name__)


def cache_root(cache_dir: Optional[str] = None) -> Path:
    root = cache_dir or os.environ.get("SURGERY_EDITOR_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "surgery_editor"
    return Path(root).expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def config_hash(model: nn.Module) -> str:
    """Hash of the model's architecture config (shape-defining fields only)."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "n_layer", "n_embd",
            "vocab_size", "num_attention_heads", "num_key_value_heads", "text_config")
    return stable_hash({k: cfg.get(k) for k in keys})


FINGERPRINT_CHUNK = 1 << 22  # elements of a non-float32 matrix converted to float32 at a time


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """Fingerprint of every parameter, one cheap pass over the weights.

    A matrix (any parameter with 2+ dims, as rows x rest) is hashed through its product with
    a fixed seeded random vector: one number per row, so changing any element of any row by
    more than float32 rounding of that row's product changes the fingerprint. A matrix-vector
    product runs at memory speed (Gemma-3-270M's 168M-parameter embedding: ~0.06 s on this
    2-core CPU), where float64 sums of squares needed a float64 copy of every matrix and
    took seconds. Vectors (norms, biases) are hashed byte for byte. A matrix that is not
    float32 is projected in float32 a block of rows at a time (at most
    :data:`FINGERPRINT_CHUNK` elements converted at once), so a bf16 model never holds a
    float32 copy of a whole matrix (a 7B model's LM head: 0.8 GB).
    """
    h = hashlib.sha256()
    probes: Dict[Tuple[int, str], torch.Tensor] = {}
    for name, p in model.named_parameters():
        w = p.detach()
        h.update(f"{name}{tuple(w.shape)}{w.dtype}".encode())
        if w.dim() < 2:
            h.update(w.float().cpu().numpy().tobytes())
            continue
        w2 = w.reshape(w.shape[0], -1)
        key = (w2.shape[1], str(w2.device))
        if key not in probes:
            gen = torch.Generator().manual_seed(w2.shape[1])
            probes[key] = torch.randn(w2.shape[1], generator=gen).to(w2.device)
        if w2.dtype == torch.float32:
            product = torch.mv(w2, probes[key])
        else:
            rows = max(1, FINGERPRINT_CHUNK // w2.shape[1])
            product = torch.cat([torch.mv(w2[i : i + rows].float(), probes[key]) for i in range(0, w2.shape[0], rows)])
        h.update(product.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_save(tensors: Dict[str, torch.Tensor], path: Path, metadata: Optional[Dict[str, Any]] = None) -> None:
    meta = {"json": json.dumps(metadata or {}, default=str)}
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_entry(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("json", "{}"))
    return load_file(str(path)), meta


class TensorCache:
    """A folder of safetensors entries under ``cache_root()/<kind>``."""

    def __init__(self, kind: str, cache_dir: Optional[str] = None, enabled: bool = True):
        self.dir = cache_root(cache_dir) / kind
        self.enabled = enabled

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def get(self, key: str) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
        path = self.path(key)
        if not self.enabled or not path.is_file():
            return None
        try:
            return load_entry(path)
        except Exception as err:  # a corrupt entry is recomputed, never trusted
            logger.warning("ignoring unreadable cache entry %s (%s)", path, err)
            return None

    def put(self, key: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, Any]) -> None:
        """Store an entry; a cache folder that cannot be written costs the reuse, not the
        result just computed (logged, naming the folder)."""
        if self.enabled:
            try:
                atomic_save(tensors, self.path(key), metadata)
            except OSError as err:
                logger.warning("cache entry %s not written (%s); set cache_dir or $SURGERY_EDITOR_CACHE to a "
                               "writable folder to reuse it", self.path(key), err)
