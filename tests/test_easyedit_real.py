"""Against the real EasyEdit (``scripts/test_easyedit.sh`` runs these in a virtual environment
with EasyEdit's requirements and its source on PYTHONPATH): what a user does, step by step.

Without EasyEdit they skip (with the reason); under ``SURGERY_EDITOR_REQUIRE_EASYEDIT=1`` they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import DATA_DIR, DINM_REQUEST, REPO, assert_same_state, real_easyedit_or_skip, state_copy

pytestmark = pytest.mark.easyedit

REQUEST = {"prompt": "you are stupid", "target_new": "you are kind and lovely",
           "ground_truth": "i hate you idiot", "general_prompt": ["nice day", "the cat is", "i love", "we are"]}


@pytest.fixture
def easyeditor():
    return real_easyedit_or_skip()


@pytest.mark.parametrize("source", ["dataset", "request"])
def test_readme_import_order_then_safety_editor_runs_model_surgery(easyeditor, tiny_model_dir, probe_tsv, tmp_path,
                                                                 source):
    """A fresh interpreter, the README's lines: import the plugin, then ``from easyeditor import
    SafetyEditor``; edit one request; the model comes back bit-identical."""
    hp = dict(alg_name="ModelSurgery", model_name="tiny", device="cpu", max_length=64, max_output_length=3,
              top_k=20, probe_source=source, cache_dir=str(tmp_path / "cache"), activation_batch_size=8,
              probe_data={"path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral1"})
    code = textwrap.dedent("""
        import json, sys, torch
        import surgery_editor.easyedit                     # adds "ModelSurgery" to easyeditor's ALG_DICT
        from easyeditor import SafetyEditor
        from surgery_editor import ModelSurgeryHyperParams, load_model

        model_dir, hp_dict, req = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
        hp = ModelSurgeryHyperParams(**hp_dict)
        hp.model_name = load_model(model_dir)
        model = hp.model_name[0]
        before = {k: v.clone() for k, v in model.state_dict().items()}
        editor = SafetyEditor.from_hparams(hp)
        metrics, edited, weights_copy = editor.edit(editing_method="ModelSurgery", prompts=[req["prompt"]],
            prompts_with_systemPrompt=None, target_new=[req["target_new"]], ground_truth=[req["ground_truth"]],
            general_prompt=[req["general_prompt"]], keep_original_weight=True, case_id=0)
        same = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        print("RESULT", json.dumps({"pre": sorted(metrics[0]["pre"]), "post": sorted(metrics[0]["post"]),
                                    "edited": sorted(weights_copy), "restored": same}))
    """)
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), json.dumps(hp), json.dumps(REQUEST)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"})
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    keys = ["DG_onlyQ", "DG_otherA", "DG_otherAQ", "DG_otherQ", "DS"]
    assert result["pre"] == result["post"] == keys
    assert result["edited"] and all(k.endswith("mlp.gate_proj.weight") for k in result["edited"])
    assert result["restored"]


def test_safety_editor_runs_easyedits_own_dinm_with_load_model_pair(easyeditor, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    """EasyEdit's DINM through SafetyEditor on the pair from ``load_model(...,
    output_hidden_states=True)`` (its toxic-layer search reads ``outputs.hidden_states``): the
    located layer's down_proj is edited, and restored bit-exactly."""
    from easyeditor import SafetyEditor
    from easyeditor.models.dinm import DINMHyperParams as EasyEditDINM

    from surgery_editor.models import load_model

    monkeypatch.chdir(tmp_path)  # SafetyEditor writes logs/run.log into the working directory
    hp = EasyEditDINM.from_hparams(str(REPO / "hparams" / "DINM" / "smollm2-135m.yaml"))
    hp.model_name = load_model(tiny_model_dir, output_hidden_states=True)
    hp.num_steps, hp.max_length, hp.max_output_length = 2, 128, 3
    model = hp.model_name[0]
    before = state_copy(model)
    editor = SafetyEditor.from_hparams(hp)
    apply_dinm, moved = editor.apply_algo, []

    def spy(m, *args, **kwargs):
        out = apply_dinm(m, *args, **kwargs)
        moved.extend(not torch.equal(v, m.get_parameter(k)) for k, v in out[1].items())
        return out

    editor.apply_algo = spy
    suffix = hp.suffix_system_prompt
    req = DINM_REQUEST
    metrics, edited, weights_copy = editor.edit(
        editing_method="DINM", prompts=[req["prompt"]], prompts_with_systemPrompt=[req["prompt"] + " " + suffix],
        target_new=[req["target_new"]], ground_truth=[req["ground_truth"]], general_prompt=[req["general_prompt"]],
        general_prompt_with_systemPrompt=[[g + " " + suffix for g in req["general_prompt"]]],
        locality_inputs={"general knowledge constraint": {"prompt": [req["locality_prompt"]],
                                                          "ground_truth": [req["locality_ground_truth"]]}},
        locality_inputs_with_systemPrompt={"general knowledge constraint": {
            "prompt": [req["locality_prompt"] + " " + suffix], "ground_truth": [req["locality_ground_truth"]]}},
        keep_original_weight=True, case_id=0)
    layer = hp.layers[0]  # SafetyEditor located it and wrote it into the hparams (once per editor)
    assert list(weights_copy) == [f"model.layers.{layer}.mlp.down_proj.weight"]
    assert set(metrics[0]["post"]) == {"DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"}
    assert moved == [True]  # the edit changed the weights before SafetyEditor restored them
    assert_same_state(model, before)


def test_dinm_without_hidden_states_fails_in_easyedit(easyeditor, tiny_model_dir, tmp_path, monkeypatch):
    """Why the README says ``output_hidden_states=True``: the plain pair crashes in EasyEdit's
    toxic-layer search (if this starts passing, EasyEdit fixed it and the README can say so)."""
    from easyeditor import SafetyEditor
    from easyeditor.models.dinm import DINMHyperParams as EasyEditDINM

    from surgery_editor.models import load_model

    monkeypatch.chdir(tmp_path)
    hp = EasyEditDINM.from_hparams(str(REPO / "hparams" / "DINM" / "smollm2-135m.yaml"))
    hp.model_name = load_model(tiny_model_dir)
    hp.num_steps, hp.max_length, hp.max_output_length = 1, 128, 2
    editor = SafetyEditor.from_hparams(hp)
    with pytest.raises(TypeError, match="NoneType"):
        editor.edit(editing_method="DINM", prompts=["p"], prompts_with_systemPrompt=["p s"], target_new=["you are kind"],
                    ground_truth=["you idiot"], general_prompt=[["a", "b", "c", "d"]],
                    general_prompt_with_systemPrompt=[["a", "b", "c", "d"]], keep_original_weight=True, case_id=0)


@pytest.mark.skipif(not DATA_DIR.exists(), reason=f"offline data not found at {DATA_DIR}")
def test_harness_runs_easyedits_dinm_backend(easyeditor, tiny_model_dir, tmp_path):
    from benchmarks.run import compose_config, run

    cfg = compose_config("method=DINM", "method.backend=easyeditor", "benchmark=safeedit", "benchmark.limit=1",
                         "hparams.num_steps=2", "hparams.max_length=128", f"model.path={tiny_model_dir}",
                         f"data_dir={DATA_DIR}", "generation.max_new_tokens=3", "generation.batch_size=2",
                         "generation.max_length=48")
    metrics = run(cfg, tmp_path / "run")
    assert metrics["edit_facts"]["backend"] == "easyeditor" and metrics["n"] == 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and isinstance(rows[0]["edited_layers"], list)


@pytest.mark.parametrize("alg", ["ProFS", "steer", "prompt"])
def test_safety_editor_runs_the_other_methods(easyeditor, alg, tiny_model_dir, probe_tsv, tmp_path, monkeypatch):
    """The plugin call registers every method: SafetyEditor finds each by alg_name, edits, and
    its restore loop gives back a model with the original outputs (steering leaves a zero bias
    behind, whose outputs are bit-identical)."""
    import surgery_editor.easyedit as plugin
    from easyeditor import SafetyEditor

    from surgery_editor.methods import get_algorithm
    from surgery_editor.models import load_model

    plugin.register()
    monkeypatch.chdir(tmp_path)
    pairs = {"path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral1"}
    extra = {"ProFS": dict(pairs=pairs, layers=[0, 1], rank=2, cache_dir=str(tmp_path / "c")),
             "steer": dict(pairs=pairs, layer=0, scale=2.0, cache_dir=str(tmp_path / "c")),
             "prompt": dict(system_prompt="Be kind.", reminder=" Remember.")}[alg]
    model, tok = load_model(tiny_model_dir)
    hp = get_algorithm(alg).hparams_cls(alg_name=alg, model_name=(model, tok), device="cpu", max_length=64,
                                        max_output_length=3, **extra)
    ids = torch.randint(3, len(tok), (1, 5))
    with torch.no_grad():
        before = model(ids).logits
    editor = SafetyEditor.from_hparams(hp)
    metrics, edited, weights_copy = editor.edit(
        editing_method=alg, prompts=[REQUEST["prompt"]], prompts_with_systemPrompt=None,
        target_new=[REQUEST["target_new"]], ground_truth=[REQUEST["ground_truth"]],
        general_prompt=[REQUEST["general_prompt"]], keep_original_weight=True, case_id=0)
    assert set(metrics[0]["post"]) == {"DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"}
    with torch.no_grad():
        assert torch.equal(edited(ids).logits, before)
    if alg == "prompt":
        assert weights_copy == {} and metrics[0]["requested_rewrite"]["prompt"].startswith("Be kind.")
    else:
        assert weights_copy
