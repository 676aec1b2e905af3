"""The EasyEdit contract: registration in ALG_DICT, the editors' call pattern and restore loop,
per-request probes, and behaviour with and without a real EasyEdit."""

import subprocess
import sys
import textwrap

import pytest
import torch

from surgery_editor import apply_model_surgery_to_model
from surgery_editor import activations as acts
from surgery_editor.easyedit import EasyEditUnavailable, import_easyeditor_alg_dict, register

from conftest import REPO, assert_same_state, state_copy

REQUEST = {"prompt": "you are stupid", "target_new": "you are kind and lovely",
           "ground_truth": "i hate you idiot", "general_prompt": ["nice day"] * 4, "locality": {}}


def _restore_like_easyedit(model, weights_copy):
    params = dict(model.named_parameters())  # EasyEdit's nethook.get_parameter looks names up here
    with torch.no_grad():
        for name, value in weights_copy.items():
            params[name].copy_(value)


def test_register_into_dict_in_place():
    from surgery_editor.methods import ALGORITHMS

    theirs = object()
    alg_dict = {"DINM": theirs}
    assert register(alg_dict) is alg_dict
    assert alg_dict["ModelSurgery"] is apply_model_surgery_to_model
    assert alg_dict["DINM"] is theirs  # EasyEdit's own DINM is left alone
    assert {"ProFS", "steer", "prompt"} <= set(alg_dict)
    for name in ("ProFS", "steer", "prompt"):
        assert alg_dict[name] is ALGORITHMS[name].apply


@pytest.mark.parametrize("source", ["dataset", "request"])
def test_editor_call_pattern_restores_bit_exactly(tiny_llama, tiny_tok, hp_factory, source):
    alg_dict = register({})
    hp = hp_factory(probe_source=source, top_k=20)
    before = state_copy(tiny_llama)
    apply_algo = alg_dict[hp.alg_name]
    edited, weights_copy = apply_algo(tiny_llama, tiny_tok, [REQUEST], hp, copy=False, return_orig_weights=True,
                                      keep_original_weight=True, train_ds=None)
    assert edited is tiny_llama
    changed = {k for k, v in tiny_llama.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(weights_copy)
    _restore_like_easyedit(tiny_llama, weights_copy)
    assert_same_state(tiny_llama, before)


def test_dataset_probe_computed_once_across_requests(tiny_llama, tiny_tok, hp_factory, monkeypatch):
    calls = []
    real = acts.pooled_hidden_states
    monkeypatch.setattr(acts, "pooled_hidden_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    hp = hp_factory(top_k=7)
    results = []
    for _ in range(3):  # one edit + restore per request, as SafetyEditor does
        _, wc = apply_model_surgery_to_model(tiny_llama, tiny_tok, [REQUEST], hp, return_orig_weights=True)
        results.append(state_copy(tiny_llama))
        _restore_like_easyedit(tiny_llama, wc)
    assert len(calls) == 1
    for state in results[1:]:
        assert all(torch.equal(state[k], results[0][k]) for k in state)


def test_request_direction_is_normalised_difference(tiny_llama, tiny_tok, hp_factory):
    from surgery_editor.methods.ModelSurgery.surgery import compute_patch

    hp = hp_factory(probe_source="request", top_k=5, request_direction_norm=2.0)
    patch = compute_patch(tiny_llama, tiny_tok, hp, [REQUEST])
    feats = acts.pooled_hidden_states(tiny_llama, tiny_tok, [REQUEST["ground_truth"], REQUEST["target_new"]])
    expected = (feats[0] - feats[1]) / (feats[0] - feats[1]).norm() * 2.0
    torch.testing.assert_close(patch.direction, expected)


def test_request_probe_needs_both_responses(tiny_llama, tiny_tok, hp_factory):
    bad = {**REQUEST, "target_new": ""}
    with pytest.raises(ValueError, match=r"request 1: probe_source: request needs a non-empty 'target_new'"):
        apply_model_surgery_to_model(tiny_llama, tiny_tok, [REQUEST, bad], hp_factory(probe_source="request"))


def _run(code: str, path: str = "") -> subprocess.CompletedProcess:
    env_path = f"{path}:{REPO}" if path else str(REPO)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, cwd=REPO, timeout=300)


def test_without_easyeditor_import_warns_and_register_explains():
    out = _run("""
        import sys
        sys.modules["easyeditor"] = None  # as if not installed
        import surgery_editor.easyedit as ee
        print("REGISTERED", ee.REGISTERED)
        try:
            ee.register()
        except ee.EasyEditUnavailable as err:
            print("ERROR", err)
        from surgery_editor import ModelSurgeryHyperParams
        print("OK", ModelSurgeryHyperParams.from_hparams("hparams/ModelSurgery/smollm2-135m").alg_name)
    """)
    assert out.returncode == 0, out.stderr
    assert "REGISTERED False" in out.stdout and "OK ModelSurgery" in out.stdout
    assert "ERROR easyeditor is not installed: install EasyEdit from its source" in out.stdout
    assert "RuntimeWarning: ModelSurgery (and this project's other methods) not registered with EasyEdit" in out.stderr  # seen without logging set up


def test_registers_in_place_into_easyeditor_alg_dict(tmp_path):
    pkg = tmp_path / "easyeditor" / "util"
    pkg.mkdir(parents=True)
    (tmp_path / "easyeditor" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "alg_dict.py").write_text("ALG_DICT = {'DINM': 'dinm'}\n")
    (pkg / "hparams.py").write_text("class HyperParams:\n    pass\n")
    out = _run("""
        from easyeditor.util import alg_dict
        held = alg_dict.ALG_DICT  # an editor module holds this same object
        import surgery_editor.easyedit as ee
        from easyeditor.util.hparams import HyperParams
        from surgery_editor import ModelSurgeryHyperParams, apply_model_surgery_to_model
        from surgery_editor.methods.ProFS import ProFSHyperParams
        hp = ModelSurgeryHyperParams.from_hparams("hparams/ModelSurgery/smollm2-135m")
        profs = ProFSHyperParams.from_hparams("hparams/ProFS/smollm2-135m")
        print(ee.REGISTERED, held is alg_dict.ALG_DICT, held["ModelSurgery"] is apply_model_surgery_to_model,
              held["DINM"], "ProFS" in held and "steer" in held and "prompt" in held,
              isinstance(hp, HyperParams), isinstance(profs, HyperParams))
    """, path=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "dinm", "True", "True", "True"]


# ---------------------------------------------------------------------------------------
# A CPU-only stack whose torchvision lacks its C++ operators (stand-in packages): what
# `import easyeditor` meets on this machine with PyPI's torchvision
# ---------------------------------------------------------------------------------------
def _fake_stack(root, torchvision_whole: bool = False, easyeditor_error: str = ""):
    """A torchvision that fails like PyPI's CUDA wheel on a CPU torch (after importing one
    submodule, which stays behind in sys.modules) unless ``torchvision::nms`` is declared, and
    an easyeditor whose package import goes through it and re-raises as transformers 5.23 does."""
    tv = root / "torchvision"
    tv.mkdir()
    (tv / "extension.py").write_text("loaded = True\n")
    check = "" if torchvision_whole else (
        "try:\n    torch._C._dispatch_find_schema_or_throw('torchvision::nms', '')\n"
        "except RuntimeError:\n    raise RuntimeError('operator torchvision::nms does not exist')\n")
    (tv / "__init__.py").write_text("import torch\nfrom torchvision import extension\n" + check)
    ee = root / "easyeditor"
    (ee / "util").mkdir(parents=True)
    (ee / "editors").mkdir()
    (ee / "__init__.py").write_text("from .editors import SafetyEditor\n")
    (ee / "util" / "__init__.py").write_text("")
    (ee / "util" / "alg_dict.py").write_text("ALG_DICT = {'DINM': 'dinm'}\n")
    (ee / "util" / "hparams.py").write_text("class HyperParams:\n    pass\n")
    (ee / "editors" / "__init__.py").write_text(
        (f"raise ImportError({easyeditor_error!r})\n" if easyeditor_error else "")
        + "try:\n    import torchvision\nexcept Exception as err:\n"
        "    raise ModuleNotFoundError(\"Could not import module 'AutoProcessor'\") from err\n"
        "from ..util.alg_dict import *\n\n"
        "class SafetyEditor:\n    def algorithms(self):\n        return ALG_DICT\n")
    return str(root)


_SCHEMA = ("import torch\ndef has_nms():\n    try:\n"
           "        torch._C._dispatch_find_schema_or_throw('torchvision::nms', '')\n        return True\n"
           "    except RuntimeError:\n        return False\n")


def test_readme_import_order_with_broken_torchvision(tmp_path):
    out = _run(_SCHEMA + textwrap.dedent("""
        import surgery_editor.easyedit as ee
        from easyeditor import SafetyEditor
        from surgery_editor import apply_model_surgery_to_model
        print(ee.REGISTERED, SafetyEditor().algorithms()["ModelSurgery"] is apply_model_surgery_to_model, has_nms())
    """), path=_fake_stack(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
    assert "not registered" not in out.stderr


def test_register_after_a_failed_import_easyeditor(tmp_path):
    """The user imported easyeditor first (it failed and left half-imported modules), then
    imports the plugin: the retry starts clean and editors see the registered ALG_DICT."""
    out = _run(_SCHEMA + textwrap.dedent("""
        try:
            import easyeditor
        except ModuleNotFoundError as err:
            print("first import failed:", type(err.__cause__).__name__)
        import surgery_editor.easyedit as ee
        ee.register()
        import easyeditor.editors as editors
        print(ee.REGISTERED, "ModelSurgery" in editors.SafetyEditor().algorithms(), editors.ALG_DICT is
              __import__("easyeditor.util.alg_dict", fromlist=["x"]).ALG_DICT)
    """), path=_fake_stack(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "first import failed: RuntimeError" in out.stdout
    assert out.stdout.split()[-3:] == ["True", "True", "True"]


def test_whole_torchvision_is_left_alone(tmp_path):
    out = _run(_SCHEMA + textwrap.dedent("""
        import surgery_editor.easyedit as ee
        import torchvision
        print(ee.REGISTERED, has_nms(), torchvision.extension.loaded)
    """), path=_fake_stack(tmp_path, torchvision_whole=True))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"]  # no operator declared


def test_unimportable_easyeditor_warns_visibly_with_the_cause(tmp_path):
    out = _run("""
        import surgery_editor.easyedit as ee
        print("REGISTERED", ee.REGISTERED)
        try:
            ee.register()
        except ee.EasyEditUnavailable as err:
            print("ERROR", err)
    """, path=_fake_stack(tmp_path, easyeditor_error="No module named 'zhipuai'"))
    assert out.returncode == 0, out.stderr
    assert "REGISTERED False" in out.stdout
    assert "RuntimeWarning: ModelSurgery (and this project's other methods) not registered with EasyEdit" in out.stderr  # no logging configured
    assert "ImportError: No module named 'zhipuai'" in out.stdout and "install EasyEdit from its source" in out.stdout
