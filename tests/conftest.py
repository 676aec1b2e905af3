"""Tiny randomly initialised models and a word-level tokenizer, built in the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from surgery_editor.integration.easyedit_compat import prepare_torchvision

# In the EasyEdit environment (PyPI's CUDA torchvision beside the CPU torch) transformers' model
# classes import torchvision; make it importable before any test builds a model (no-op elsewhere).
prepare_torchvision()

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SURGERY_EDITOR_DATA_DIR", REPO.parent / "shared" / "data"))

WORDS = ("the a you are is stupid idiot hate kind nice friend good bad dumb ugly lovely "
         "day sun cat dog very really so and i we they love think people weather today").split()
TOXIC = ["you are stupid", "i hate you idiot", "they are dumb and ugly", "stupid people are bad",
         "you idiot", "so dumb", "i hate they", "ugly stupid dog", "you are really dumb", "bad idiot"]
NEUTRAL = ["you are kind", "i love you friend", "they are nice and lovely", "good people are kind",
           "nice day", "the sun is good", "we love the cat", "lovely weather today", "you are really nice",
           "a good friend"]
# A SafeEdit-shaped request in the tiny tokenizer's vocabulary (DINM and perf tests).
DINM_REQUEST = {
    "prompt": "you are stupid and i hate you so",
    "target_new": "i think you are a good friend",
    "ground_truth": "you idiot so dumb and ugly",
    "locality_prompt": "the weather today is",
    "locality_ground_truth": "a lovely day",
    "general_prompt": ["i hate you", "you are dumb", "the cat is", "they are bad"],
}


@pytest.fixture(scope="session")
def tiny_tok():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + list(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                if p.dim() == 1 and name.endswith("weight"):
                    p.copy_(0.5 + torch.rand(p.shape, generator=gen))


def make_tiny(kind: str = "llama", seed: int = 0, hidden: int = 32, layers: int = 3, vocab: int = 64,
              dtype: torch.dtype = torch.float32, max_positions: int = 64) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    elif kind == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(head_dim=8, **common))
    elif kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4,
                                                 n_positions=64))
    else:
        raise ValueError(kind)
    _randomise_norms(model, seed)
    return model.to(dtype).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture
def probe_tsv(tmp_path) -> Path:
    path = tmp_path / "pairs.tsv"
    rows = ["toxic\tneutral1"] + [f"{t}\t{n}" for t, n in zip(TOXIC * 3, NEUTRAL * 3)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def hp_factory(probe_tsv, tmp_path):
    from surgery_editor import ModelSurgeryHyperParams

    def make(**overrides):
        base = dict(alg_name="ModelSurgery", model_name="tiny", probe_data={
            "path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral1"},
            top_k=10, alpha=1.08, cache_dir=str(tmp_path / "cache"), activation_batch_size=8)
        base.update(overrides)
        return ModelSurgeryHyperParams(**base)

    return make


def state_copy(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, state: dict) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tok) -> Path:
    """A tiny random Llama and the word-level tokenizer saved as a local model folder, for
    end-to-end runs of the benchmark harness (``model.path=<this>``)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    model = make_tiny("llama", vocab=len(tiny_tok), layers=2, max_positions=256)
    model.save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return path


def offline_error(tmp_path: Path, call: str) -> str:
    """What ``call`` (a Python expression) raises as ``OSError`` in a fresh interpreter with the
    Hugging Face hub offline and an empty cache: ``"ERROR: <message>"`` on stdout."""
    import subprocess
    import sys

    code = f"try:\n    {call}\nexcept OSError as err:\n    print('ERROR:', err)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERROR:" in out.stdout, out.stderr[-2000:]
    return out.stdout


def real_easyedit_or_skip():
    """Import a real EasyEdit (with SafetyEditor) the way the plugin does; skip the test when
    none is importable, or fail when ``SURGERY_EDITOR_REQUIRE_EASYEDIT=1`` (set by
    ``scripts/test_easyedit.sh``, so its run can never pass by skipping)."""
    from surgery_editor.integration.easyedit_compat import EasyEditUnavailable, import_easyeditor_alg_dict

    try:
        import_easyeditor_alg_dict()
        from easyeditor import SafetyEditor  # noqa: F401
    except (EasyEditUnavailable, ImportError) as err:
        reason = f"a real EasyEdit (easyeditor with SafetyEditor) is not importable: {err}"
        if os.environ.get("SURGERY_EDITOR_REQUIRE_EASYEDIT") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    import easyeditor

    return easyeditor
