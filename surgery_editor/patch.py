"""A Model Surgery edit as a self-contained, revertible object.

A :class:`SurgeryPatch` holds, per edited parameter, the row indices, the original rows and
the edited rows (both in the model's dtype, so applying and reverting are plain copies and
revert is bit-exact), plus the probe, the edit direction, ``alpha`` and metadata (model name,
hidden size, config hash, probe accuracy, ...). It saves as ``patch.safetensors`` +
``patch.json`` in a folder (written to a temporary folder, then renamed).

Applying is refused when the model has another shape, another config, or rows that differ
from the rows the patch was computed on (another checkpoint, or the patch already applied).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .cache import config_hash
from .fileio import atomic_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class RowEdit:
    param_name: str  # e.g. model.layers.3.mlp.gate_proj.weight
    layer: int
    rows: torch.Tensor  # (k,) int64 neuron indices
    original: torch.Tensor  # (k, d) model dtype
    edited: torch.Tensor  # (k, d) model dtype
    rows_are_columns: bool = False

    def _write(self, model: nn.Module, values: torch.Tensor) -> None:
        param = model.get_parameter(self.param_name)
        view = param.data.t() if self.rows_are_columns else param.data
        view[self.rows.to(param.device)] = values.to(device=param.device, dtype=param.dtype)

    def _read(self, model: nn.Module) -> torch.Tensor:
        param = model.get_parameter(self.param_name)
        view = param.data.t() if self.rows_are_columns else param.data
        return view[self.rows.to(param.device)].detach().cpu()


@dataclass
class SurgeryPatch:
    edits: List[RowEdit]
    alpha: float
    direction: torch.Tensor  # (d,) float32: the edit direction actually added (per step mode)
    probe_weight: torch.Tensor | None = None  # (2, d) float32
    probe_bias: torch.Tensor | None = None  # (2,)
    metadata: Dict[str, Any] = field(default_factory=dict)

    # ---- facts -------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return sum(int(e.rows.numel()) for e in self.edits)

    @property
    def rows_per_layer(self) -> Dict[int, int]:
        return {e.layer: int(e.rows.numel()) for e in self.edits}

    def selected(self) -> List[tuple]:
        """Sorted (layer, row) pairs of every edited row."""
        return sorted((e.layer, int(r)) for e in self.edits for r in e.rows.tolist())

    # ---- model compatibility -----------------------------------------------------------
    def check_compatible(self, model: nn.Module, expect: str = "original") -> None:
        """Raise ``ValueError`` unless ``model`` has this patch's shapes, config and ``expect``
        rows ("original" before apply, "edited" before revert)."""
        meta = self.metadata
        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
        if meta.get("hidden_size") is not None and hidden != meta["hidden_size"]:
            raise ValueError(f"patch is for hidden size {meta['hidden_size']} ({meta.get('model_name')}), "
                             f"this model has {hidden}")
        if meta.get("config_hash") and config_hash(model) != meta["config_hash"]:
            raise ValueError(f"patch was made for another model configuration ({meta.get('model_name')}, "
                             f"config hash {meta['config_hash']}, this model {config_hash(model)})")
        for e in self.edits:
            try:
                param = model.get_parameter(e.param_name)
            except AttributeError:
                raise ValueError(f"patch edits {e.param_name!r}, which this model does not have") from None
            n_rows = param.shape[1] if e.rows_are_columns else param.shape[0]
            width = param.shape[0] if e.rows_are_columns else param.shape[1]
            if width != e.original.shape[1] or int(e.rows.max()) >= n_rows:
                raise ValueError(f"{e.param_name} has shape {tuple(param.shape)}, the patch expects rows of "
                                 f"length {e.original.shape[1]} and at least {int(e.rows.max()) + 1} rows")
            current = e._read(model)
            wanted = e.original if expect == "original" else e.edited
            if not torch.equal(current, wanted.to(current.dtype)):
                other = e.edited if expect == "original" else e.original
                state = ("already has this patch applied" if torch.equal(current, other.to(current.dtype))
                         else "is another checkpoint (its rows differ from the ones the patch was computed on)")
                raise ValueError(f"cannot {'apply' if expect == 'original' else 'revert'} patch: {e.param_name} "
                                 f"{state}")

    # ---- apply / revert ----------------------------------------------------------------
    @torch.no_grad()
    def apply(self, model: nn.Module, check: bool = True) -> nn.Module:
        if check:
            self.check_compatible(model, "original")
        for e in self.edits:
            e._write(model, e.edited)
        return model

    @torch.no_grad()
    def revert(self, model: nn.Module, check: bool = True) -> nn.Module:
        if check:
            self.check_compatible(model, "edited")
        for e in self.edits:
            e._write(model, e.original)
        return model

    def weights_copy(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """EasyEdit's ``weights_copy``: full original tensors of every edited parameter,
        by names ``model.get_parameter`` resolves (built from the current, unedited model)."""
        return {e.param_name: model.get_parameter(e.param_name).detach().clone() for e in self.edits}

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        tensors: Dict[str, torch.Tensor] = {"direction": self.direction}
        if self.probe_weight is not None:
            tensors["probe.weight"], tensors["probe.bias"] = self.probe_weight, self.probe_bias
        edits_meta = []
        for i, e in enumerate(self.edits):
            tensors[f"edit{i}.rows"], tensors[f"edit{i}.original"], tensors[f"edit{i}.edited"] = (
                e.rows, e.original, e.edited)
            edits_meta.append({"param_name": e.param_name, "layer": e.layer, "rows_are_columns": e.rows_are_columns})
        doc = {"format_version": FORMAT_VERSION, "alpha": self.alpha, "edits": edits_meta,
               "metadata": self.metadata, "num_rows": self.num_rows}
        with atomic_dir(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "patch.safetensors"))
            (tmp / "patch.json").write_text(json.dumps(doc, indent=2, default=str))
        logger.info("saved patch (%d rows) to %s", self.num_rows, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SurgeryPatch":
        path = Path(path)
        meta_file, tensor_file = path / "patch.json", path / "patch.safetensors"
        if not meta_file.is_file() or not tensor_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved patch (needs patch.json and patch.safetensors)")
        doc = json.loads(meta_file.read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_file}: format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
        t = load_file(str(tensor_file))
        edits = [RowEdit(param_name=m["param_name"], layer=m["layer"], rows=t[f"edit{i}.rows"],
                         original=t[f"edit{i}.original"], edited=t[f"edit{i}.edited"],
                         rows_are_columns=m["rows_are_columns"]) for i, m in enumerate(doc["edits"])]
        return cls(edits=edits, alpha=doc["alpha"], direction=t["direction"], probe_weight=t.get("probe.weight"),
                   probe_bias=t.get("probe.bias"), metadata=doc["metadata"])
