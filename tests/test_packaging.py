"""What the plain install leaves out fails with the extra that brings it; the other methods still
register; the harness is imported under one name per process; hparams load by name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_methods_register_without_the_optional_packages():
    # None in sys.modules makes an import fail as if the package were not installed
    out = _fresh("""
        import json, sys, warnings
        for name in ("trl", "peft", "datasets", "lm_eval", "matplotlib", "profanity_check", "sklearn", "scipy",
                     "psutil", "gguf", "nltk"):
            sys.modules[name] = None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a method that fails to register warns
            from surgery_editor.methods import load_methods
            names = sorted(load_methods())
        from surgery_editor.infra.extras import MissingExtra
        from surgery_editor.methods.DPO import DPOHyperParams, apply_dpo_to_model
        try:
            apply_dpo_to_model(None, None, [], DPOHyperParams(model_name="tiny"))
        except MissingExtra as err:
            dpo = str(err)
        from surgery_editor.models import EMBEDDED_MODELS
        try:
            EMBEDDED_MODELS["smollm2-135m"].locate()
        except MissingExtra as err:
            gguf = str(err)
        print(json.dumps({"names": names, "dpo": dpo, "gguf": gguf}))
    """)
    report = json.loads(out)
    assert {"ModelSurgery", "DINM", "ProFS", "ProFS", "steer", "prompt", "DPO"} <= set(report["names"])
    assert 'pip install "surgery_editor[dpo]"' in report["dpo"] and "'trl'" in report["dpo"]
    assert 'pip install "surgery_editor[embedded]"' in report["gguf"]


def test_missing_extra_names_the_extra(monkeypatch):
    from surgery_editor.evaluation.statistics import mcnemar_exact
    from surgery_editor.infra.extras import MissingExtra, require
    from surgery_editor.evaluation.judges import get_judge

    monkeypatch.setitem(sys.modules, "profanity_check", None)
    with pytest.raises(MissingExtra, match=r'profanity judge.*pip install "surgery_editor\[harness\]"'):
        get_judge("profanity")
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(MissingExtra, match=r"surgery_editor\[harness\]"):
        mcnemar_exact([True, False], [False, False])
    assert mcnemar_exact([True], [True])["p_value"] == 1.0  # nothing discordant: no test to run
    assert require("json", "harness", "x") is json


def test_the_harness_is_imported_under_one_name():
    # the folder loaded a second time under the installed name (as an editable install maps it)
    out = _fresh("""
        import importlib.util
        import benchmarks.rundir
        spec = importlib.util.spec_from_file_location("surgery_editor.benchmarks", benchmarks.__file__,
                                                      submodule_search_locations=list(benchmarks.__path__))
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except ImportError as err:
            print(err)
    """)
    assert "already imported as 'benchmarks'" in out


def test_hparams_load_by_name_and_the_wrong_name_lists_the_shipped(tmp_path, monkeypatch):
    from surgery_editor import ModelSurgeryHyperParams
    from surgery_editor.hparams import hparams_dir, shipped_hparams

    monkeypatch.chdir(tmp_path)  # not the checkout: relative paths do not exist here
    assert hparams_dir() == REPO / "hparams"
    by_path = ModelSurgeryHyperParams.from_hparams(REPO / "hparams" / "ModelSurgery" / "llama2-7b-chat.yaml")
    for name in ("ModelSurgery/llama2-7b-chat", "llama2-7b-chat", "hparams/ModelSurgery/llama2-7b-chat.yaml"):
        assert ModelSurgeryHyperParams.from_hparams(name) == by_path
    assert "DPO/smollm2-135m" in shipped_hparams() and shipped_hparams("DPO") == [
        n for n in shipped_hparams() if n.startswith("DPO/")]
    with pytest.raises(FileNotFoundError, match=r"ModelSurgery/llama2-7b-chat.*ModelSurgery/smollm2-135m") as err:
        ModelSurgeryHyperParams.from_hparams("ModelSurgery/llama2-7b")
    assert "DPO/" not in str(err.value)  # only the method's own
