"""Hparams YAMLs load like EasyEdit's and bad ones fail with a message naming the problem."""

from pathlib import Path

import pytest
import yaml

from surgery_editor import ModelSurgeryHyperParams

from conftest import REPO

YAMLS = sorted((REPO / "hparams" / "ModelSurgery").glob("*.yaml"))


def _write(tmp_path: Path, **config) -> Path:
    path = tmp_path / "hp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BASE = dict(alg_name="ModelSurgery", model_name="m", probe_data={"path": "x.tsv", "positive_column": "a",
                                                                 "negative_column": "b"}, top_k=4)


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_shipped_yamls_load(path):
    hp = ModelSurgeryHyperParams.from_hparams(path)
    assert hp.alg_name == "ModelSurgery" and isinstance(hp.probe_lr, float)


def test_expected_yamls_exist():
    assert {p.stem for p in YAMLS} >= {"smollm2-135m", "llama-7b", "llama2-7b-chat", "mistral-7b"}


def test_yaml_suffix_appended_and_scientific_notation(tmp_path):
    path = _write(tmp_path, **BASE, probe_lr="3e-4", alpha="1.5E0")
    hp = ModelSurgeryHyperParams.from_hparams(str(path)[: -len(".yaml")])
    assert hp.probe_lr == pytest.approx(3e-4) and hp.alpha == 1.5


def test_paper_defaults():
    hp = ModelSurgeryHyperParams(model_name="m", probe_data={"path": "x"}, top_k_fraction=0.0465)
    assert (hp.probe_lr, hp.probe_batch_size, hp.probe_epochs, hp.probe_val_fraction, hp.seed, hp.alpha) == \
        (1e-4, 16, 9, 0.1, 0, 1.08)
    assert (hp.select, hp.scoring, hp.step, hp.probe_layer, hp.probe_direction) == \
        ("most_opposed", "cosine", "absolute", -1, "toxic_row")


def test_wrong_alg_name(tmp_path):
    path = _write(tmp_path, **{**BASE, "alg_name": "DINM"})
    with pytest.raises(ValueError, match=r"hp\.yaml: alg_name is 'DINM'.*alg_name: ModelSurgery"):
        ModelSurgeryHyperParams.from_hparams(path)


def test_unknown_key_named(tmp_path):
    path = _write(tmp_path, **BASE, alpah=2.0)
    with pytest.raises(ValueError, match=r"unknown key 'alpah' \(did you mean 'alpha'\?\)"):
        ModelSurgeryHyperParams.from_hparams(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        ModelSurgeryHyperParams.from_hparams("nope")


@pytest.mark.parametrize("bad, message", [
    (dict(top_k=None), "exactly one of top_k"),
    (dict(top_k_fraction=0.1), "exactly one of top_k"),
    (dict(top_k=0), "top_k must be a positive integer"),
    (dict(top_k=None, top_k_fraction=1.5), r"top_k_fraction must be in \(0, 1\]"),
    (dict(scoring="fancy"), r"scoring='fancy' is not valid; choose one of \['cosine', 'norm_aware', 'activation_auroc', 'activation_difference', 'writes'\]"),
    (dict(probe_data=None), "probe_source: dataset needs probe_data"),
    (dict(probe_val_fraction=1.0), "probe_val_fraction"),
    (dict(probe_epochs=0), "probe_epochs must be >= 1"),
])
def test_invalid_values(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        ModelSurgeryHyperParams.from_hparams(_write(tmp_path, **{**BASE, **bad}))


def test_method_key_ignores_runtime_keys():
    a = ModelSurgeryHyperParams(**BASE)
    b = ModelSurgeryHyperParams(**{**BASE, "device": "cuda:1", "max_output_length": 3})
    c = ModelSurgeryHyperParams(**{**BASE, "alpha": 2.0})
    assert a.method_key() == b.method_key() != c.method_key()
