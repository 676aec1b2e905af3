"""A plain ``pip install .`` (no extras, not editable) in a fresh virtual environment, as an
EasyEdit user gets it: the editing methods and the plugin import and run, the harness's, DPO's
and the judges' packages are not installed, nothing generic lands at the top of site-packages,
and the shipped hparams load by name.

Slow (a new environment: torch's CPU wheel and the package's requirements; pip's cache keeps
the second run quick); deselect with ``-m "not install"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.install

TORCH = "torch==2.13.0"  # the CPU wheel scripts/setup.sh pins
# What the distribution is built from; the rest of the checkout (tests, docs, runs) is not needed.
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "surgery_editor", "benchmarks", "hparams")
NOT_INSTALLED = ("lm_eval", "trl", "peft", "matplotlib", "profanity_check")

CHECK = textwrap.dedent("""
    import importlib.util, json, subprocess, sys
    import torch, transformers
    import surgery_editor
    from surgery_editor import ModelSurgeryHyperParams, apply_model_surgery_to_model
    from surgery_editor.methods import load_methods
    from surgery_editor.infra.extras import MissingExtra

    report = {"file": surgery_editor.__file__,
              "importable": {m: importlib.util.find_spec(m) is not None for m in NOT_INSTALLED},
              "methods": sorted(load_methods())}

    hp = ModelSurgeryHyperParams.from_hparams("ModelSurgery/llama2-7b-chat")
    report["by_name"] = [hp.alg_name, hp.model_name]
    try:
        ModelSurgeryHyperParams.from_hparams("ModelSurgery/no-such-model")
    except FileNotFoundError as err:
        report["wrong_name"] = str(err)

    from tokenizers import Tokenizer, models, pre_tokenizers
    words = "you are stupid idiot dumb kind nice good friend lovely i hate love the".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + words)},
                                         unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                               eos_token="[EOS]")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    toxic = ["you are stupid", "i hate you idiot", "you are dumb", "stupid idiot"] * 4
    neutral = ["you are kind", "i love you friend", "you are nice", "lovely good friend"] * 4
    with open(sys.argv[1], "w") as f:
        f.write("toxic\\tneutral\\n" + "".join(f"{t}\\t{n}\\n" for t, n in zip(toxic, neutral)))
    hp = ModelSurgeryHyperParams(alg_name="ModelSurgery", model_name="tiny", top_k=8, alpha=1.0,
                                 probe_data={"path": sys.argv[1], "positive_column": "toxic",
                                             "negative_column": "neutral"},
                                 cache_dir=sys.argv[2])
    model, weights_copy = apply_model_surgery_to_model(model, tok, [], hp, return_orig_weights=True)
    report["changed"] = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
    report["weights_copy"] = sorted(weights_copy)

    from surgery_editor.methods.DPO import apply_dpo_to_model
    try:
        apply_dpo_to_model(model, tok, [], load_methods()["DPO"].hparams_cls(model_name="tiny"))
    except MissingExtra as err:
        report["dpo_error"] = str(err)
    print("REPORT", json.dumps(report))
""").replace("NOT_INSTALLED", repr(NOT_INSTALLED))


def _run(args, cwd: Path, timeout: int = 1200) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_plain_install(tmp_path):
    source = tmp_path / "source"
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(src, source / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    (tmp_path / "constraints.txt").write_text(TORCH + "\n")
    _run([*pip, "install", TORCH], tmp_path)
    _run([*pip, "install", "-c", str(tmp_path / "constraints.txt"), str(source)], tmp_path)

    # from a folder outside the checkout, so that nothing is imported from the source tree
    work = tmp_path / "work"
    work.mkdir()
    (work / "check.py").write_text(CHECK)
    out = _run([python, "check.py", str(tmp_path / "pairs.tsv"), str(tmp_path / "cache")], work)
    report = json.loads(out.split("REPORT ", 1)[1])

    assert Path(report["file"]).is_relative_to(env_dir), report["file"]
    assert report["importable"] == {m: False for m in NOT_INSTALLED}
    assert {"ModelSurgery", "DINM", "ProFS", "steer", "prompt", "DPO"} <= set(report["methods"])
    assert report["by_name"] == ["ModelSurgery", "./hugging_cache/llama-2-7b-chat"]
    assert "ModelSurgery/llama2-7b-chat" in report["wrong_name"] and "no-such-model" in report["wrong_name"]
    assert report["changed"] and all(name.endswith("gate_proj.weight") for name in report["changed"])
    assert set(report["weights_copy"]) == set(report["changed"])
    assert 'pip install "surgery_editor[dpo]"' in report["dpo_error"]

    # the installed harness finds its Hydra config (package data) and the registered methods
    config = _run([python, "-m", "surgery_editor.benchmarks.run", "--cfg", "job", "method=random"], work)
    assert "name: ModelSurgery_random" in config

    files = _run([python, "-m", "pip", "show", "-f", "surgery_editor"], tmp_path)  # not -q: that silences show
    listed = [line.strip() for line in files.split("Files:", 1)[1].splitlines() if line.strip()]
    assert not [f for f in listed if f.startswith("benchmarks/")], "a top-level benchmarks package was installed"
    assert "surgery_editor/benchmarks/run.py" in listed
    assert "surgery_editor/benchmarks/conf/config.yaml" in listed
    assert "surgery_editor/hparams_files/ModelSurgery/llama2-7b-chat.yaml" in listed
    assert any(f.startswith("surgery_editor/benchmarks/lm_eval_tasks/") and f.endswith(".yaml") for f in listed)
