"""The method's formulas on tiny random models: scoring, global top-K, update, controls."""

import pytest
import torch

from surgery_editor import architectures as arch
from surgery_editor.methods.ModelSurgery.surgery import build_patch, edited_rows, score_rows, select_top_k

from conftest import make_tiny, state_copy


def _rows(model, kind="llama"):
    spec = arch.resolve_spec(model)
    n = arch.num_layers(model)
    return spec, {l: arch.gate_rows(model.get_parameter(arch.gate_param_name(spec, l)), spec).detach().clone()
                  for l in range(n)}


def _brute_force_top_k(rows, w, k, sign=-1.0):
    scored = []
    for layer, mat in rows.items():
        for r in range(mat.shape[0]):
            cos = torch.dot(mat[r], w) / (mat[r].norm() * w.norm())
            scored.append((sign * float(cos), layer, r))
    scored.sort(reverse=True)
    return sorted((l, r) for _, l, r in scored[:k])


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "gpt2"])
def test_paper_recipe_selects_global_top_k_and_adds_alpha_w(kind, hp_factory):
    model = make_tiny(kind)
    spec, rows = _rows(model)
    before = state_copy(model)
    w = torch.randn(32, generator=torch.Generator().manual_seed(1))
    hp = hp_factory(top_k=17, alpha=0.7)
    patch = build_patch(model, w, hp)
    # selection: exactly the global top-K of -cos(row, w), not per layer
    assert patch.selected() == _brute_force_top_k(rows, w, 17)
    assert patch.num_rows == 17
    patch.apply(model)
    selected = set(patch.selected())
    for layer, mat in rows.items():
        now = arch.gate_rows(model.get_parameter(arch.gate_param_name(spec, layer)), spec)
        for r in range(mat.shape[0]):
            expected = mat[r] + 0.7 * w if (layer, r) in selected else mat[r]
            torch.testing.assert_close(now[r], expected, rtol=0, atol=1e-6)
    gate_names = {arch.gate_param_name(spec, l) for l in rows}
    for name, value in model.state_dict().items():
        if name not in gate_names:
            assert torch.equal(value, before[name]), f"{name} changed"


def test_top_k_fraction_and_most_aligned(tiny_llama, hp_factory):
    spec, rows = _rows(tiny_llama)
    w = torch.randn(32)
    total = sum(m.shape[0] for m in rows.values())
    patch = build_patch(tiny_llama, w, hp_factory(top_k=None, top_k_fraction=0.1, select="most_aligned"))
    assert patch.num_rows == round(0.1 * total)
    assert patch.selected() == _brute_force_top_k(rows, w, round(0.1 * total), sign=1.0)


def test_edit_layers_restricts_candidates(tiny_llama, hp_factory):
    patch = build_patch(tiny_llama, torch.randn(32), hp_factory(top_k=20, edit_layers=[1]))
    assert {l for l, _ in patch.selected()} == {1}
    with pytest.raises(ValueError, match="edit_layers \\[7\\] out of range"):
        build_patch(tiny_llama, torch.randn(32), hp_factory(edit_layers=[7]))


def test_select_top_k_spans_layers():
    scores = {0: torch.tensor([0.1, 0.9, 0.3]), 2: torch.tensor([0.8, 0.2]), 5: torch.tensor([0.95])}
    picked = select_top_k(scores, 3)
    assert {k: v.tolist() for k, v in picked.items()} == {0: [1], 2: [0], 5: [0]}


def test_row_norm_step_formula():
    rows = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    v = torch.tensor([0.0, 10.0])
    new = edited_rows(rows, v, alpha=0.5, step="row_norm")
    torch.testing.assert_close(new, torch.tensor([[3.0, 4.0 + 0.5 * 5.0], [0.0, 2.0 + 0.5 * 2.0]]))


def test_norm_aware_moves_effective_row_and_skips_tiny_gains(tiny_llama, hp_factory):
    spec = arch.resolve_spec(tiny_llama)
    with torch.no_grad():
        tiny_llama.get_submodule("model.layers.0.post_attention_layernorm").weight[3] = 1e-5
    w = torch.randn(32)
    hp = hp_factory(top_k=12, scoring="norm_aware", step="row_norm", alpha=0.3, probe_layer=1, probe_pooling="rms_mean")
    scores = score_rows(tiny_llama, spec, w, [0, 1, 2], hp)
    for layer in (0, 1, 2):
        g = arch.gate_rows(tiny_llama.get_parameter(arch.gate_param_name(spec, layer)), spec).detach()
        gain = arch.norm_gain(tiny_llama, spec, layer)
        expected = -torch.nn.functional.cosine_similarity(g * gain, w.unsqueeze(0), dim=1)
        torch.testing.assert_close(scores[layer], expected)
    patch = build_patch(tiny_llama, w, hp)
    for e in patch.edits:
        gain = arch.norm_gain(tiny_llama, spec, e.layer)
        keep = gain.abs() >= 0.05 * gain.abs().median()
        eff_old, eff_new = e.original * gain, e.edited * gain
        step = (0.3 * eff_old.norm(dim=1, keepdim=True) * w / w.norm())
        torch.testing.assert_close((eff_new - eff_old)[:, keep], step[:, keep], rtol=1e-4, atol=1e-5)
        if e.layer == 0:
            assert torch.equal(e.edited[:, 3], e.original[:, 3])  # tiny gain: left unedited


def test_norm_aware_uses_final_norm_gain_for_last_layer_probe(tiny_llama, hp_factory):
    spec = arch.resolve_spec(tiny_llama)
    w = torch.randn(32)
    hp = hp_factory(scoring="norm_aware")  # probe_layer -1, mean pooling: reads model.norm's output
    scores = score_rows(tiny_llama, spec, w, [0], hp)
    g = tiny_llama.model.layers[0].mlp.gate_proj.weight.detach() * arch.norm_gain(tiny_llama, spec, 0)
    w_res = w * tiny_llama.model.norm.weight.detach()
    torch.testing.assert_close(scores[0], -torch.nn.functional.cosine_similarity(g, w_res.unsqueeze(0), dim=1))


def test_random_control_moves_same_rows_by_same_norm(tiny_llama, hp_factory):
    w = torch.randn(32)
    real = build_patch(tiny_llama, w, hp_factory(top_k=9))
    rand = build_patch(tiny_llama, w, hp_factory(top_k=9, edit_direction="random"))
    assert real.selected() == rand.selected()
    torch.testing.assert_close(rand.direction.norm(), w.norm())
    assert abs(torch.nn.functional.cosine_similarity(rand.direction, w, dim=0)) < 0.9
    for e in rand.edits:
        torch.testing.assert_close(e.edited - e.original, 1.08 * rand.direction.expand_as(e.original), rtol=0, atol=1e-6)
    again = build_patch(tiny_llama, w, hp_factory(top_k=9, edit_direction="random"))
    assert torch.equal(again.direction, rand.direction)  # seeded


def test_negative_alpha_reverses(tiny_llama, hp_factory):
    w = torch.randn(32)
    pos = build_patch(tiny_llama, w, hp_factory(top_k=5, alpha=2.0))
    neg = build_patch(tiny_llama, w, hp_factory(top_k=5, alpha=-2.0))
    for a, b in zip(pos.edits, neg.edits):
        torch.testing.assert_close(a.edited - a.original, -(b.edited - b.original))


def test_gpt2_edits_conv1d_columns(hp_factory):
    model = make_tiny("gpt2")
    patch = build_patch(model, torch.randn(32), hp_factory(top_k=6))
    e = patch.edits[0]
    assert e.rows_are_columns and e.param_name.endswith("mlp.c_fc.weight")
    weight = model.get_parameter(e.param_name)
    assert weight.shape[0] == 32  # Conv1D stores (d_in, d_out): a neuron's weights are a column
    patch.apply(model)
    torch.testing.assert_close(weight.detach()[:, e.rows].t(), e.edited)


def test_model_without_gate_gets_clear_error(hp_factory):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48))
    with pytest.raises(ValueError, match=r"no gated-MLP gate projection found in model_type='bert'.*"
                                         r"model\.layers\.0\.mlp\.gate_proj.*gate_module_tmp"):
        build_patch(model, torch.randn(32), hp_factory())


def test_template_override_selects_other_matrix(tiny_llama, hp_factory):
    patch = build_patch(tiny_llama, torch.randn(32), hp_factory(gate_module_tmp="model.layers.{}.mlp.up_proj"))
    assert all(e.param_name.endswith("mlp.up_proj.weight") for e in patch.edits)


def test_direction_length_checked(tiny_llama, hp_factory):
    with pytest.raises(ValueError, match="gate rows have length 32"):
        build_patch(tiny_llama, torch.randn(31), hp_factory())


def test_top_k_larger_than_candidates(tiny_llama, hp_factory):
    with pytest.raises(ValueError, match="there are 144 candidate rows"):
        build_patch(tiny_llama, torch.randn(32), hp_factory(top_k=1000))


def test_edit_facts_carry_rows_and_the_probes_held_out_accuracy(tiny_llama, tiny_tok, hp_factory):
    from surgery_editor import apply_model_surgery_to_model
    from surgery_editor.methods.ModelSurgery.surgery import train_behaviour_probe

    hp = hp_factory()
    info: dict = {}
    apply_model_surgery_to_model(tiny_llama, tiny_tok, None, hp, copy=True, info=info)
    probe = train_behaviour_probe(tiny_llama, tiny_tok, hp)
    assert info == {"rows_edited": 10, "probe_accuracy": probe.val_accuracy}
    assert 0.0 <= info["probe_accuracy"] <= 1.0
