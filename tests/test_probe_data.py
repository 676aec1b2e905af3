"""Probe data loading, activations, probe training and the on-disk caches."""

import pytest
import torch

from surgery_editor import activations as acts
from surgery_editor.data import load_probe_texts
from surgery_editor.methods.ModelSurgery.probe import train_probe
from surgery_editor.methods.ModelSurgery.surgery import compute_patch, train_behaviour_probe

from conftest import DATA_DIR, make_tiny


def test_pair_mode(probe_tsv):
    data = load_probe_texts({"path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral1",
                             "limit": 5})
    assert len(data.texts) == 10 and data.labels.tolist() == [1] * 5 + [0] * 5


def test_row_mode_and_positive_values(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"t": "you idiot", "y": "hate"}\n{"t": "nice day", "y": "neutral"}\n{"t": "", "y": "hate"}\n')
    data = load_probe_texts({"path": str(path), "text_field": "t", "label_field": "y", "positive_values": ["hate"],
                             "shuffle": False})
    assert data.texts == ["you idiot", "nice day"] and data.labels.tolist() == [1, 0]


def test_relative_path_uses_data_dir(tmp_path, probe_tsv):
    cfg = {"path": probe_tsv.name, "positive_column": "toxic", "negative_column": "neutral1"}
    assert len(load_probe_texts(cfg, data_dir=str(probe_tsv.parent)).texts) == 60


def test_missing_file_names_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'nope\.tsv' not found \(tried nope\.tsv and .*nope\.tsv\)"):
        load_probe_texts({"path": "nope.tsv", "positive_column": "a", "negative_column": "b"}, data_dir=str(tmp_path))


def test_missing_column_lists_available(probe_tsv):
    with pytest.raises(KeyError, match=r"\['neutral9'\] not found; available columns: \['toxic', 'neutral1'\]"):
        load_probe_texts({"path": str(probe_tsv), "positive_column": "toxic", "negative_column": "neutral9"})


def test_one_class_only(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\nyou idiot,1\nstupid,1\n")
    with pytest.raises(ValueError, match=r"rows\.csv: probe data has only class 1"):
        load_probe_texts({"path": str(path), "text_field": "text", "label_field": "label"})


def test_empty_data(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\n")
    with pytest.raises(ValueError, match="probe data is empty"):
        load_probe_texts({"path": str(path), "text_field": "text", "label_field": "label"})


def test_bad_config_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colum'\]"):
        load_probe_texts({"path": "x", "colum": "a"})
    with pytest.raises(ValueError, match="either text_field \\+ label_field"):
        load_probe_texts({"path": "x"})


def test_all_padding_texts_rejected(tiny_llama, tiny_tok):
    with pytest.raises(ValueError, match=r"2 probe text\(s\) have no tokens"):
        acts.pooled_hidden_states(tiny_llama, tiny_tok, ["", "   ", "nice day"])


def test_mean_pooling_ignores_padding(tiny_llama, tiny_tok):
    batched = acts.pooled_hidden_states(tiny_llama, tiny_tok, ["nice day", "you are really a good friend"])
    single = acts.pooled_hidden_states(tiny_llama, tiny_tok, ["nice day"])
    torch.testing.assert_close(batched[0], single[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        enc = tiny_tok(["nice day"], return_tensors="pt")
        hidden = tiny_llama(**enc, output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(single[0], hidden.mean(0), rtol=1e-4, atol=1e-5)


def test_rms_mean_pooling(tiny_llama, tiny_tok):
    feats = acts.pooled_hidden_states(tiny_llama, tiny_tok, ["nice day"], layer=1, pooling="rms_mean")
    with torch.no_grad():
        h = tiny_llama(**tiny_tok(["nice day"], return_tensors="pt"), output_hidden_states=True).hidden_states[1][0]
    expected = (h / h.square().mean(-1, keepdim=True).add(1e-6).sqrt()).mean(0)
    torch.testing.assert_close(feats[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "gpt2"])
def test_last_layer_read_without_all_hidden_states(kind, tiny_tok):
    """Layer -1 (and its positive index) is read as last_hidden_state: the same numbers as the
    last entry of hidden_states, the final norm applied."""
    model = make_tiny(kind, vocab=len(tiny_tok))
    texts = ["you are stupid", "a good friend and the sun is good"]
    feats = acts.pooled_hidden_states(model, tiny_tok, texts, layer=-1, show_progress=False)
    positive = acts.pooled_hidden_states(model, tiny_tok, texts, layer=3, show_progress=False)
    with torch.no_grad():
        for i, text in enumerate(texts):
            hidden = model(**tiny_tok([text], return_tensors="pt"), output_hidden_states=True).hidden_states
            assert len(hidden) == 4
            torch.testing.assert_close(feats[i], hidden[-1][0].mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(feats, positive)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "gpt2"])
def test_block_outputs_read_by_hooks_match_hidden_states(kind, tiny_tok):
    """pooled_block_outputs reads each block's output (and, for -1, the first block's input) by
    hooks: the same numbers as hidden_states[layer + 1], hidden_states[0] for -1."""
    model = make_tiny(kind, vocab=len(tiny_tok))
    texts = ["you are stupid", "a good friend and the sun is good", "nice day"]
    feats = acts.pooled_block_outputs(model, tiny_tok, texts, [-1, 0, 1], batch_size=2, show_progress=False)
    with torch.no_grad():
        for i, text in enumerate(texts):
            hidden = model(**tiny_tok([text], return_tensors="pt"), output_hidden_states=True).hidden_states
            for layer in (-1, 0, 1):
                torch.testing.assert_close(feats[layer][i], hidden[layer + 1][0].mean(0), rtol=1e-5, atol=1e-6)


def test_probe_layer_out_of_range(tiny_llama, tiny_tok):
    with pytest.raises(ValueError, match=r"probe_layer=9 is out of range.*4 hidden states"):
        acts.pooled_hidden_states(tiny_llama, tiny_tok, ["nice day"], layer=9)


def test_probe_learns_separable_features_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=gen)
    y = (x[:, 0] > 0).long()
    x[:, 0] *= 5
    p1 = train_probe(x, y, lr=1e-2, epochs=20, seed=3)
    p2 = train_probe(x, y, lr=1e-2, epochs=20, seed=3)
    assert p1.val_accuracy > 0.9 and p1.n_val == 40 and p1.n_train == 360
    assert torch.equal(p1.weight, p2.weight)
    assert torch.equal(p1.direction("toxic_row"), p1.weight[1])
    assert torch.equal(p1.direction("row_difference"), p1.weight[1] - p1.weight[0])


def test_probe_one_class_error():
    with pytest.raises(ValueError, match="needs both classes"):
        train_probe(torch.randn(10, 4), torch.ones(10))


def test_caches_skip_forward_passes_for_new_k_and_alpha(tiny_llama, tiny_tok, hp_factory, monkeypatch):
    calls = []
    real = acts.pooled_hidden_states
    monkeypatch.setattr(acts, "pooled_hidden_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    p1 = train_behaviour_probe(tiny_llama, tiny_tok, hp_factory(top_k=5))
    assert len(calls) == 1
    p2 = train_behaviour_probe(tiny_llama, tiny_tok, hp_factory(top_k=9, alpha=3.0))
    assert len(calls) == 1 and torch.equal(p1.weight, p2.weight)
    patch = compute_patch(tiny_llama, tiny_tok, hp_factory(top_k=9, alpha=3.0))
    assert len(calls) == 1 and patch.num_rows == 9
    train_behaviour_probe(tiny_llama, tiny_tok, hp_factory(probe_layer=1))  # other layer: recomputed
    assert len(calls) == 2


def test_activation_cache_keyed_by_weights(tiny_llama, tiny_tok, hp_factory, monkeypatch):
    calls = []
    real = acts.pooled_hidden_states
    monkeypatch.setattr(acts, "pooled_hidden_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    hp = hp_factory()
    data = load_probe_texts(hp.probe_data)
    kw = dict(layer=-1, pooling="mean", max_length=32, batch_size=8, cache_dir=hp.cache_dir)
    acts.cached_pooled_hidden_states(tiny_llama, tiny_tok, data.texts, data.content_hash(), **kw)
    acts.cached_pooled_hidden_states(tiny_llama, tiny_tok, data.texts, data.content_hash(), **kw)
    assert len(calls) == 1
    with torch.no_grad():
        tiny_llama.model.layers[0].mlp.gate_proj.weight[0, 0] += 1.0
    acts.cached_pooled_hidden_states(tiny_llama, tiny_tok, data.texts, data.content_hash(), **kw)
    assert len(calls) == 2  # an edited model never reuses the unedited model's activations


@pytest.mark.skipif(not (DATA_DIR / "paradetox" / "paradetox.tsv").is_file(), reason="../shared/data not present")
def test_offline_probe_sets_load():
    para = load_probe_texts({"path": "paradetox/paradetox.tsv", "positive_column": "toxic",
                             "negative_column": "neutral1", "limit": 50}, data_dir=str(DATA_DIR))
    tg = load_probe_texts({"path": "toxigen/toxigen_annotated_train_8960.csv", "text_field": "text",
                           "label_field": "label", "positive_values": ["hate"], "limit": 300}, data_dir=str(DATA_DIR))
    jbb = load_probe_texts({"path": "jailbreakbench/jbb_judged_responses.jsonl", "text_field": "response",
                            "label_field": "jailbroken", "limit": 300}, data_dir=str(DATA_DIR))
    for data in (para, tg, jbb):
        assert set(data.labels.tolist()) == {0, 1}
    assert len(para.texts) == 100


def test_weights_fingerprint_sees_any_element_of_any_row():
    from surgery_editor.infra.cache import weights_fingerprint

    model = make_tiny("llama", seed=3)
    base = weights_fingerprint(model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert weights_fingerprint(model) == base  # same weights, other thread count: same key
    finally:
        torch.set_num_threads(threads)
    gate = model.model.layers[1].mlp.gate_proj.weight
    for row, col in [(0, 0), (7, 5), (gate.shape[0] - 1, gate.shape[1] - 1)]:
        old = gate.data[row, col].clone()
        gate.data[row, col] += 1e-3  # through .data: invisible to the tensor's version counter
        assert weights_fingerprint(model) != base, (row, col)
        gate.data[row, col] = old
        assert weights_fingerprint(model) == base
    norm = model.model.norm.weight
    norm.data[3] += 1e-6
    assert weights_fingerprint(model) != base


def test_weights_fingerprint_of_a_bf16_model_reads_blocks_of_rows(monkeypatch):
    """A bf16 matrix is projected a few rows at a time (no float32 copy of the whole matrix):
    a change in any block, the last partial one included, still changes the fingerprint."""
    from surgery_editor.infra import cache

    model = make_tiny("llama", seed=3, dtype=torch.bfloat16)
    whole = cache.weights_fingerprint(model)
    monkeypatch.setattr(cache, "FINGERPRINT_CHUNK", 5 * 32)  # 5 rows of 32 per block; 48 gate rows
    base = cache.weights_fingerprint(model)
    assert cache.weights_fingerprint(model) == base
    gate = model.model.layers[1].mlp.gate_proj.weight
    for row in (0, 4, 5, gate.shape[0] - 1):
        old = gate.data[row, 3].clone()
        gate.data[row, 3] += 0.25
        assert cache.weights_fingerprint(model) != base, row
        gate.data[row, 3] = old
    assert cache.weights_fingerprint(model) == base
    monkeypatch.setattr(cache, "FINGERPRINT_CHUNK", 1 << 22)
    assert cache.weights_fingerprint(model) == whole
