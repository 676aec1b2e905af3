"""ModelSurgery's rows chosen by what the neurons do (activation_auroc, activation_difference)
or write (writes), and the shared per-neuron statistics."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import NEUTRAL, TOXIC, make_tiny
from surgery_editor import apply_model_surgery_to_model
from surgery_editor.activations import pooled_module_outputs
from surgery_editor.methods._neurons import auroc_per_neuron, average_ranks, mean_difference_per_neuron
from surgery_editor.methods.ModelSurgery.surgery import build_patch, compute_patch, neuron_statistics

TEXTS = TOXIC * 3 + NEUTRAL * 3
LABELS = [1] * (len(TOXIC) * 3) + [0] * (len(NEUTRAL) * 3)


def test_average_ranks_share_ties():
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 2.0], [2.0, 1.0]])
    expected = torch.tensor([[3.5, 2.0], [1.0, 2.0], [3.5, 4.0], [2.0, 2.0]], dtype=torch.float64)
    assert torch.equal(average_ranks(x), expected)


def test_auroc_and_mean_difference_per_neuron_match_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 7, generator=gen).round(decimals=1)  # ties
    labels = [1] * 15 + [0] * 25
    expected = [roc_auc_score(labels, x[:, j].numpy()) for j in range(7)]
    torch.testing.assert_close(auroc_per_neuron(x, labels), torch.tensor(expected, dtype=torch.float64))
    diff = x[:15].double().mean(0) - x[15:].double().mean(0)
    torch.testing.assert_close(mean_difference_per_neuron(x, labels), diff)
    with pytest.raises(ValueError, match="both classes"):
        auroc_per_neuron(x, [1] * 40)
    with pytest.raises(ValueError, match="both classes"):
        mean_difference_per_neuron(x, [0] * 40)


@pytest.mark.parametrize("scoring", ["activation_auroc", "activation_difference"])
def test_neuron_statistics_score_each_gate_neuron_on_probe_data(tiny_tok, hp_factory, scoring):
    model = make_tiny("llama", vocab=len(tiny_tok))
    hp = hp_factory(scoring=scoring)
    stats = neuron_statistics(model, tiny_tok, hp, [0, 2])
    gates = {layer: model.model.layers[layer].mlp.gate_proj for layer in (0, 2)}
    responses = pooled_module_outputs(model, tiny_tok, TEXTS, {str(l): m for l, m in gates.items()},
                                      pooling="max", show_progress=False)
    for layer in (0, 2):
        r = responses[str(layer)]
        expected = (auroc_per_neuron(r, LABELS) - 0.5 if scoring == "activation_auroc"
                    else mean_difference_per_neuron(r, LABELS))
        torch.testing.assert_close(stats[layer], expected)
        assert stats[layer].shape == (gates[layer].out_features,)


@pytest.mark.parametrize("select, sign", [("most_opposed", -1.0), ("most_aligned", 1.0)])
def test_activation_scores_select_rows_and_the_update_stays_alpha_probe(tiny_llama, hp_factory, select, sign):
    hp = hp_factory(scoring="activation_auroc", select=select, top_k=6)
    n = tiny_llama.model.layers[0].mlp.gate_proj.out_features
    gen = torch.Generator().manual_seed(1)
    stats = {layer: torch.rand(n, generator=gen, dtype=torch.float64) - 0.5 for layer in range(3)}
    w = torch.randn(tiny_llama.config.hidden_size, generator=gen)
    patch = build_patch(tiny_llama, w, hp, neuron_stats=stats)
    flat = torch.cat([sign * stats[l] for l in range(3)])
    top = set(torch.topk(flat, 6).indices.tolist())
    assert {layer * n + row for layer, row in patch.selected()} == top
    for edit in patch.edits:
        torch.testing.assert_close(edit.edited.float(), edit.original.float() + 1.08 * w.unsqueeze(0))
    with pytest.raises(ValueError, match="neuron statistics"):
        build_patch(tiny_llama, w, hp)


def test_writes_scores_down_columns_against_the_residual_direction(tiny_llama, hp_factory):
    hp = hp_factory(scoring="writes", top_k=5, probe_layer=1)  # a middle state: no final-norm gain
    w = torch.randn(tiny_llama.config.hidden_size, generator=torch.Generator().manual_seed(2))
    patch = build_patch(tiny_llama, w, hp)
    cos = torch.cat([torch.nn.functional.cosine_similarity(
        tiny_llama.model.layers[l].mlp.down_proj.weight.t(), w.unsqueeze(0), dim=1) for l in range(3)])
    n = tiny_llama.model.layers[0].mlp.gate_proj.out_features
    assert {layer * n + row for layer, row in patch.selected()} == set(torch.topk(-cos, 5).indices.tolist())


def test_activation_selection_end_to_end_and_restore(tiny_tok, hp_factory):
    model = make_tiny("llama", vocab=len(tiny_tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = hp_factory(scoring="activation_difference", top_k=8, probe_epochs=1)
    model, weights = apply_model_surgery_to_model(model, tiny_tok, [], hp, return_orig_weights=True)
    patch = compute_patch(model, tiny_tok, hp)
    assert patch.num_rows == 8 and patch.metadata["hparams"]["scoring"] == "activation_difference"
    with torch.no_grad():
        for name, value in weights.items():
            model.get_parameter(name).copy_(value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("overrides, message", [
    ({"scoring": "activation_auroc", "probe_source": "request"}, "needs probe_source: dataset"),
    ({"scoring": "activations"}, "scoring='activations' is not valid"),
    ({"neuron_pooling": "last"}, "neuron_pooling='last' is not valid"),
])
def test_neuron_selection_bad_settings(hp_factory, overrides, message):
    with pytest.raises(ValueError, match=message):
        hp_factory(**overrides)


def test_statistics_are_cached_per_statistic_and_not_the_responses(tiny_tok, tmp_path, monkeypatch):
    import numpy as np

    from surgery_editor.data import LabelledTexts
    from surgery_editor.methods import _neurons

    model = make_tiny("llama", vocab=len(tiny_tok))
    texts = LabelledTexts(texts=TEXTS, labels=np.array(LABELS), source="test")
    modules = {"gate0": model.model.layers[0].mlp.gate_proj, "a_gate1": model.model.layers[1].mlp.gate_proj}
    kw = dict(pooling="max", max_length=32, batch_size=4, cache_dir=str(tmp_path))
    auroc = _neurons.cached_neuron_statistics(model, tiny_tok, texts, modules, statistic="auroc", **kw)
    direct = pooled_module_outputs(model, tiny_tok, TEXTS, modules, pooling="max", show_progress=False)["gate0"]
    torch.testing.assert_close(auroc["gate0"], auroc_per_neuron(direct, LABELS))
    diff = _neurons.cached_neuron_statistics(model, tiny_tok, texts, modules, statistic="mean_difference", **kw)
    torch.testing.assert_close(diff["gate0"], mean_difference_per_neuron(direct, LABELS))
    stored = sorted(p.stat().st_size for p in (tmp_path / "neuron_statistics").iterdir())
    assert len(stored) == 2 and stored[-1] < direct.numel() * 4  # smaller than the responses

    def no_forward(*args, **kwargs):
        raise AssertionError("forward pass despite a cache entry")

    monkeypatch.setattr(_neurons, "pooled_module_outputs", no_forward)
    again = _neurons.cached_neuron_statistics(model, tiny_tok, texts, modules, statistic="auroc", **kw)
    assert torch.equal(again["gate0"], auroc["gate0"])
    assert list(again) == ["gate0", "a_gate1"]  # the modules' order, not the file's sorted one
    flipped = LabelledTexts(texts=TEXTS, labels=1 - np.array(LABELS), source="test")
    with pytest.raises(AssertionError, match="forward pass"):  # other labels: another entry
        _neurons.cached_neuron_statistics(model, tiny_tok, flipped, modules, statistic="auroc", **kw)
    with pytest.raises(ValueError, match=r"statistic='median' is not valid; choose one of \['auroc', "
                                         r"'mean_difference'\]"):
        _neurons.cached_neuron_statistics(model, tiny_tok, texts, modules, statistic="median", **kw)
