"""ProFS, activation steering and the safety prompt: formulas on tiny random models, what
changes and by how much, bit-exact restore through EasyEdit's loop, and bad inputs."""

from __future__ import annotations

import pytest
import torch

from surgery_editor import activations as acts
from surgery_editor.methods import ALGORITHMS, InputTransform, get_algorithm, load_methods
from surgery_editor.methods.ProFS import (ProFSHyperParams, apply_profs_to_model, output_basis, project_out,
                                          toxic_subspace)
from surgery_editor.methods.prompt import SafetyPromptHyperParams, apply_safety_prompt_to_model
from surgery_editor.methods.steer import SteerHyperParams, apply_steer_to_model, remove_created_bias

from conftest import REPO, assert_same_state, make_tiny, state_copy


def _restore_like_easyedit(model, weights_copy):
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights_copy.items():
            params[name].copy_(value)


def _tiny_gemma3(vocab=64):
    import transformers as tf

    cfg = tf.Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    torch.manual_seed(0)
    model = tf.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)  # gains 1 + w far from 1, so a wrong gain shows
    return model


@pytest.fixture
def pairs(probe_tsv):
    return {"path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral1"}


def _profs(pair_cfg, tmp_path, **kw):
    base = dict(alg_name="ProFS", model_name="tiny", pairs=pair_cfg, layers=[1, 2], rank=2,
                cache_dir=str(tmp_path / "cache"), activation_batch_size=8)
    base.update(kw)
    return ProFSHyperParams(**base)


def _steer(pair_cfg, tmp_path, **kw):
    base = dict(alg_name="steer", model_name="tiny", pairs=pair_cfg, layer=1, scale=3.0,
                cache_dir=str(tmp_path / "cache"), activation_batch_size=8)
    base.update(kw)
    return SteerHyperParams(**base)


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------
def test_every_method_folder_registers():
    algos = load_methods()
    assert {"ModelSurgery", "DINM", "ProFS", "steer", "prompt"} <= set(algos)
    for name, algo in algos.items():
        assert algo.hparams_cls.ALG_NAME == name
        for yaml_path in sorted((REPO / "hparams" / name).glob("*.yaml")):
            assert algo.hparams_cls.from_hparams(yaml_path).alg_name == name, yaml_path
    assert get_algorithm("ProFS").controls == {"ProFS_random": {"subspace": "random"}}
    with pytest.raises(KeyError, match="did you mean 'ProFS'"):
        get_algorithm("PROFS")


def test_hparams_yamls_cover_the_models():
    for name in ("ProFS", "steer", "prompt"):
        stems = {p.stem for p in (REPO / "hparams" / name).glob("*.yaml")}
        assert {"smollm2-135m", "gemma3-270m", "llama-7b", "llama2-7b-chat", "mistral-7b"} <= stems, name


# ---------------------------------------------------------------------------------------
# ProFS
# ---------------------------------------------------------------------------------------
def test_toxic_subspace_recovers_the_planted_directions():
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 16
    planted = torch.linalg.qr(torch.randn(d, 2, generator=gen))[0]
    base = torch.randn(n, d, generator=gen) * 0.01 + 5.0 * torch.randn(d, generator=gen)  # shared "mean" direction
    toxic = base + torch.randn(n, 2, generator=gen) @ planted.T * 3.0
    basis = toxic_subspace(toxic, base, rank=2, centering=False)
    assert basis.shape == (d, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2, dtype=basis.dtype), atol=1e-10, rtol=0)
    # same span: projecting the planted directions onto the basis keeps them whole
    torch.testing.assert_close((basis @ (basis.T @ planted.double())), planted.double(), atol=2e-3, rtol=0)


def test_centering_removes_the_top_singular_vector_of_the_non_toxic_embeddings():
    gen = torch.Generator().manual_seed(1)
    non_toxic = torch.randn(50, 8, generator=gen) + 4.0
    toxic = torch.randn(50, 8, generator=gen)
    v1 = torch.linalg.svd(non_toxic.double(), full_matrices=False).Vh[0]
    centred = toxic_subspace(toxic, non_toxic, rank=3, centering=True)
    plain = toxic_subspace(toxic, non_toxic, rank=3, centering=False)
    assert (centred.T @ v1).abs().max() < 1e-10
    assert (plain.T @ v1).abs().max() > 1e-3


@pytest.mark.parametrize("transposed", [False, True])
def test_projection_removes_the_subspace_with_its_strength(transposed):
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64))[0]
    w = torch.randn(10, 6, generator=gen) if transposed else torch.randn(6, 10, generator=gen)
    full = project_out(w, basis, 1.0, transposed)
    half = project_out(w, basis, 0.5, transposed)
    comp = (lambda m: m.double() @ basis) if transposed else (lambda m: basis.T @ m.double())
    assert comp(full).abs().max() < 1e-6
    torch.testing.assert_close(comp(half), 0.5 * comp(w), atol=1e-6, rtol=0)
    # the orthogonal complement is untouched
    other = torch.eye(6, dtype=torch.float64) - basis @ basis.T
    keep = (lambda m: m.double() @ other) if transposed else (lambda m: other @ m.double())
    torch.testing.assert_close(keep(full), keep(w), atol=1e-6, rtol=0)


def _mlp_writes(model, module_path, ids):
    """What the given module outputs (captured by a hook) for input ``ids``."""
    out = []
    handle = model.get_submodule(module_path).register_forward_hook(lambda m, i, o: out.append(o.detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return out[0]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma3"])
def test_profs_edits_only_the_mlp_output_of_listed_layers_and_removes_the_subspace(kind, tiny_tok, pairs, tmp_path):
    from surgery_editor import architectures as arch
    from surgery_editor.methods.ProFS import compute_subspaces

    model = _tiny_gemma3(len(tiny_tok)) if kind == "gemma3" else make_tiny(kind, vocab=len(tiny_tok))
    hp = _profs(pairs, tmp_path)
    spec = arch.resolve_spec(model)
    bases = compute_subspaces(model, tiny_tok, hp)
    before = state_copy(model)
    _, weights_copy = apply_profs_to_model(model, tiny_tok, [], hp, return_orig_weights=True)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    expected = {f"{spec.mlp_out_tmp.format(i)}.weight" for i in (1, 2)}
    assert changed == expected == set(weights_copy)
    ids = torch.randint(3, len(tiny_tok), (2, 7))
    for layer, basis in bases.items():
        # what reaches the residual stream: the MLP output (GPT-2: minus the untouched bias),
        # or, in Gemma-3, the post-feedforward norm's output
        if kind == "gemma3":
            written = _mlp_writes(model, spec.mlp_out_norm_tmp.format(layer), ids)
        else:
            written = _mlp_writes(model, spec.mlp_out_tmp.format(layer), ids)
            bias = getattr(model.get_submodule(spec.mlp_out_tmp.format(layer)), "bias", None)
            if bias is not None:
                written = written - bias
        assert (written.double() @ basis).abs().max() < 1e-4 * written.abs().max()
    _restore_like_easyedit(model, weights_copy)
    assert_same_state(model, before)


def test_profs_subspace_matches_an_independent_computation(tiny_tok, pairs, tmp_path):
    from surgery_editor.data import load_probe_texts
    from surgery_editor.methods.ProFS import compute_subspaces

    model = make_tiny("llama", vocab=len(tiny_tok))
    texts = load_probe_texts(pairs)
    n = len(texts.texts) // 2
    # block 1's output = hidden_states[2] (not the last block, so no final norm)
    feats = acts.pooled_hidden_states(model, tiny_tok, texts.texts, layer=2, batch_size=8, show_progress=False)
    expected = toxic_subspace(feats[:n], feats[n:], rank=2, centering=True)
    got = compute_subspaces(model, tiny_tok, _profs(pairs, tmp_path, layers=[1]))[1]
    torch.testing.assert_close(got @ got.T, expected @ expected.T, atol=1e-5, rtol=0)  # same projector


def test_profs_random_control_has_the_same_rank_and_another_span(tiny_tok, pairs, tmp_path):
    from surgery_editor.methods.ProFS import compute_subspaces

    model = make_tiny("llama", vocab=len(tiny_tok))
    toxic = compute_subspaces(model, tiny_tok, _profs(pairs, tmp_path))
    rand = compute_subspaces(model, tiny_tok, _profs(pairs, tmp_path, subspace="random"))
    for layer in (1, 2):
        assert rand[layer].shape == toxic[layer].shape
        torch.testing.assert_close(rand[layer].T @ rand[layer], torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
        assert not torch.allclose(rand[layer] @ rand[layer].T, toxic[layer] @ toxic[layer].T, atol=1e-2)


def test_output_basis_behind_a_norm_gain():
    gen = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(5, 2, generator=gen, dtype=torch.float64))[0]
    gain = torch.rand(5, generator=gen) + 0.5
    q = output_basis(basis, gain)
    y = torch.randn(20, 5, dtype=torch.float64, generator=gen)
    y = y - (y @ q) @ q.T  # orthogonal to span(diag(gain) basis)
    assert ((gain.double() * y) @ basis).abs().max() < 1e-10  # so gain * y has no component in span(basis)


@pytest.mark.parametrize("bad,match", [
    (dict(layers=[]), "layers must list at least one block"),
    (dict(rank=0), "rank must be >= 1"),
    (dict(strength=1.5), "strength must be > 0 and <= 1"),
    (dict(subspace="noise"), "subspace='noise' is not valid; choose one of"),
    (dict(pairs={"path": "x.tsv", "text_field": "t", "label_field": "l"}), "needs positive_column"),
    (dict(rank="2"), "rank must be an integer"),
])
def test_profs_bad_hparams(bad, match, pairs, tmp_path):
    with pytest.raises(ValueError, match=match):
        _profs(pairs, tmp_path, **bad)


def test_profs_bad_layer_and_rank_for_the_model(tiny_tok, pairs, tmp_path):
    model = make_tiny("llama", vocab=len(tiny_tok))
    with pytest.raises(ValueError, match=r"layers \[7\] out of range: this model has blocks 0..2"):
        apply_profs_to_model(model, tiny_tok, [], _profs(pairs, tmp_path, layers=[1, 7]))
    with pytest.raises(ValueError, match="rank 40 exceeds min"):
        apply_profs_to_model(model, tiny_tok, [], _profs(pairs, tmp_path, rank=40))


# ---------------------------------------------------------------------------------------
# steering
# ---------------------------------------------------------------------------------------
def _hidden(model, ids):
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states


def test_steering_vector_is_the_scaled_mean_difference(tiny_tok, pairs, tmp_path):
    from surgery_editor.data import load_probe_texts
    from surgery_editor.methods.steer import steering_vector

    model = make_tiny("llama", vocab=len(tiny_tok))
    texts = load_probe_texts(pairs)
    n = len(texts.texts) // 2
    feats = acts.pooled_hidden_states(model, tiny_tok, texts.texts, layer=2, batch_size=8, show_progress=False)
    expected = -3.0 * (feats[:n].mean(0) - feats[n:].mean(0))
    torch.testing.assert_close(steering_vector(model, tiny_tok, _steer(pairs, tmp_path, layer=1)), expected,
                               atol=1e-5, rtol=1e-5)
    rand = steering_vector(model, tiny_tok, _steer(pairs, tmp_path, layer=1, direction="random"))
    torch.testing.assert_close(rand.norm(), expected.norm(), atol=1e-4, rtol=1e-5)
    assert torch.cosine_similarity(rand, expected, dim=0).abs() < 0.9


def test_steering_adds_the_vector_after_the_block_and_restores_bit_exactly(tiny_tok, pairs, tmp_path):
    from surgery_editor.methods.steer import steering_vector

    model = make_tiny("llama", vocab=len(tiny_tok))
    hp = _steer(pairs, tmp_path, layer=0)
    v = steering_vector(model, tiny_tok, hp)
    ids = torch.randint(3, len(tiny_tok), (2, 6))
    before_hidden = _hidden(model, ids)
    before_state, before_logits = state_copy(model), model(ids).logits.detach()
    _, weights_copy = apply_steer_to_model(model, tiny_tok, [], hp, keep_original_weight=True)
    assert list(weights_copy) == ["model.layers.0.mlp.down_proj.bias"]
    after = _hidden(model, ids)
    torch.testing.assert_close(after[0], before_hidden[0])  # embeddings untouched
    torch.testing.assert_close(after[1] - before_hidden[1], v.expand_as(after[1]), atol=1e-5, rtol=0)
    _restore_like_easyedit(model, weights_copy)
    assert torch.equal(model(ids).logits, before_logits)  # a zero bias: bit-identical outputs
    assert remove_created_bias(model) == 1
    assert_same_state(model, before_state)
    assert set(model.state_dict()) == set(before_state)


def test_steering_at_the_embeddings_of_gemma3(tiny_tok, pairs, tmp_path):
    from surgery_editor.methods.steer import steering_vector

    model = _tiny_gemma3(len(tiny_tok))
    with pytest.raises(ValueError, match="normalises the MLP output .* use layer: -1"):
        apply_steer_to_model(model, tiny_tok, [], _steer(pairs, tmp_path, layer=1))
    hp = _steer(pairs, tmp_path, layer=-1)
    v = steering_vector(model, tiny_tok, hp)
    ids = torch.randint(3, len(tiny_tok), (2, 6))
    before = _hidden(model, ids)[0]
    state = state_copy(model)
    _, weights_copy = apply_steer_to_model(model, tiny_tok, [], hp, return_orig_weights=True)
    assert list(weights_copy) == ["model.embed_tokens.weight"]
    torch.testing.assert_close(_hidden(model, ids)[0] - before, v.expand_as(before), atol=1e-4, rtol=0)
    _restore_like_easyedit(model, weights_copy)
    assert_same_state(model, state)


def test_steering_bad_inputs(tiny_tok, pairs, tmp_path):
    with pytest.raises(ValueError, match="scale must be > 0"):
        _steer(pairs, tmp_path, scale=0)
    with pytest.raises(ValueError, match="direction='up' is not valid"):
        _steer(pairs, tmp_path, direction="up")
    with pytest.raises(ValueError, match="layer must be >= -1"):
        _steer(pairs, tmp_path, layer=-2)
    with pytest.raises(ValueError, match=r"layer 9 out of range: -1 \(embeddings\) .. 2"):
        apply_steer_to_model(make_tiny("llama", vocab=len(tiny_tok)), tiny_tok, [], _steer(pairs, tmp_path, layer=9))
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        apply_steer_to_model(make_tiny("llama", vocab=len(tiny_tok)), tiny_tok, [],
                             _steer({**pairs, "path": str(tmp_path / "nope.tsv")}, tmp_path))


# ---------------------------------------------------------------------------------------
# safety prompt
# ---------------------------------------------------------------------------------------
def test_input_transform_forms():
    t = InputTransform(system="SYS", prefix="PRE ", suffix=" REM")
    assert (t.instruction("q"), t.continuation("q"), t.user_turn("q")) == ("PRE q REM", "PRE q", "q REM")


def test_safety_prompt_rewrites_requests_in_place_and_changes_no_weight(tiny_llama, tiny_tok):
    hp = SafetyPromptHyperParams(alg_name="prompt", model_name="tiny", system_prompt="Be safe.",
                                 reminder=" Remember.")
    req = {"prompt": "how to hurt", "general_prompt": ["a", "", "c", "d"], "target_new": "no"}
    before = state_copy(tiny_llama)
    model, weights_copy = apply_safety_prompt_to_model(tiny_llama, tiny_tok, [req], hp, return_orig_weights=True)
    assert model is tiny_llama and weights_copy == {}
    assert req["prompt"] == "Be safe.\n\nhow to hurt Remember."
    assert req["general_prompt"] == ["Be safe.\n\na Remember.", "", "Be safe.\n\nc Remember.", "Be safe.\n\nd Remember."]
    assert_same_state(tiny_llama, before)
    transform = ALGORITHMS["prompt"].input_transform(hp)
    assert transform.continuation("x") == "Be safe.\n\nx" and transform.system == "Be safe."


def test_safety_prompt_bad_inputs():
    with pytest.raises(ValueError, match="all empty"):
        SafetyPromptHyperParams(alg_name="prompt", model_name="t", system_prompt="", raw_prefix="", reminder=" ")
    with pytest.raises(ValueError, match=r"raw_prefix: only the placeholder \{system_prompt\}"):
        SafetyPromptHyperParams(alg_name="prompt", model_name="t", raw_prefix="{oops} ")


def test_restore_copies_live_in_host_memory(tiny_tok):
    """weights_copy holds its tensors on the CPU (a GPU model's accelerator memory stays free
    during the evaluation); bytes_on_device counts only copies on an accelerator model's device."""
    from surgery_editor.methods._common import bytes_on_device, originals

    model = make_tiny("llama", vocab=len(tiny_tok))
    saved = originals(model, ["model.layers.0.mlp.down_proj.weight"])
    assert saved["model.layers.0.mlp.down_proj.weight"].device.type == "cpu"
    assert saved["model.layers.0.mlp.down_proj.weight"].data_ptr() != \
        model.model.layers[0].mlp.down_proj.weight.data_ptr()
    assert bytes_on_device(model, saved) == 0
    with torch.device("meta"):
        meta = torch.nn.Linear(4, 3)
    on_meta = {"weight": torch.empty(3, 4, device="meta")}
    assert bytes_on_device(meta, on_meta) == 3 * 4 * 4 and bytes_on_device(meta, saved) == 0


def test_a_former_control_name_runs_and_reads_as_the_name_now():
    from benchmarks.methods import get_method_class, method_config_nodes
    from surgery_editor.methods import ALIASES, canonical_name

    assert ALIASES["random"] == "ModelSurgery_random" and canonical_name("random") == "ModelSurgery_random"
    assert canonical_name("ProFS_random") == "ProFS_random"
    assert get_method_class("random") is get_method_class("ModelSurgery_random")
    nodes = method_config_nodes()
    assert nodes["random"] == nodes["ModelSurgery_random"] and nodes["random"]["method"]["name"] == "ModelSurgery_random"
    assert get_algorithm("ModelSurgery").controls == {"ModelSurgery_random": {"edit_direction": "random"}}
