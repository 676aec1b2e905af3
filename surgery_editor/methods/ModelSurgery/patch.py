"""A Model Surgery edit as a self-contained, revertible object.

A :class:`SurgeryPatch` holds, per edited parameter, the row indices, the original rows and
the edited rows (both in the model's dtype, so applying and reverting are plain copies and
revert is bit-exact), plus the probe, the edit direction, ``alpha`` and metadata (model name,
hidden size, config hash, probe accuracy, ...). It saves as ``patch.safetensors`` +
``patch.json`` in a folder (written to a temporary folder, then renamed); ``patch.json``
records the sha256 of the tensor file and of each tensor, checked on load.

Applying is refused when the model has another shape, another config, or rows that differ
from the rows the patch was computed on (another checkpoint, or the patch already applied).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...infra.cache import config_hash
from ...infra.fileio import atomic_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: patch.json records sha256 sums of patch.safetensors (1: none, still readable)
READABLE_VERSIONS = (1, 2)
META_FILE, TENSOR_FILE = "patch.json", "patch.safetensors"


@dataclass
class RowEdit:
    param_name: str  # e.g. model.layers.3.mlp.gate_proj.weight
    layer: int
    rows: torch.Tensor  # (k,) int64 neuron indices
    original: torch.Tensor  # (k, d) model dtype
    edited: torch.Tensor  # (k, d) model dtype
    rows_are_columns: bool = False

    def _write(self, model: nn.Module, values: torch.Tensor) -> None:
        self._write_into(model.get_parameter(self.param_name).data, values)

    def _write_into(self, tensor: torch.Tensor, values: torch.Tensor) -> None:
        view = tensor.t() if self.rows_are_columns else tensor
        view[self.rows.to(tensor.device)] = values.to(device=tensor.device, dtype=tensor.dtype)

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
        """EasyEdit's ``weights_copy``: full original tensors of every edited parameter, by
        names ``model.get_parameter`` resolves (built from the current, unedited model), in host
        memory (:func:`~surgery_editor.methods._common.originals`)."""
        from .._common import originals

        return originals(model, [e.param_name for e in self.edits])

    def weights_before(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """:meth:`weights_copy` for a model that carries this patch: each edited parameter's
        current tensor with the patch's original rows put back."""
        out: Dict[str, torch.Tensor] = {}
        for e in self.edits:
            tensor = out.setdefault(e.param_name, model.get_parameter(e.param_name).detach().clone())
            e._write_into(tensor, e.original)
        return out

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
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSOR_FILE))
            raw = (tmp / TENSOR_FILE).read_bytes()  # hashed from the bytes written, as load reads them
            doc["checksums"] = {"algorithm": "sha256", "file": TENSOR_FILE, "size": len(raw),
                                "sha256": hashlib.sha256(raw).hexdigest(),
                                "tensors": _tensor_digests(raw, tmp / TENSOR_FILE)}
            (tmp / META_FILE).write_text(json.dumps(doc, indent=2, default=str))
        logger.info("saved patch (%d rows) to %s", self.num_rows, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SurgeryPatch":
        """Read a saved patch; format 2 files are checked against the sha256 sums recorded
        at save (an altered or truncated ``patch.safetensors`` is refused, naming the file and
        the tensors that differ); format 1 (no sums) loads with a warning."""
        path = Path(path)
        meta_file, tensor_file = path / META_FILE, path / TENSOR_FILE
        if not meta_file.is_file() or not tensor_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved patch (needs {META_FILE} and {TENSOR_FILE})")
        try:
            doc = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{meta_file}: not valid JSON ({err}); the file is truncated or damaged, "
                             "save the patch again") from err
        if not isinstance(doc, dict):
            raise ValueError(f"{meta_file}: expected a JSON object, got {type(doc).__name__}")
        version = doc.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ValueError(f"{meta_file}: format_version {version!r}, expected one of {list(READABLE_VERSIONS)}")
        missing = [k for k in ("alpha", "edits", "metadata") if k not in doc]
        if missing:
            raise ValueError(f"{meta_file}: missing key(s) {missing}; the file is truncated or damaged")
        if version >= 2:
            _verify(doc.get("checksums"), tensor_file, meta_file)
        else:
            logger.warning("%s: format_version 1 has no checksums, so %s is loaded unverified "
                           "(save the patch again to add them)", meta_file, tensor_file)
        try:
            t = load_file(str(tensor_file))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{tensor_file}: not a readable safetensors file ({err}); it is truncated or "
                             "damaged, save the patch again") from err

        def tensor(name: str) -> torch.Tensor:
            if name not in t:
                raise ValueError(f"{tensor_file}: no tensor {name!r}, which {meta_file} refers to; "
                                 f"tensors in the file: {sorted(t)}")
            return t[name]

        try:
            edits = [RowEdit(param_name=m["param_name"], layer=m["layer"], rows=tensor(f"edit{i}.rows"),
                             original=tensor(f"edit{i}.original"), edited=tensor(f"edit{i}.edited"),
                             rows_are_columns=m["rows_are_columns"]) for i, m in enumerate(doc["edits"])]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{meta_file}: malformed 'edits' entry ({type(err).__name__}: {err}); each needs "
                             "param_name, layer and rows_are_columns") from err
        return cls(edits=edits, alpha=doc["alpha"], direction=tensor("direction"), probe_weight=t.get("probe.weight"),
                   probe_bias=t.get("probe.bias"), metadata=doc["metadata"])


def _safetensors_header(raw: bytes, tensor_file: Path) -> tuple:
    """``(header, data_start)`` of a safetensors file's bytes: 8 bytes of header length, the
    JSON header (name -> dtype, shape, data_offsets relative to the data), then the data."""
    try:
        n = int.from_bytes(raw[:8], "little")
        if len(raw) < 8 or 8 + n > len(raw):
            raise ValueError(f"header of {n} bytes does not fit in {len(raw)} bytes")
        header = json.loads(raw[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as err:
        raise ValueError(f"{tensor_file}: not a readable safetensors file ({err}); it is truncated or damaged, "
                         "save the patch again") from err
    return header, 8 + n


def _tensor_digests(raw: bytes, tensor_file: Path) -> Dict[str, str]:
    """sha256 of each tensor's data bytes in a safetensors file."""
    header, start = _safetensors_header(raw, tensor_file)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = hashlib.sha256(raw[start + begin : start + end]).hexdigest()
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(sums: Any, tensor_file: Path, meta_file: Path) -> None:
    """Refuse ``tensor_file`` unless its size and sha256 match ``sums`` (from ``patch.json``);
    the error names the tensors whose bytes changed."""
    if not isinstance(sums, dict) or not isinstance(sums.get("sha256"), str):
        raise ValueError(f"{meta_file}: format_version 2 needs 'checksums' with the sha256 of {TENSOR_FILE}; "
                         "the file is damaged, save the patch again")
    if _file_sha256(tensor_file) == sums["sha256"]:
        return
    raw = tensor_file.read_bytes()
    if isinstance(sums.get("size"), int) and len(raw) != sums["size"]:
        raise ValueError(f"{tensor_file} is {len(raw)} bytes, {meta_file} records {sums['size']}: the file is "
                         "truncated or was replaced after the patch was saved; save the patch again")
    try:
        actual = _tensor_digests(raw, tensor_file)
    except (ValueError, KeyError, TypeError):
        actual = {}
    expected = sums.get("tensors") or {}
    changed = sorted(name for name in expected if actual.get(name) != expected[name])
    what = (f"tensor(s) {changed} differ from" if changed and actual
            else "its header differs from" if actual else "its bytes differ from")
    raise ValueError(f"{tensor_file}: {what} the sha256 recorded in {meta_file} at save; the file was altered or "
                     "damaged after the patch was saved (save the patch again from its source)")
