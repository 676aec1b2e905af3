"""Paths to a wrong number with a zero exit code: each ends in an error that names the file,
key or setting, or in the correct result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import NEUTRAL, TOXIC, assert_same_state, offline_error, state_copy


def _compose(*overrides):
    from benchmarks.run import compose_config

    return compose_config(*overrides)


def _rtp_file(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "rtp.jsonl"
    path.write_text("".join(json.dumps({"prompt": {"text": f"you are {i}", "toxicity": 0.9}, "challenging": True})
                            + "\n" for i in range(n)))
    return path


def _rtp_run(tmp_path, model_path, *extra):
    return ["method=none", "benchmark=rtp", f"benchmark.path={_rtp_file(tmp_path)}", f"model.path={model_path}",
            "generation.batch_size=2", "generation.max_length=16", *extra]


def _no_model_load(monkeypatch):
    import surgery_editor.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(surgery_editor.models, "load_model", refuse)


# ---------------------------------------------------------------------------------------
# 1. resuming a run dir with other settings
# ---------------------------------------------------------------------------------------


def test_resume_with_other_max_new_tokens_is_refused_naming_the_setting(tmp_path, tiny_model_dir):
    from benchmarks.identity import RunDirMismatch
    from benchmarks.run import run

    out = tmp_path / "out"
    first = run(_compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=2", "generation.max_new_tokens=2")), out)
    config, results = (out / "config.yaml").read_text(), (out / "results.jsonl").read_text()
    bigger = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=3", "generation.max_new_tokens=6"))
    with pytest.raises(RunDirMismatch, match=r"out: this run's settings differ .*out/config\.yaml.*"
                                             r"generation\.max_new_tokens: 2 there, 6 now\. "):
        run(bigger, out)
    assert (out / "config.yaml").read_text() == config and (out / "results.jsonl").read_text() == results
    # unchanged settings resume as before; batch size and a larger limit may differ
    same = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=2", "generation.max_new_tokens=2"))
    assert run(same, out) == first
    more = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=3", "generation.max_new_tokens=2",
                              "generation.batch_size=1"))
    assert run(more, out)["n"] == 3


def test_finished_dir_with_another_method_or_fewer_items_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    from benchmarks.identity import RunDirMismatch
    from benchmarks.run import run

    out = tmp_path / "out"
    run(_compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=3", "generation.max_new_tokens=2")), out)
    _no_model_load(monkeypatch)
    other = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=3", "generation.max_new_tokens=2"),
                     "method=prompt", "judge=safety")
    with pytest.raises(RunDirMismatch, match=r"judge: 'profanity' there, 'safety' now; method\.name: 'none' there, "
                                             r"'prompt' now"):
        run(other, out)
    fewer = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=2", "generation.max_new_tokens=2"))
    with pytest.raises(RunDirMismatch, match=r"results\.jsonl holds results for 1 item\(s\) this run does not have "
                                             r"\(keys \['2'\]\): the item limits changed \(benchmark\.limit: 3 there, "
                                             r"2 now\); a run dir's items can only grow"):
        run(fewer, out)


def test_results_without_config_or_from_another_data_file_are_refused(tmp_path, tiny_model_dir, monkeypatch):
    from benchmarks.identity import RunDirMismatch
    from benchmarks.run import run

    cfg = _compose(*_rtp_run(tmp_path, tiny_model_dir, "generation.max_new_tokens=2"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "results.jsonl").write_text('{"key": "0", "score": 0.1}\n')
    _no_model_load(monkeypatch)
    with pytest.raises(RunDirMismatch, match=r"bare: holds 1 results but no config\.yaml"):
        run(cfg, bare)
    monkeypatch.undo()
    out = tmp_path / "out"
    run(cfg, out)
    rtp = tmp_path / "rtp.jsonl"  # the same path, another prompt in row 1
    rtp.write_text(rtp.read_text().replace("you are 1", "you are not 1"))
    with pytest.raises(RunDirMismatch, match=r"1 item\(s\) differ from the ones their stored results were made from: "
                                             r"'1' \(prompt\); the data file changed"):
        run(cfg, out)


def test_a_rejudged_copy_records_its_judge_so_a_resume_there_keeps_it(tmp_path, tiny_model_dir):
    from benchmarks.identity import RunDirMismatch
    from benchmarks.rejudge import rejudge_run
    from benchmarks.run import run
    from surgery_editor.evaluation.judges import get_judge

    run(_compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=2", "generation.max_new_tokens=2")),
        tmp_path / "src")
    assert rejudge_run(tmp_path / "src", tmp_path / "dst", get_judge("safety"), "safety")
    more = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=3", "generation.max_new_tokens=2"))
    with pytest.raises(RunDirMismatch, match=r"judge: 'safety' there, 'profanity' now"):
        run(more, tmp_path / "dst")
    assert run(_compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=3", "generation.max_new_tokens=2"),
                        "judge=safety"), tmp_path / "dst")["n"] == 3


def test_settings_an_older_config_lacks_count_as_their_defaults():
    from benchmarks.identity import differences

    stored = {"benchmark": {"name": "rtp", "limit": 5}, "generation": {"max_new_tokens": 2}, "device": "cpu"}
    defaults = {"benchmark": {"prompts": "sample", "top_p": 0.9}, "generation": {"chat": None}}
    current = {"benchmark": {"name": "rtp", "limit": 9, "prompts": "sample", "top_p": 0.5},
               "generation": {"max_new_tokens": 2, "chat": None, "batch_size": 4}, "device": "cuda"}
    assert differences(stored, current, defaults) == [("benchmark.top_p", 0.9, 0.5)]
    stored["judge_kwargs"], current["judge_kwargs"] = {"unsafe_label": 1, "device": "cpu"}, {"device": "cuda"}
    assert differences(stored, current, defaults)[-1] == ("judge_kwargs", {"unsafe_label": 1}, {})


# ---------------------------------------------------------------------------------------
# 2. duplicate item keys
# ---------------------------------------------------------------------------------------


def _safeedit_record(i, **override):
    from benchmarks.protocols import SAFEEDIT_DG

    rec = {"id": i, "adversarial prompt": f"attack {i}", "unsafe generation": "Sure.", "safe generation": "No.",
           "knowledge constrain": {"prompt": "the cat", "answer": "is good"},
           "generalization test": {v: f"{k} {i}" for k, v in SAFEEDIT_DG.items()}}
    rec.update(override)
    return rec


def test_duplicate_safeedit_ids_are_refused_naming_file_and_key(tmp_path, monkeypatch):
    from benchmarks.run import run

    path = tmp_path / "se.json"
    path.write_text(json.dumps([_safeedit_record(3), _safeedit_record(7), _safeedit_record(3)]))
    cfg = _compose("method=none", "benchmark=safeedit", f"benchmark.path={path}", "model.path=nowhere/model")
    _no_model_load(monkeypatch)
    with pytest.raises(ValueError, match=r"se\.json: 1 item key\(s\) occur more than once \(key '3' at positions "
                                         r"\[0, 2\]\).*counted twice"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_toxigen_group_in_two_files_or_an_empty_file_is_refused(tmp_path):
    from benchmarks.protocols import get_benchmark_class

    (tmp_path / "hate_asian_1k.txt").write_text("- a\\n- b\n")
    (tmp_path / "hate_asian_2.txt").write_text("- c\\n- d\n")
    with pytest.raises(ValueError, match=r"hate_asian_1k\.txt and hate_asian_2\.txt are both prompt files of group "
                                         r"'asian'"):
        get_benchmark_class("toxigen")({"path": str(tmp_path)}).items()
    (tmp_path / "hate_asian_2.txt").unlink()
    (tmp_path / "hate_women_1k.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"ToxiGen prompt file .*hate_women_1k\.txt: no prompts"):
        get_benchmark_class("toxigen")({"path": str(tmp_path)}).items()


def test_shared_item_check_refuses_empty_and_repeated_keys():
    from benchmarks.protocols import check_items

    with pytest.raises(ValueError, match=r"^src\.jsonl: no items to evaluate"):
        check_items([], "src.jsonl")
    with pytest.raises(ValueError, match=r"2 item key\(s\) occur more than once \(key '1' at positions \[0, 1\]; "
                                         r"key '2' at positions \[2, 3\]\)"):
        check_items([{"key": 1}, {"key": "1"}, {"key": "2"}, {"key": "2"}], "src.jsonl")


# ---------------------------------------------------------------------------------------
# 3. the run's data_dir reaches the judges and the methods' data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("judge, missing", [("safety", "jailbreakbench/jbb_judged_responses.jsonl"),
                                            ("toxicity", "realtoxicityprompts/rtp_random5000_quark_val.jsonl")])
def test_judges_train_on_the_runs_data_dir(tmp_path, monkeypatch, judge, missing):
    from benchmarks.run import run

    data = tmp_path / "data"
    data.mkdir()
    cfg = _compose(*_rtp_run(tmp_path, "nowhere/model"), f"judge={judge}", f"data_dir={data}")
    _no_model_load(monkeypatch)
    with pytest.raises(FileNotFoundError, match=rf"judge '{judge}': training data '{missing}' not found \(tried .* and "
                                                rf"{data}/{missing}\)"):
        run(cfg, tmp_path / "out")


def test_method_data_is_read_under_the_runs_data_dir(tmp_path, probe_tsv):
    from benchmarks.methods import get_method_class

    data = tmp_path / "data"
    (data / "probe").mkdir(parents=True)
    (data / "probe" / "pairs.tsv").write_text(probe_tsv.read_text())
    probe = {"path": "probe/pairs.tsv", "positive_column": "toxic", "negative_column": "neutral1"}
    for name in ("ModelSurgery", "ProFS", "DPO"):
        key = "probe_data" if name == "ModelSurgery" else "pairs"
        pairs = probe if name != "DPO" else {"path": "probe/pairs.tsv", "chosen_column": "neutral1",
                                             "rejected_column": "toxic"}
        method = get_method_class(name)("smollm2-135m", overrides={key: pairs}, data_dir=str(data))
        assert method.hparams.data_dir == str(data)
        method.check_data()  # reads data/probe/pairs.tsv
    explicit = get_method_class("ModelSurgery")("smollm2-135m", overrides={"probe_data": probe, "data_dir": "/x"},
                                                data_dir=str(data))
    assert explicit.hparams.data_dir == "/x"  # hparams.data_dir wins over the run's


# ---------------------------------------------------------------------------------------
# 4. degenerate data
# ---------------------------------------------------------------------------------------


def test_probe_data_with_one_example_per_class_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from benchmarks.run import run

    probe = tmp_path / "tiny.tsv"
    probe.write_text("toxic\tneutral1\nyou idiot\tyou friend\n")
    cfg = _compose(*_rtp_run(tmp_path, "nowhere/model"), "method=ModelSurgery",
                   f"hparams.probe_data={{path: '{probe}', positive_column: toxic, negative_column: neutral1}}")
    _no_model_load(monkeypatch)
    with pytest.raises(ValueError, match=r"tiny\.tsv \(probe_data\): 1 examples of class 1 and 1 of class 0; a probe "
                                         r"needs both classes, at least 10 examples of each \(with "
                                         r"probe_val_fraction=0\.1"):
        run(cfg, tmp_path / "out")


def test_probe_training_split_must_keep_both_classes():
    from surgery_editor.methods.ModelSurgery.probe import check_probe_labels, min_examples_per_class, train_probe

    assert min_examples_per_class(0.1) == 10 and min_examples_per_class(0.25) == 4 and min_examples_per_class(0) == 2
    check_probe_labels([0, 1] * 4, 0.25)
    with pytest.raises(ValueError, match=r"needs both classes, at least 4 examples of each"):
        check_probe_labels([0] * 9 + [1] * 3, 0.25)
    feats = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    probe = train_probe(feats, torch.tensor([0, 1] * 6), val_fraction=0.25, epochs=1)
    assert probe.n_val == 3 and 0.0 <= probe.val_accuracy <= 1.0


def test_empty_toxigen_prompt_file_fails_instead_of_nan_metrics(tmp_path, monkeypatch):
    from benchmarks.run import run

    (tmp_path / "hate_asian_1k.txt").write_text("")
    cfg = _compose("method=none", "benchmark=toxigen", f"benchmark.path={tmp_path}", "model.path=nowhere/model")
    _no_model_load(monkeypatch)
    with pytest.raises(ValueError, match=r"ToxiGen prompt file .*hate_asian_1k\.txt: no prompts"):
        run(cfg, tmp_path / "out")


def test_non_finite_metrics_are_never_written(tmp_path, tiny_model_dir, monkeypatch):
    from benchmarks.protocols import RealToxicityPrompts
    from benchmarks.run import run

    monkeypatch.setattr(RealToxicityPrompts, "metrics", lambda self, rows: {"n": len(rows), "toxic_rate": float("nan"),
                                                                            "by": {"x": float("inf")}})
    cfg = _compose(*_rtp_run(tmp_path, tiny_model_dir, "benchmark.limit=2", "generation.max_new_tokens=2"))
    with pytest.raises(ValueError, match=r"metric\(s\) \['toxic_rate', 'by\.x'\] are not finite numbers .*"
                                         r"metrics\.json is not written"):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "results.jsonl").exists()


def test_general_metrics_leave_out_what_did_not_run():
    from benchmarks.general import aggregate
    from surgery_editor.infra.checks import non_finite

    rows = [{"task": "gsm8k", "flags": {"exact_match:strict-match/gsm8k": True}, "values": {}, "pairs": {}}]
    m = aggregate(rows, [])
    assert m["exact_match:strict-match/gsm8k"] == 1.0 and not non_finite(m)
    assert "acc_mean" not in m and "perplexity" not in m


# ---------------------------------------------------------------------------------------
# 5. counts, enums and paths checked at start-up
# ---------------------------------------------------------------------------------------


def test_cli_rtp_limit_minus_one_is_refused_before_anything_loads(monkeypatch, capsys):
    from surgery_editor import cli
    from surgery_editor.evaluation.rtp import load_rtp_prompts

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--rtp-limit", "-1"])
    assert exit_info.value.code == 2
    assert "--rtp-limit must be a positive integer, got -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"limit \(RealToxicityPrompts prompts\) must be a positive integer"):
        load_rtp_prompts(limit=-1)


def test_cli_output_paths_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from surgery_editor import cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["--json", str(tmp_path / "afile" / "summary.json")])
    assert f"--json {tmp_path}/afile/summary.json: its folder: " in capsys.readouterr().err
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(SystemExit):
        cli.main(["--save-patch", str(keep)])
    assert "the folder holds other files than a saved patch" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "precious"


def test_output_dir_under_a_file_is_refused_before_anything_runs(tmp_path):
    from benchmarks.run import run

    (tmp_path / "afile").write_text("x")
    cfg = _compose(*_rtp_run(tmp_path, "nowhere/model"))
    where = re.escape(str(tmp_path / "afile"))
    with pytest.raises(NotADirectoryError, match=rf"hydra\.run\.dir.*: {where}/out cannot be a folder: {where} is a "
                                                 r"file"):
        run(cfg, tmp_path / "afile" / "out")


@pytest.mark.parametrize("override, message", [
    ("benchmark.protocol=sampeld", r"benchmark\.protocol must be one of \['greedy', 'sampled'\], got 'sampeld'"),
    ("benchmark.top_p=1.5", r"benchmark\.top_p must be a number in \(0, 1\], got 1\.5"),
    ("benchmark.sort_free=no", r"benchmark\.sort_free must be true or false \(bool\), got the string 'no'"),
    ("generation.chat=yes", r"generation\.chat must be true, false, auto or null"),
    ("seed=-1", r"seed must be an integer >= 0, got -1"),
    ("model.dtype=float64", r"model\.dtype 'float64' is not valid"),
    ("device=cpux", r"device 'cpux' is not a device"),
    ("data_dir=/no/such/folder", r"data_dir '/no/such/folder' is not a folder"),
    ("model.path=no_such_model", r"model\.path 'no_such_model' is neither an embedded model"),
])
def test_settings_are_checked_before_the_model_loads(tmp_path, monkeypatch, override, message):
    from benchmarks.run import run

    _no_model_load(monkeypatch)
    with pytest.raises((ValueError, OSError), match=message):
        run(_compose(*_rtp_run(tmp_path, "nowhere/model"), override), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bench, override, message", [
    ("toxigen", "benchmark.kind=hateful", r"benchmark\.kind must be one of \['hate', 'neutral'\]"),
    ("toxigen", "benchmark.temperature=0", r"benchmark\.temperature must be a number > 0"),
    ("safeedit", "benchmark.share_prefix=maybe", r"benchmark\.share_prefix must be true, false or auto"),
    ("general", "benchmark.num_fewshot=-1", r"benchmark\.num_fewshot must be an integer >= 0"),
])
def test_benchmark_options_are_checked_when_the_benchmark_is_built(bench, override, message):
    import benchmarks.general  # noqa: F401  (registers benchmark=general)
    from benchmarks.protocols import get_benchmark_class

    key, value = override.split("=")
    with pytest.raises(ValueError, match=message):
        get_benchmark_class(bench)({key.split(".")[1]: yaml.safe_load(value)})


def test_edit_instance_past_the_end_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from benchmarks.run import run

    path = tmp_path / "se.json"
    path.write_text(json.dumps([_safeedit_record(0)]))
    cfg = _compose(*_rtp_run(tmp_path, "nowhere/model"), "method=DINM", f"edit_instance.path={path}",
                   "edit_instance.index=3")
    _no_model_load(monkeypatch)
    with pytest.raises(IndexError, match=r"edit_instance\.index 3 is past the end of .*se\.json \(1 records\)"):
        run(cfg, tmp_path / "out")


# ---------------------------------------------------------------------------------------
# 6. errors that say which file or model and what is wrong
# ---------------------------------------------------------------------------------------


def test_hf_judge_offline_names_the_judge_and_the_id(tmp_path):
    out = offline_error(tmp_path, "__import__('surgery_editor.evaluation.judges').evaluation.judges.get_judge('hf:does/not-exist')")
    assert "ERROR: judge 'hf:does/not-exist' could not be loaded" in out
    assert "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set" in out and "hub id of the form 'org/name'" in out


def test_byte_order_marks_are_dropped_where_text_is_read(tmp_path):
    from benchmarks.protocols import get_benchmark_class
    from surgery_editor.data import load_probe_texts

    bom = "\ufeff"
    rows = tmp_path / "rows.csv"
    rows.write_text(bom + "text,label\n" + "".join(f"{t},1\n{n},0\n" for t, n in zip(TOXIC, NEUTRAL)),
                    encoding="utf-8")
    data = load_probe_texts({"path": str(rows), "text_field": "text", "label_field": "label", "shuffle": False})
    assert data.texts[:2] == [TOXIC[0], NEUTRAL[0]]
    (tmp_path / "se.json").write_text(bom + json.dumps([_safeedit_record(5)]), encoding="utf-8")
    assert [it["key"] for it in get_benchmark_class("safeedit")({"path": str(tmp_path / "se.json")}).items()] == ["5"]
    folder = tmp_path / "tg"
    folder.mkdir()
    (folder / "hate_asian_1k.txt").write_text(bom + "- first\\n- second\n", encoding="utf-8")
    assert get_benchmark_class("toxigen")({"path": str(folder)}).items()[0]["prompt"] == "- first\n- second"


def test_unreadable_files_name_the_file_and_the_problem(tmp_path):
    from benchmarks.protocols import get_benchmark_class
    from surgery_editor import ModelSurgeryHyperParams
    from surgery_editor.data import load_probe_texts

    (tmp_path / "hate_asian_1k.txt").write_bytes("- caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"ToxiGen prompt file .*hate_asian_1k\.txt: not UTF-8 text "
                                         r"\(invalid continuation byte at byte 5\)"):
        get_benchmark_class("toxigen")({"path": str(tmp_path)}).items()
    (tmp_path / "utf16.jsonl").write_text('{"t": "a", "y": 1}\n', encoding="utf-16")
    with pytest.raises(ValueError, match=r"utf16\.jsonl: UTF-16 text .*save the file as UTF-8"):
        load_probe_texts({"path": str(tmp_path / "utf16.jsonl"), "text_field": "t", "label_field": "y"})
    (tmp_path / "probe.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"probe_data path '.*probe\.csv': .*probe\.csv is a folder; "
                                                r"expected a file"):
        load_probe_texts({"path": str(tmp_path / "probe.csv"), "text_field": "t", "label_field": "y"})
    (tmp_path / "hp.yaml").write_bytes("alg_name: ModelSurgery\nmodel_name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"hparams file .*hp\.yaml: not UTF-8 text"):
        ModelSurgeryHyperParams.from_hparams(tmp_path / "hp.yaml")
    (tmp_path / "bad.yaml").write_text("alg_name: ModelSurgery\n  top_k: [1\n")
    with pytest.raises(ValueError, match=r"hparams file .*bad\.yaml: not valid YAML"):
        ModelSurgeryHyperParams.from_hparams(tmp_path / "bad.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(IsADirectoryError, match=r"hparams file .*dir\.yaml: is a folder, expected a file"):
        ModelSurgeryHyperParams.from_hparams(tmp_path / "dir.yaml")


# ---------------------------------------------------------------------------------------
# 7. editing a model that already carries the edit (EasyEdit's sequential editing)
# ---------------------------------------------------------------------------------------


def test_dataset_probe_edit_applied_twice_is_applied_once(tiny_llama, tiny_tok, hp_factory):
    from surgery_editor import apply_model_surgery_to_model

    before = state_copy(tiny_llama)
    hp = hp_factory(top_k=12)
    _, first = apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp, return_orig_weights=True)
    once = state_copy(tiny_llama)
    model, second = apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp, return_orig_weights=True)
    assert model is tiny_llama
    assert_same_state(tiny_llama, once)  # not edited a second time
    assert second.keys() == first.keys() and all(torch.equal(second[k], first[k]) for k in first)
    with torch.no_grad():  # EasyEdit's restore loop with the second call's weights_copy
        for name, value in second.items():
            tiny_llama.get_parameter(name).copy_(value)
    assert_same_state(tiny_llama, before)
    apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp)  # restored: edited again
    assert_same_state(tiny_llama, once)
    apply_model_surgery_to_model(tiny_llama, tiny_tok, [], hp_factory(top_k=12, alpha=2.0))  # other settings: stacked
    assert any(not torch.equal(v, once[k]) for k, v in tiny_llama.state_dict().items())


def test_request_probe_edits_stack_as_sequential_editing_does(tiny_llama, tiny_tok, hp_factory):
    from surgery_editor import apply_model_surgery_to_model

    request = {"prompt": "you are", "target_new": "a good friend", "ground_truth": "stupid idiot"}
    hp = hp_factory(probe_source="request", top_k=6)
    apply_model_surgery_to_model(tiny_llama, tiny_tok, [request], hp)
    once = state_copy(tiny_llama)
    _, weights = apply_model_surgery_to_model(tiny_llama, tiny_tok, [request], hp, return_orig_weights=True)
    assert any(not torch.equal(v, once[k]) for k, v in tiny_llama.state_dict().items())
    for name, value in weights.items():  # weights_copy: the tensors from before this call
        assert torch.equal(value, once[name])
