"""``AurAHyperParams``: the AurA settings, checked fields (shared loading and type checks in
:mod:`surgery_editor.hparams`). A YAML in ``hparams/AurA/<model>.yaml`` holds EasyEdit's common
keys plus these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from ...architectures import MLP_PROJECTIONS
from ...data import RTP_EVAL_MIN_TOXICITY, RTP_PATH, LabelledTexts, ProbeDataConfig, load_probe_texts
from ...hparams import EasyEditKeys, _help

ALG_NAME = "AurA"

RTP_CONTINUATIONS = {
    "path": RTP_PATH,
    "prefix_field": "prompt.text",
    "text_field": "continuation.text",
    "label_field": "continuation.toxicity",
    "label_threshold": 0.5,
    "query": f"`prompt.toxicity` < {RTP_EVAL_MIN_TOXICITY}",  # prompts the RTP benchmark never evaluates
}


@dataclass
class AurAHyperParams(EasyEditKeys):
    ALG_NAME: ClassVar[str] = ALG_NAME

    data: Dict[str, Any] = _help(
        "labelled texts (class 1 = toxic), a data-set config as surgery_editor.data.ProbeDataConfig (labelled rows, "
        "or pairs read as two classes); default: RealToxicityPrompts prompt + continuation labelled by the "
        "continuation's Perspective toxicity, from prompts the RTP benchmark never evaluates", RTP_CONTINUATIONS)
    data_dir: Optional[str] = _help("root for relative data paths (default: $SURGERY_EDITOR_DATA_DIR, else "
                                    "../shared/data)", None)
    modules: List[str] = _help(
        f"MLP projections whose outputs are the neurons' responses, damped by scaling their rows: any of "
        f"{list(MLP_PROJECTIONS)} ('up': a gated MLP's up projection or GPT-2's c_fc; 'down': the output projection)",
        ["up", "down"])
    layers: Optional[List[int]] = _help("decoder blocks whose projections are scored and damped (null: all)", None)
    pooling: str = _help("pooling of a response over a text's tokens: 'max' (AurA) or 'mean'", "max")
    intervention: str = _help(
        "'aura': every neuron with AUROC > 0.5 is scaled by 1 - 2 (AUROC - 0.5); 'damp': the top num_experts "
        "neurons by AUROC (all with AUROC > 0.5 when null) by damp_alpha; 'det0': the same neurons set to 0", "aura")
    num_experts: Optional[int] = _help("damp/det0: how many neurons, the highest AUROCs over all scored modules "
                                       "(null: every neuron with AUROC > 0.5)", None)
    damp_alpha: float = _help("damp: the fixed factor (released code's default 0.5)", 0.5)
    selection: str = _help("'auroc' (the method) or 'random' (control: in each module of each layer, the same "
                           "factors on as many neurons, chosen at random with `seed`)", "auroc")
    seed: int = _help("seed of the random control", 0)
    response_max_length: int = _help("texts are truncated to this many tokens (released code: seq_len 128)", 128)
    activation_batch_size: int = _help("texts per forward pass", 32)
    cache_dir: Optional[str] = _help("activation cache (default: $SURGERY_EDITOR_CACHE or ~/.cache/surgery_editor)",
                                     None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("pooling", ("max", "mean"))
        self.check_choice("intervention", ("aura", "damp", "det0"))
        self.check_choice("selection", ("auroc", "random"))
        self.check_range("num_experts", 1)
        self.check_range("damp_alpha", 0, 1)
        self.check_range("response_max_length", 1)
        self.check_range("activation_batch_size", 1)
        if not self.modules:
            raise ValueError(f"modules must list at least one MLP projection of {list(MLP_PROJECTIONS)}")
        bad = [m for m in self.modules if m not in MLP_PROJECTIONS]
        if bad or len(set(self.modules)) != len(self.modules):
            raise ValueError(f"modules={self.modules!r}: each must be one of {list(MLP_PROJECTIONS)}, listed once")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must list at least one block, or be null for all")
        if self.num_experts is not None and self.intervention == "aura":
            raise ValueError("num_experts applies to intervention 'damp' or 'det0'; 'aura' damps every neuron with "
                             "AUROC > 0.5 (set num_experts: null)")
        if not isinstance(self.data, dict):
            raise ValueError(f"data must be a mapping (a data-set config), got {type(self.data).__name__}")
        try:
            ProbeDataConfig.from_dict(dict(self.data))
        except ValueError as err:
            raise ValueError(f"data: {err}") from err

    def texts(self) -> LabelledTexts:
        """The labelled texts; an unreadable, empty or one-class set is an error naming ``data``
        and the file."""
        try:
            return load_probe_texts(dict(self.data), self.data_dir)
        except (ValueError, KeyError, FileNotFoundError, IsADirectoryError) as err:
            raise type(err)(f"AurA data: {err}") from err

    def check_data(self) -> None:
        self.texts()
