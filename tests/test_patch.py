"""Patch apply/revert is bit-exact, saves and loads, refuses the wrong model, keeps dtypes."""

import pytest
import torch

from surgery_editor import SurgeryPatch, apply_model_surgery_to_model
from surgery_editor.methods.ModelSurgery.surgery import build_patch, compute_patch

from conftest import assert_same_state, make_tiny, state_copy


def test_revert_from_patch_is_bit_exact(tiny_llama, hp_factory):
    before = state_copy(tiny_llama)
    patch = build_patch(tiny_llama, torch.randn(32), hp_factory(top_k=25, alpha=3.3))
    patch.apply(tiny_llama)
    assert any(not torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())
    patch.revert(tiny_llama)
    assert_same_state(tiny_llama, before)


def test_revert_from_weights_copy_is_bit_exact(tiny_llama, tiny_tok, hp_factory):
    before = state_copy(tiny_llama)
    model, weights_copy = apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp_factory(top_k=25),
                                                       return_orig_weights=True)
    assert model is tiny_llama and weights_copy
    for name in weights_copy:  # names that model.get_parameter resolves
        tiny_llama.get_parameter(name)
    with torch.no_grad():
        for name, value in weights_copy.items():
            tiny_llama.get_parameter(name).copy_(value)
    assert_same_state(tiny_llama, before)


def test_no_weights_copy_unless_asked(tiny_llama, tiny_tok, hp_factory):
    _, weights_copy = apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp_factory())
    assert weights_copy == {}


def test_copy_true_leaves_original_untouched(tiny_llama, tiny_tok, hp_factory):
    before = state_copy(tiny_llama)
    edited, _ = apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp_factory(), copy=True)
    assert edited is not tiny_llama
    assert_same_state(tiny_llama, before)


def test_save_load_round_trip(tmp_path, tiny_llama, hp_factory, tiny_tok):
    patch = compute_patch(tiny_llama, tiny_tok, hp_factory(top_k=11))
    patch.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["patch.json", "patch.safetensors"]
    loaded = SurgeryPatch.load(tmp_path / "p")
    assert loaded.selected() == patch.selected()
    assert loaded.alpha == patch.alpha and loaded.metadata["probe"] == patch.metadata["probe"]
    assert torch.equal(loaded.probe_weight, patch.probe_weight)
    twin = make_tiny("llama")  # same seed: same checkpoint
    before = state_copy(twin)
    loaded.apply(twin)
    patch.apply(tiny_llama)
    assert_same_state(twin, state_copy(tiny_llama))
    loaded.revert(twin)
    assert_same_state(twin, before)


def test_refuses_other_shape(tiny_llama, hp_factory):
    patch = build_patch(tiny_llama, torch.randn(32), hp_factory())
    with pytest.raises(ValueError, match="hidden size 32.*this model has 48"):
        patch.apply(make_tiny("llama", hidden=48))


def test_refuses_other_checkpoint(tiny_llama, hp_factory):
    patch = build_patch(tiny_llama, torch.randn(32), hp_factory())
    with pytest.raises(ValueError, match="another checkpoint"):
        patch.apply(make_tiny("llama", seed=1))


def test_refuses_other_config_and_double_apply(tiny_llama, hp_factory):
    patch = build_patch(tiny_llama, torch.randn(32), hp_factory())
    with pytest.raises(ValueError, match="another model configuration"):
        patch.apply(make_tiny("llama", layers=4))
    patch.apply(tiny_llama)
    with pytest.raises(ValueError, match="already has this patch applied"):
        patch.apply(tiny_llama)


def test_load_rejects_non_patch_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved patch"):
        SurgeryPatch.load(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_fp32_and_writes_model_dtype(dtype, hp_factory):
    model = make_tiny("llama", dtype=dtype)
    before = state_copy(model)
    w = torch.randn(32)
    patch = build_patch(model, w, hp_factory(top_k=13, alpha=0.9))
    for e in patch.edits:
        assert e.edited.dtype == dtype and e.original.dtype == dtype
        torch.testing.assert_close(e.edited, (e.original.float() + 0.9 * w).to(dtype), rtol=0, atol=0)
    patch.apply(model)
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == dtype
    patch.revert(model)
    assert_same_state(model, before)


def test_atomic_writes_leave_no_temporary_and_use_the_umask(tmp_path):
    import os

    from surgery_editor.infra.fileio import atomic_dir, atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a" / "out.md", "hello")
        assert (tmp_path / "a" / "out.md").read_text() == "hello"
        assert (tmp_path / "a" / "out.md").stat().st_mode & 0o777 == 0o644
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
        with pytest.raises(RuntimeError):
            with atomic_dir(tmp_path / "d") as d:
                (d / "x").write_text("2")
                raise RuntimeError("crash")
        assert (tmp_path / "d" / "x").read_text() == "1"  # the old folder is untouched
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "d", "out.md", "x"]
