"""Bad inputs end in an error that names the file, key or item and what
would be valid, or in correct behaviour."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, List, Optional

import numpy as np
import pytest
import torch
import yaml

from surgery_editor import ModelSurgeryHyperParams, SurgeryPatch
from surgery_editor.methods.ModelSurgery.surgery import build_patch, compute_patch

from conftest import REPO, make_tiny, offline_error

MS_BASE = dict(alg_name="ModelSurgery", model_name="m", top_k=4,
               probe_data={"path": "x.tsv", "positive_column": "a", "negative_column": "b"})


def _yaml(tmp_path: Path, config: dict, name: str = "hp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------------------
# 1. hparams field types, checked when the hparams load
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ("abc", r"hp\.yaml: alpha must be a number \(float\), got the string 'abc'$"),
    ("0.1", r"hp\.yaml: alpha must be a number \(float\), got the string '0\.1'; write it without quotes"),
])
def test_hparams_string_in_a_float_field_is_refused_naming_file_and_key(tmp_path, value, message):
    path = _yaml(tmp_path, {**MS_BASE, "alpha": value})
    with pytest.raises(ValueError, match=message):
        ModelSurgeryHyperParams.from_hparams(path)


@pytest.mark.parametrize("bad, message", [
    (dict(top_k=True), r"top_k must be an integer \(int\) or null, got True \(bool\)"),
    (dict(probe_batch_size=16.5), r"probe_batch_size must be an integer \(int\), got 16\.5"),
    (dict(probe_epochs="9"), r"probe_epochs must be an integer \(int\), got the string '9'; write it without quotes"),
    (dict(model_parallel="false"), r"model_parallel must be true or false \(bool\), got the string 'false'"),
    (dict(cache_dir=3), r"cache_dir must be a string or null, got 3 \(int\)"),
])
def test_hparams_every_typed_field_is_checked(tmp_path, bad, message):
    with pytest.raises(ValueError, match=r"hp\.yaml: " + message):
        ModelSurgeryHyperParams.from_hparams(_yaml(tmp_path, {**MS_BASE, **bad}))


def test_hparams_direct_construction_is_checked_and_scientific_notation_still_converts():
    with pytest.raises(ValueError, match=r"^alpha must be a number \(float\), got the string 'abc'"):
        ModelSurgeryHyperParams(**{**MS_BASE, "alpha": "abc"})
    hp = ModelSurgeryHyperParams(**{**MS_BASE, "top_k": 4.0, "probe_lr": "3e-4"})
    assert hp.top_k == 4 and type(hp.top_k) is int  # an integral float becomes an int
    assert hp.probe_lr == pytest.approx(3e-4)
    loaded = ModelSurgeryHyperParams.from_dict({**MS_BASE, "probe_lr": "1e-4", "alpha": 1})
    assert loaded.probe_lr == pytest.approx(1e-4) and loaded.alpha == 1


def test_hparams_checks_reach_dinm_and_future_classes(tmp_path):
    from surgery_editor.methods.DINM.hparams import DINMHyperParams
    from surgery_editor.hparams import _HyperParamsBase

    base = {"alg_name": "DINM", "model_name": "m"}
    with pytest.raises(ValueError, match=r"dinm\.yaml: lr must be a number \(float\), got the string '0\.1'; "
                                         r"write it without quotes"):
        DINMHyperParams.from_hparams(_yaml(tmp_path, {**base, "lr": "0.1"}, "dinm.yaml"))
    with pytest.raises(ValueError, match=r"model_class must be a string or null, got 5 \(int\)"):
        DINMHyperParams(**base, model_class=5)
    assert DINMHyperParams(**base, layers=None).layers == []

    @dataclass
    class FutureHyperParams(_HyperParamsBase):  # no checks of its own
        ALG_NAME: ClassVar[str] = "Future"
        model_name: str = "m"
        alg_name: str = "Future"
        steps: int = 3
        layers: Optional[List[int]] = None

    with pytest.raises(ValueError, match=r"<dict>: steps must be an integer \(int\), got the string 'x'"):
        FutureHyperParams.from_dict({"alg_name": "Future", "model_name": "m", "steps": "x"})
    with pytest.raises(ValueError, match=r"layers must be a list of integers or null, got \[1, 'b'\]"):
        FutureHyperParams(layers=[1, "b"])


def test_hparams_override_from_the_benchmark_harness_is_checked():
    from benchmarks.methods import get_method_class

    with pytest.raises(ValueError, match=r"smollm2-135m\.yaml \+ overrides: alpha must be a number \(float\), "
                                         r"got the string 'abc'"):
        get_method_class("ModelSurgery")("smollm2-135m", overrides={"alpha": "abc"})


def test_probe_data_config_fields_are_typed():
    from surgery_editor.data import ProbeDataConfig

    with pytest.raises(ValueError, match=r"probe_data\.limit must be an integer \(int\) or null, got the string "
                                         r"'10'; write it without quotes"):
        ProbeDataConfig(path="x", positive_column="a", negative_column="b", limit="10")


# ---------------------------------------------------------------------------------------
# 2. bf16 rows that round back to their old values
# ---------------------------------------------------------------------------------------


def _bf16_model(big_rows: int = 0, fill: Optional[float] = None):
    model = make_tiny("llama", dtype=torch.bfloat16)
    with torch.no_grad():
        if fill is not None:
            for layer in model.model.layers:
                w = layer.mlp.gate_proj.weight
                w.copy_(fill + 0.5 * torch.rand(w.shape, generator=torch.Generator().manual_seed(0)))
        model.model.layers[0].mlp.gate_proj.weight[:big_rows] = 1.5  # bf16 spacing near 1.5: 2**-7
    return model


def test_bf16_rows_that_round_away_are_counted_and_warned(hp_factory, caplog):
    model = _bf16_model(big_rows=5)
    hp = hp_factory(top_k=3 * 48, alpha=0.001)  # every gate row; a step of 0.001 per element
    with pytest.warns(UserWarning, match=r"5 of 144 selected rows round back to their original values in "
                                         r"torch\.bfloat16 at alpha=0\.001.*larger alpha.*float32"):
        with caplog.at_level(logging.WARNING, logger="surgery_editor.methods.ModelSurgery.surgery"):
            patch = build_patch(model, torch.ones(32), hp)
    assert "5 of 144" in caplog.text
    assert patch.num_rows == 144 and patch.metadata["rows_changed"] == 139
    unchanged = sum(int((e.edited == e.original).all(dim=1).sum()) for e in patch.edits)
    assert unchanged == 5


def test_bf16_edit_that_changes_no_row_is_refused(hp_factory):
    model = _bf16_model(fill=1.0)  # every weight in [1, 1.5): half the bf16 spacing is 0.0039
    with pytest.raises(ValueError, match=r"change nothing: all 144 selected rows round back .* "
                                         r"alpha=0\.0001; use a larger alpha"):
        build_patch(model, torch.ones(32), hp_factory(top_k=144, alpha=1e-4))


def test_fp32_patch_reports_every_row_changed(tiny_llama, tiny_tok, hp_factory, recwarn):
    patch = compute_patch(tiny_llama, tiny_tok, hp_factory(top_k=11, alpha=1e-4), use_cache=False)
    assert patch.metadata["rows_changed"] == patch.num_rows == 11
    assert not [w for w in recwarn if "round back" in str(w.message)]


# ---------------------------------------------------------------------------------------
# 3, 4. saved patches: checksums, truncated or cut files
# ---------------------------------------------------------------------------------------


@pytest.fixture
def saved_patch(tmp_path, tiny_llama, hp_factory) -> Path:
    patch = build_patch(tiny_llama, torch.randn(32, generator=torch.Generator().manual_seed(0)),
                        hp_factory(top_k=9))
    return patch.save(tmp_path / "p")


def _data_range(path: Path, name: str) -> tuple:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def test_patch_with_altered_tensor_bytes_is_refused_naming_file_and_tensor(saved_patch):
    doc = json.loads((saved_patch / "patch.json").read_text())
    assert doc["format_version"] == 2 and "edit0.edited" in doc["checksums"]["tensors"]
    tensor_file = saved_patch / "patch.safetensors"
    begin, end = _data_range(tensor_file, "edit0.edited")
    raw = bytearray(tensor_file.read_bytes())
    for offset in (begin + 5, begin + (end - begin) // 2):
        raw[offset] ^= 0x10
    tensor_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"patch\.safetensors: tensor\(s\) \['edit0\.edited'\] differ from the "
                                         r"sha256 recorded in .*patch\.json"):
        SurgeryPatch.load(saved_patch)


def test_format_1_patch_loads_unverified_with_a_warning(saved_patch, tiny_llama, caplog):
    doc = json.loads((saved_patch / "patch.json").read_text())
    doc["format_version"] = 1
    del doc["checksums"]
    (saved_patch / "patch.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="surgery_editor.methods.ModelSurgery.patch"):
        loaded = SurgeryPatch.load(saved_patch)
    assert "format_version 1 has no checksums" in caplog.text
    loaded.apply(tiny_llama)  # still usable


@pytest.mark.parametrize("version", [2, 1])
def test_truncated_patch_safetensors_names_the_file(saved_patch, version):
    tensor_file = saved_patch / "patch.safetensors"
    raw = tensor_file.read_bytes()
    tensor_file.write_bytes(raw[: len(raw) // 2])
    if version == 1:
        doc = json.loads((saved_patch / "patch.json").read_text())
        doc["format_version"] = 1
        (saved_patch / "patch.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"p/patch\.safetensors.* (truncated|not a readable safetensors file)"):
        SurgeryPatch.load(saved_patch)


def test_cut_patch_json_names_the_file(saved_patch):
    meta = saved_patch / "patch.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"p/patch\.json: not valid JSON .*truncated or damaged"):
        SurgeryPatch.load(saved_patch)


def test_probe_data_that_is_not_utf8_names_the_file(tmp_path):
    from surgery_editor.data import load_probe_texts

    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nyou idiot,1\nna\u00efve caf\u00e9 friend,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv: not UTF-8 text .*save the file as UTF-8"):
        load_probe_texts({"path": str(path), "text_field": "text", "label_field": "label"})


def test_load_model_hub_failure_names_the_id_and_the_valid_forms(monkeypatch):
    import transformers

    from surgery_editor.models import load_model

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                      "in the cached files.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(OSError, match=r"model_name 'does/not-exist' could not be loaded .*no network.*"
                                      r"HF_HUB_OFFLINE=1.*embedded name \(gemma3-270m, smollm2-135m\), a local folder"):
        load_model("does/not-exist")


def test_load_model_offline_for_real_names_the_id(tmp_path):
    out = offline_error(tmp_path, "__import__('surgery_editor.models').models.load_model('does/not-exist')")
    assert "ERROR: model_name 'does/not-exist'" in out
    assert "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set" in out and "embedded name" in out


# ---------------------------------------------------------------------------------------
# 5. label columns with blank cells
# ---------------------------------------------------------------------------------------


def test_label_column_with_blank_cells_keeps_classes_and_drops_blank_rows(tmp_path):
    from surgery_editor.data import load_probe_texts

    path = tmp_path / "rows.csv"
    path.write_text("text,label\nyou idiot,1\nnice day,0\nstupid dog,1\nlovely weather,\ngood friend,0\n"
                    "so dumb, \nhate you,1\n")
    with pytest.warns(UserWarning, match=r"rows\.csv: dropping 2 of 7 rows whose label column 'label' is empty"):
        data = load_probe_texts({"path": str(path), "text_field": "text", "label_field": "label", "shuffle": False})
    assert data.texts == ["you idiot", "nice day", "stupid dog", "good friend", "hate you"]
    assert data.labels.tolist() == [1, 0, 1, 0, 1]


def test_label_values_compare_by_number(tmp_path):
    from surgery_editor.data import load_probe_texts

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"t": "you idiot", "y": 2.0}, {"t": "nice", "y": " 1 "},
                                                      {"t": "dumb", "y": "2"}]) + "\n")
    data = load_probe_texts({"path": str(path), "text_field": "t", "label_field": "y", "positive_values": [2],
                             "shuffle": False})
    assert data.labels.tolist() == [1, 0, 1]


# ---------------------------------------------------------------------------------------
# Benchmark harness helpers
# ---------------------------------------------------------------------------------------


def _rtp_file(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "rtp.jsonl"
    path.write_text("".join(json.dumps({"prompt": {"text": f"you are {i}", "toxicity": 0.9}, "challenging": True})
                            + "\n" for i in range(n)))
    return path


def _compose(*overrides):
    from benchmarks.run import compose_config

    return compose_config(*overrides)


def _run_overrides(tmp_path, model_path, *extra):
    return ["method=none", "benchmark=rtp", f"benchmark.path={_rtp_file(tmp_path)}", f"model.path={model_path}",
            "generation.max_new_tokens=2", "generation.batch_size=2", "generation.max_length=16", *extra]


# ---------------------------------------------------------------------------------------
# 6. +hparams.<misspelt key>
# ---------------------------------------------------------------------------------------


def test_unknown_hparams_key_added_with_plus_is_refused_before_the_model_loads(tmp_path):
    from benchmarks.run import run

    cfg = _compose("+hparams.alpah=1", *_run_overrides(tmp_path, tmp_path / "no-model-here"))
    with pytest.raises(KeyError, match=r"hparams\.alpah: no registered method .*did you mean 'hparams\.alpha'\?.*"
                                       r"valid keys: \[.*'alpha'"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# 7. count options
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bench, key, value", [
    ("rtp", "limit", -1), ("rtp", "limit", 0), ("safeedit", "limit", 0), ("safeedit", "limit", -1),
    ("toxigen", "limit", -1), ("toxigen", "limit", 0), ("toxigen", "limit_per_group", 0),
    ("rtp", "num_samples", 0), ("general", "limit_per_task", 0), ("rtp", "limit", True),
])
def test_count_options_must_be_positive(bench, key, value):
    from benchmarks.protocols import get_benchmark_class

    with pytest.raises(ValueError, match=rf"benchmark\.{key} \(benchmark {bench}\) must be a positive integer"):
        get_benchmark_class(bench)({key: value})


def test_limit_is_refused_at_config_time_in_a_run(tmp_path):
    from benchmarks.protocols import Generation
    from benchmarks.run import run

    cfg = _compose("benchmark.limit=-1", *_run_overrides(tmp_path, tmp_path / "no-model-here"))
    with pytest.raises(ValueError, match=r"benchmark\.limit \(benchmark rtp\) must be a positive integer or null"):
        run(cfg, tmp_path / "out")
    with pytest.raises(ValueError, match=r"generation\.max_new_tokens must be a positive integer or null "
                                         r"\(= the protocol's value\), got 0"):
        Generation(max_new_tokens=0)
    cfg = _compose("edit_instance.index=-1", *_run_overrides(tmp_path, tmp_path / "no-model-here"))
    with pytest.raises(ValueError, match=r"edit_instance\.index must be an integer >= 0"):
        run(cfg, tmp_path / "out")


# ---------------------------------------------------------------------------------------
# 8. SafeEdit records with blank inputs
# ---------------------------------------------------------------------------------------


def _safeedit_record(i, dg=None, **override):
    from benchmarks.protocols import SAFEEDIT_DG

    rec = {"id": i, "unsafety category": "offensiveness", "adversarial prompt": f"attack {i}", "question": f"q {i}",
           "attack category": "x", "attack name": "y", "unsafe generation": "Sure, toxic.",
           "safe generation": "I cannot help.", "knowledge constrain": {"prompt": "the cat", "answer": "is good"},
           "generalization test": {"attack_category": "x", "attack_name": "y",
                                   **{v: (dg if dg is not None else f"{k} {i}") for k, v in SAFEEDIT_DG.items()}}}
    rec.update(override)
    return rec


def test_safeedit_blank_generalization_inputs_are_not_generated_nor_scored(tmp_path, tiny_tok, monkeypatch,
                                                                            caplog):
    from benchmarks import protocols
    from benchmarks.protocols import Generation, RunContext, get_benchmark_class

    path = tmp_path / "se.json"
    path.write_text(json.dumps([_safeedit_record(0), _safeedit_record(1, dg=""), _safeedit_record(2, dg="  ")]))
    bench = get_benchmark_class("safeedit")({"path": str(path)})
    with caplog.at_level(logging.WARNING, logger="benchmarks.protocols"):
        items = bench.load_items()
    assert "8 blank generalization input(s)" in caplog.text
    generated = []
    made = {"attack 0": "no", "DG_onlyQ 0": "toxic", "DG_otherA 0": "no", "DG_otherQ 0": "no", "DG_otherAQ 0": "no",
            "attack 1": "toxic", "attack 2": "no"}
    fake = lambda m, t, prompts, **kw: generated.extend(prompts) or [made[p] for p in prompts]  # noqa: E731
    monkeypatch.setattr(protocols, "generate", fake)
    monkeypatch.setattr(protocols, "generate_shared_prefix", fake)

    class Stub:
        name, per_instance = "stub", False

        def eval_suffix(self):
            return ""

    ctx = RunContext(model=make_tiny("llama", vocab=len(tiny_tok)), tok=tiny_tok, method=Stub(),
                     judge=lambda texts: np.array([1.0 if "toxic" in t else 0.0 for t in texts]),
                     generation=Generation(batch_size=10, max_new_tokens=4))
    rows = [r for chunk in bench.evaluate(ctx, items) for r in chunk]
    assert sorted(generated) == sorted(made)  # no blank input was generated
    assert set(rows[1]["unsafe"]) == set(rows[1]["flags"]) == set(rows[1]["responses"]) == {"DS"}
    assert "DG_avg" not in rows[1]["values"] and rows[0]["values"]["DG_avg"] == 0.75
    m = bench.metrics(rows)
    assert m["DS"] == pytest.approx(200 / 3)  # over all three records
    assert m["DG_onlyQ"] == 0.0 and m["DG_otherA"] == 100.0  # over record 0 only
    assert m["DG_avg"] == pytest.approx(75.0)


def test_safeedit_record_with_empty_attack_prompt_is_refused(tmp_path):
    from benchmarks.protocols import get_benchmark_class

    path = tmp_path / "se.json"
    path.write_text(json.dumps([_safeedit_record(0), _safeedit_record(41, **{"adversarial prompt": " "})]))
    with pytest.raises(ValueError, match=r"se\.json: item 1 \(id 41\): field 'adversarial prompt' is empty"):
        get_benchmark_class("safeedit")({"path": str(path)}).load_items()


# ---------------------------------------------------------------------------------------
# 9. two runs on one output dir
# ---------------------------------------------------------------------------------------


def test_second_run_on_a_locked_dir_is_refused_and_resumes_after(tmp_path, tiny_model_dir):
    from benchmarks.run import run

    out = tmp_path / "out"
    out.mkdir()
    cfg = _compose(*_run_overrides(tmp_path, tiny_model_dir))
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)  # another run holding the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 4242, "started": "2024-01-02 03:04:05"}).encode())
        with pytest.raises(RuntimeError, match=rf"{out} is in use by another run \(pid 4242, started at "
                                               r"2024-01-02 03:04:05\); wait for it or use another hydra\.run\.dir"):
            run(cfg, out)
        assert not (out / "results.jsonl").exists() and not (out / "config.yaml").exists()
    finally:
        os.close(fd)  # the holder ends: its lock goes with it
    metrics = run(cfg, out)
    assert metrics["n"] == 3
    assert run(cfg, out)["n"] == 3  # the lock was released at the end of the run


def test_run_lock_is_released_when_its_process_is_killed(tmp_path):
    from benchmarks.store import RunDirInUse, RunLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom benchmarks.store import RunLock\n"
                               f"RunLock({str(tmp_path)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirInUse, match=rf"pid {holder.pid}, started at "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):
        pass


# ---------------------------------------------------------------------------------------
# 10. a torn last line of results.jsonl that ends with a newline
# ---------------------------------------------------------------------------------------


def test_unreadable_last_line_with_newline_is_dropped(tmp_path, caplog):
    from benchmarks.store import ResultStore

    good = '{"key": "1", "score": 0.5}\n'
    (tmp_path / "results.jsonl").write_text(good + '{"key": "2", "sco\n')
    with caplog.at_level(logging.WARNING, logger="benchmarks.store"):
        store = ResultStore(tmp_path)
    assert "1" in store and "2" not in store and len(store) == 1
    assert "results.jsonl:2: dropping an unreadable last line" in caplog.text
    assert (tmp_path / "results.jsonl").read_text() == good  # ready for appending
    store.append([{"key": "2", "score": 0.1}])
    assert len(ResultStore(tmp_path)) == 2


def test_unreadable_line_before_the_last_still_raises(tmp_path):
    from benchmarks.store import ResultStore

    (tmp_path / "results.jsonl").write_text('{"key": "1"}\n{"key": "2", "sco\n{"key": "3"}\n')
    with pytest.raises(ValueError, match=r"results\.jsonl:2: not valid JSON"):
        ResultStore(tmp_path)
