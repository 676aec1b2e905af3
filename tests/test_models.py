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


def test_shape_model_has_the_shape_the_tokenizers_vocabulary_and_the_dtype():
    from surgery_editor.models import COST_ONLY, MODEL_SHAPES, is_shape_model

    model, tok = load_model("shape:tiny-llama", dtype="bfloat16")
    shape = MODEL_SHAPES["tiny-llama"]
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (
        2, 64, 172, 4) == tuple(shape.config[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                          "num_attention_heads"))
    assert cfg.vocab_size == len(tok) == model.get_output_embeddings().weight.shape[0]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and not model.training
    assert is_shape_model(cfg._name_or_path) and cfg._name_or_path == "shape:tiny-llama"
    assert tok.pad_token is not None and COST_ONLY == "random weights (cost only)"
    with torch.no_grad():  # the head is drawn for a trained model's logit spread, not a near-uniform one
        logits = model(**tok(["the weather today is"], return_tensors="pt")).logits[0, -1].float()
    assert 2 < float(logits.std()) < 6
    again, _ = load_model("shape:tiny-llama", dtype="bfloat16")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    llama7b = MODEL_SHAPES["llama2-7b"].config
    assert (llama7b["num_hidden_layers"], llama7b["hidden_size"], llama7b["intermediate_size"],
            llama7b["num_attention_heads"]) == (32, 4096, 11008, 32)


def test_unknown_shape_names_the_shapes():
    with pytest.raises(ValueError, match=r"no architecture shape 'llama2-7' \(did you mean 'shape:llama2-7b'\?\); "
                                         r"shapes: shape:llama2-7b"):
        load_model("shape:llama2-7")


def test_shape_tokenizer_from_a_saved_folder(tmp_path, monkeypatch, tiny_tok):
    from surgery_editor.models import SHAPE_TOKENIZER_ENV

    tiny_tok.save_pretrained(tmp_path / "tok")
    monkeypatch.setenv(SHAPE_TOKENIZER_ENV, str(tmp_path / "tok"))
    model, tok = load_model("shape:tiny-llama")
    assert len(tok) == len(tiny_tok) == model.config.vocab_size
    monkeypatch.setenv(SHAPE_TOKENIZER_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a folder; point it at a saved tokenizer"):
        load_model("shape:tiny-llama")


def test_harnesses_refuse_a_shape_model(tmp_path):
    """No quality number can come from random weights: the benchmark harness and the
    command-line job stop with an error that points to the cost measurement."""
    from benchmarks.run import compose_config, run
    from surgery_editor.cli import main as cli_main

    cfg = compose_config("method=none", "benchmark=rtp", "benchmark.limit=2", "model.path=shape:tiny-llama")
    with pytest.raises(ValueError, match=r"benchmarks.run \(model.path\): model 'shape:tiny-llama' is an architecture "
                                         r"shape with random weights \(cost only\), made for cost measurements "
                                         r"\(python -m benchmarks.perf --model shape:tiny-llama\)"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="python -m surgery_editor .*cost measurements"):
        cli_main(["--set", "model_name=shape:llama2-7b"])
