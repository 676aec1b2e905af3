"""ModelSurgery's layer-wise variant and the options the efficacy search added: last-token
pooling, MLP-input features, per-layer budgets, and RTP-style probe data (nested fields,
query, label threshold, prefix). Formulas checked on tiny random models built here."""

import json

import pytest
import torch

from surgery_editor import ModelSurgeryHyperParams
from surgery_editor import architectures as arch
from surgery_editor.activations import _pool, pooled_block_outputs
from surgery_editor.data import load_probe_texts
from surgery_editor.methods.ModelSurgery.surgery import build_patch, compute_patch, layer_directions, select_per_layer

from conftest import NEUTRAL, TOXIC, assert_same_state, make_tiny, state_copy


def test_last_pooling_takes_last_real_token():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = _pool(h, mask, "last")
    torch.testing.assert_close(out, torch.stack([h[0, 1], h[1, 3]]))


def test_mlp_in_site_is_the_gate_input(tiny_tok):
    """With attention switched off (o_proj = 0), a layer-0 MLP reads gamma * e / rms(e) of the
    token embeddings: the captured feature must be that, token-mean pooled."""
    model = make_tiny("llama", vocab=len(tiny_tok), layers=2)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
    texts = ["you are stupid", "the sun is good today"]
    feats = pooled_block_outputs(model, tiny_tok, texts, [0, 1], pooling="mean", site="mlp_in", show_progress=False)
    norm = model.model.layers[0].post_attention_layernorm
    for i, text in enumerate(texts):
        ids = tiny_tok(text, return_tensors="pt")["input_ids"]
        e = model.model.embed_tokens(ids)[0].float()
        u = norm.weight * e * torch.rsqrt(e.square().mean(-1, keepdim=True) + norm.variance_epsilon)
        torch.testing.assert_close(feats[0][i], u.mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(feats[0], feats[1])  # layer 1 reads its own input


def test_site_and_layers_checked(tiny_tok, tiny_llama):
    with pytest.raises(ValueError, match="site='nowhere' is not valid"):
        pooled_block_outputs(tiny_llama, tiny_tok, ["you"], [0], site="nowhere")
    with pytest.raises(ValueError, match="reads blocks 0..n-1"):
        pooled_block_outputs(tiny_llama, tiny_tok, ["you"], [-1], site="mlp_in")


def test_select_per_layer_splits_budget():
    scores = {0: torch.tensor([0.1, 0.9, 0.5]), 2: torch.tensor([0.3, 0.2, 0.8, 0.7]), 5: torch.tensor([0.4, 0.6])}
    picked = select_per_layer(scores, 5)  # 2 + 2 + 1
    assert {l: p.tolist() for l, p in picked.items()} == {0: [1, 2], 2: [2, 3], 5: [1]}


@pytest.fixture
def lw_factory(hp_factory):
    def make(**overrides):
        return hp_factory(**{"probe_mode": "layerwise", "step": "row_norm", **overrides})
    return make


def test_layer_directions_are_mean_differences_at_each_mlp_input(tiny_tok, lw_factory):
    model = make_tiny("llama", vocab=len(tiny_tok))
    hp = lw_factory()
    directions, _ = layer_directions(model, tiny_tok, hp, [0, 2])
    feats = pooled_block_outputs(model, tiny_tok, TOXIC * 3 + NEUTRAL * 3, [0, 2], site="mlp_in", show_progress=False)
    for layer in (0, 2):
        expected = feats[layer][:30].mean(0) - feats[layer][30:].mean(0)
        torch.testing.assert_close(directions[layer], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(directions[0] / directions[0].norm(), directions[2] / directions[2].norm())


@pytest.mark.parametrize("budget", ["global", "per_layer"])
def test_layerwise_patch_scores_and_moves_each_layer_along_its_own_direction(tiny_llama, lw_factory, budget):
    spec = arch.resolve_spec(tiny_llama)
    gen = torch.Generator().manual_seed(3)
    directions = {l: torch.randn(32, generator=gen) for l in (0, 1, 2)}
    rows = {l: arch.gate_rows(tiny_llama.get_parameter(arch.gate_param_name(spec, l)), spec).detach().clone()
            for l in directions}
    before = state_copy(tiny_llama)
    hp = lw_factory(top_k=12, alpha=0.4, budget=budget)
    patch = build_patch(tiny_llama, None, hp, directions=directions)
    scored = sorted(((-float(torch.nn.functional.cosine_similarity(rows[l][r], directions[l], dim=0)), l, r)
                     for l in rows for r in range(rows[l].shape[0])), reverse=True)
    if budget == "global":
        expected = sorted((l, r) for _, l, r in scored[:12])
    else:
        expected = sorted((l, r) for l in rows for _, l2, r in
                          [x for x in scored if x[1] == l][:4] if l2 == l)
    assert patch.selected() == expected
    patch.apply(tiny_llama)
    chosen = set(expected)
    for l, mat in rows.items():
        now = arch.gate_rows(tiny_llama.get_parameter(arch.gate_param_name(spec, l)), spec)
        for r in range(mat.shape[0]):
            step = 0.4 * mat[r].norm() * directions[l] / directions[l].norm()
            torch.testing.assert_close(now[r], mat[r] + step if (l, r) in chosen else mat[r], rtol=0, atol=1e-6)
    patch.revert(tiny_llama)
    assert_same_state(tiny_llama, before)


def test_layerwise_random_control_same_rows_same_norms(tiny_llama, lw_factory):
    directions = {l: torch.randn(32) * (l + 1) for l in (0, 1)}
    real = build_patch(tiny_llama, None, lw_factory(top_k=6, step="absolute"), directions=directions)
    rand = build_patch(tiny_llama, None, lw_factory(top_k=6, step="absolute", edit_direction="random"),
                       directions=directions)
    assert real.selected() == rand.selected()
    torch.testing.assert_close(rand.direction.norm(dim=1), real.direction.norm(dim=1))
    assert rand.direction.shape == (2, 32)
    for a, b in zip(real.direction, rand.direction):
        assert abs(float(torch.nn.functional.cosine_similarity(a, b, dim=0))) < 0.9


def test_layerwise_end_to_end_and_restore(tiny_tok, lw_factory):
    from surgery_editor import apply_model_surgery_to_model

    model = make_tiny("llama", vocab=len(tiny_tok))
    before = state_copy(model)
    hp = lw_factory(top_k=9, edit_layers=[1, 2], layer_direction="probe", probe_epochs=2)
    model, weights = apply_model_surgery_to_model(model, tiny_tok, [], hp, return_orig_weights=True)
    patch = compute_patch(model, tiny_tok, hp)  # memoised: same patch
    assert {layer for layer, _ in patch.selected()} <= {1, 2}
    assert set(patch.metadata["probe"]["layer_probe_accuracy"]) == {1, 2}
    with torch.no_grad():
        for name, value in weights.items():
            model.get_parameter(name).copy_(value)
    assert_same_state(model, before)


@pytest.mark.parametrize("overrides, message", [
    ({"scoring": "norm_aware"}, "does not apply to probe_mode=layerwise"),
    ({"probe_source": "request"}, "needs probe_source: dataset"),
    ({"budget": "each"}, "budget='each' is not valid"),
    ({"layer_direction": "pca"}, "layer_direction='pca' is not valid"),
])
def test_layerwise_bad_settings(lw_factory, overrides, message):
    with pytest.raises(ValueError, match=message):
        lw_factory(**overrides)


# ---- probe data: nested JSON, query, threshold, prefix ------------------------------------
@pytest.fixture
def rtp_like(tmp_path):
    rows = [
        {"prompt": {"text": "you are", "toxicity": 0.1}, "continuation": {"text": " stupid", "toxicity": 0.9}},
        {"prompt": {"text": "the sun", "toxicity": 0.2}, "continuation": {"text": " is good", "toxicity": 0.05}},
        {"prompt": {"text": "i hate", "toxicity": 0.8}, "continuation": {"text": " you idiot", "toxicity": 0.95}},
        {"prompt": {"text": "we love", "toxicity": 0.3}, "continuation": {"text": " the cat", "toxicity": 0.5}},
    ]
    path = tmp_path / "rtp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_nested_fields_query_threshold_prefix(rtp_like):
    data = load_probe_texts({"path": str(rtp_like), "prefix_field": "prompt.text", "text_field": "continuation.text",
                             "label_field": "continuation.toxicity", "label_threshold": 0.5,
                             "query": "`prompt.toxicity` < 0.5", "shuffle": False})
    assert data.texts == ["you are stupid", "the sun is good", "we love the cat"]
    assert data.labels.tolist() == [1, 0, 1]  # 0.5 counts as class 1 (at or above)


@pytest.mark.parametrize("extra, message", [
    ({"query": "`prompt.toxicity` <<< 1"}, "query '`prompt.toxicity` <<< 1' failed"),
    ({"label_field": "prompt.text"}, "needs numeric labels"),
    ({"query": "`prompt.toxicity` > 0.99"}, "empty"),
])
def test_probe_data_query_and_threshold_errors(rtp_like, extra, message):
    cfg = {"path": str(rtp_like), "text_field": "continuation.text", "label_field": "continuation.toxicity",
           "label_threshold": 0.5, **extra}
    with pytest.raises(ValueError, match=message):
        load_probe_texts(cfg)


def test_prefix_and_threshold_refused_for_pairs(probe_tsv):
    with pytest.raises(ValueError, match="belong to labelled rows"):
        load_probe_texts({"path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral1",
                          "label_threshold": 0.5})


def test_hparams_accept_last_pooling(hp_factory):
    assert isinstance(hp_factory(probe_pooling="last"), ModelSurgeryHyperParams)
