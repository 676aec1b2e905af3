"""load_model: local paths, (model, tok) pairs, dtype, and clear errors."""

import pytest
import torch

from surgery_editor import load_model
from surgery_editor.models import _to_dtype

from conftest import make_tiny


def test_local_path_round_trip(tmp_path, tiny_tok):
    model = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tiny_tok.save_pretrained(tmp_path / "m")
    loaded, tok = load_model(str(tmp_path / "m"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert tok.pad_token == "[PAD]" and not loaded.training
    half, _ = load_model(str(tmp_path / "m"), dtype="bf16")
    assert half.dtype == torch.bfloat16


def test_pair_passes_through_and_gets_pad_token(tiny_tok):
    model = make_tiny("llama")
    tiny_tok.pad_token = None
    same, tok = load_model((model, tiny_tok))
    assert same is model and tok.pad_token == tok.eos_token == "[EOS]"
    tiny_tok.pad_token = "[PAD]"


def test_bad_name_and_dtype():
    with pytest.raises(ValueError, match="neither an embedded model .*smollm2-135m"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="dtype 'fp8' is not valid"):
        _to_dtype("fp8")
