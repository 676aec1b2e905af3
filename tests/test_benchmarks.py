"""The benchmark harness: protocol arithmetic, batched generation, resume, bad input, Hydra."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks import protocols
from benchmarks.methods import get_method_class
from benchmarks.protocols import Generation, RunContext, get_benchmark_class
from benchmarks.store import ResultStore
from surgery_editor.evaluation import rtp
from surgery_editor.evaluation.generation import generate, sample
from surgery_editor.evaluation.metrics import ngram_entropy

from conftest import DATA_DIR, REPO, make_tiny

needs_data = pytest.mark.skipif(not DATA_DIR.exists(), reason=f"offline data not found at {DATA_DIR}")


def keyword_judge(texts):
    """1.0 for texts containing 'toxic', 0.0 otherwise."""
    return np.array([1.0 if "toxic" in t else 0.0 for t in texts])


class _Stub:
    """A method that never edits (what the protocols see of ``none``)."""

    name, per_instance = "stub", False

    def eval_suffix(self):
        return ""


def _ctx(model=None, tok=None, judge=keyword_judge, batch_size=4, method=None):
    return RunContext(model=model, tok=tok, method=method or _Stub(), judge=judge,
                      generation=Generation(batch_size=batch_size, max_new_tokens=4))


# ---------------------------------------------------------------------------------------
# Metric arithmetic on hand-made generations
# ---------------------------------------------------------------------------------------


def test_rtp_greedy_metrics_from_made_up_generations(monkeypatch):
    bench = get_benchmark_class("rtp")({})
    items = [{"key": str(i), "prompt": f"p{i}"} for i in range(4)]
    made = {"p0": "toxic words", "p1": "fine", "p2": "also toxic", "p3": "ok"}
    monkeypatch.setattr(rtp, "generate", lambda m, t, prompts, **kw: [made[p] for p in prompts])
    rows = [r for chunk in bench.evaluate(_ctx(batch_size=3), items) for r in chunk]
    assert [r["generation"] for r in rows] == ["toxic words", "fine", "also toxic", "ok"]
    assert [r["flags"]["toxic_rate"] for r in rows] == [True, False, True, False]
    metrics = bench.metrics(rows)
    assert metrics == {"n": 4, "toxic_rate": 0.5, "mean_toxicity": 0.5}


def test_rtp_sampled_metrics_expected_max_and_probability(monkeypatch):
    bench = get_benchmark_class("rtp")({"protocol": "sampled", "num_samples": 3})
    made = {"a": ["toxic", "no", "no"], "b": ["no", "no", "no"]}
    monkeypatch.setattr(protocols, "sample", lambda m, t, prompt, num_samples, **kw: made[prompt][:num_samples])
    scores = {"toxic": 0.9, "no": 0.2}
    judge = lambda texts: np.array([scores[t] for t in texts])  # noqa: E731
    rows = [r for chunk in bench.evaluate(_ctx(judge=judge), [{"key": "0", "prompt": "a"}, {"key": "1", "prompt": "b"}])
            for r in chunk]
    m = bench.metrics(rows)
    assert m["expected_max_toxicity"] == pytest.approx((0.9 + 0.2) / 2)
    assert m["toxicity_probability"] == pytest.approx(0.5)
    assert m["toxic_rate"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["mean_toxicity"] == pytest.approx(((0.9 + 0.4) / 3 + 0.2) / 2)


def _safeedit_record(i, **override):
    rec = {"id": i, "adversarial prompt": f"attack {i}", "safe generation": "I cannot help.",
           "unsafe generation": "Sure, toxic.", "knowledge constrain": {"prompt": "the cat", "answer": "is good"},
           "generalization test": {v: f"{k} {i}" for k, v in protocols.SAFEEDIT_DG.items()}}
    rec.update(override)
    return rec


def test_safeedit_metrics_follow_easyedit_arithmetic(monkeypatch, tmp_path, tiny_tok):
    path = tmp_path / "se.json"
    path.write_text(json.dumps([_safeedit_record(0), _safeedit_record(1)]))
    bench = get_benchmark_class("safeedit")({"path": str(path)})
    items = bench.load_items()
    assert [it["key"] for it in items] == ["0", "1"]
    assert items[0]["request"]["general_prompt"][0] == "DG_onlyQ 0"
    # instance 0: DS toxic, DG_otherA empty (EasyEdit: 0.5); instance 1: all safe but DG_otherAQ
    made = {"attack 0": "toxic reply", "DG_onlyQ 0": "no", "DG_otherA 0": "", "DG_otherQ 0": "no",
            "DG_otherAQ 0": "no", "attack 1": "no", "DG_onlyQ 1": "no", "DG_otherA 1": "no", "DG_otherQ 1": "no",
            "DG_otherAQ 1": "toxic"}
    fake = lambda m, t, prompts, **kw: [made[p] for p in prompts]  # noqa: E731
    monkeypatch.setattr(protocols, "generate", fake)
    monkeypatch.setattr(protocols, "generate_shared_prefix", fake)  # SafeEdit's default (share_prefix)
    model = make_tiny("llama", vocab=len(tiny_tok))
    rows = [r for chunk in bench.evaluate(_ctx(model, tiny_tok, batch_size=10), items) for r in chunk]
    assert rows[0]["unsafe"] == {"DS": 1.0, "DG_onlyQ": 0.0, "DG_otherA": 0.5, "DG_otherQ": 0.0, "DG_otherAQ": 0.0}
    m = bench.metrics(rows)
    assert m["DS"] == pytest.approx(50.0)
    assert m["DG_onlyQ"] == pytest.approx(100.0)
    assert m["DG_otherA"] == pytest.approx(75.0)
    assert m["DG_otherAQ"] == pytest.approx(50.0)
    assert m["DG_avg"] == pytest.approx((100 + 75 + 100 + 50) / 4)
    expected_fluency = np.mean([ngram_entropy([made[f"{k} {i}" if k != "DS" else f"attack {i}"]
                                               for k in protocols.SAFEEDIT_INPUTS]) for i in (0, 1)])
    assert m["fluency"] == pytest.approx(expected_fluency)
    assert 0.0 <= m["knowledge"] <= 1.0
    assert rows[0]["flags"]["DG_otherA"] is False and rows[1]["flags"]["DS"] is True


def test_ngram_entropy_matches_easyedit_formula():
    # "a b a b": bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1 bit
    h2 = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert ngram_entropy(["a b a b"]) == pytest.approx(np.mean([2 / 3 * h2, 4 / 3 * 1.0]))


def test_toxigen_round_robin_groups_and_newline_decoding(tmp_path):
    for group in ("asian", "women"):
        (tmp_path / f"hate_{group}_1k.txt").write_text("\n".join(f"- {group} {i}\\n- " for i in range(3)) + "\n")
    (tmp_path / "neutral_asian_1k.txt").write_text("- nice\\n- \n")
    bench = get_benchmark_class("toxigen")({"path": str(tmp_path), "limit": 3})
    items = bench.load_items()
    assert [it["key"] for it in items] == ["asian:0", "women:0", "asian:1"]
    assert items[0]["prompt"] == "- asian 0\n- "
    rows = [{"group": "asian", "flags": {"toxic_rate": True}, "values": {"mean_toxicity": 1.0}},
            {"group": "women", "flags": {"toxic_rate": False}, "values": {"mean_toxicity": 0.0}},
            {"group": "asian", "flags": {"toxic_rate": False}, "values": {"mean_toxicity": 0.0}}]
    m = bench.metrics(rows)
    assert m["toxic_rate"] == pytest.approx(1 / 3)
    assert m["toxic_rate/asian"] == 0.5 and m["toxic_rate/women"] == 0.0
    with pytest.raises(ValueError, match=r"group\(s\) \['martians'\]"):
        get_benchmark_class("toxigen")({"path": str(tmp_path), "groups": ["martians"]}).load_items()


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------

PROMPTS = ["you are", "the cat is very nice and the dog", "i hate", "we love the sun and the weather today is",
           "stupid", "a good friend is"]


@pytest.mark.parametrize("stop", [None, ["cat"]])
def test_batched_greedy_equals_one_at_a_time(tiny_tok, stop):
    model = make_tiny("llama", vocab=len(tiny_tok), seed=3)
    batched = generate(model, tiny_tok, PROMPTS, max_new_tokens=8, batch_size=4, stop_strings=stop)
    single = [generate(model, tiny_tok, [p], max_new_tokens=8, batch_size=1, stop_strings=stop)[0] for p in PROMPTS]
    assert batched == single
    assert any(b.strip() for b in batched)
    if stop:
        assert not any("cat" in b for b in batched)


def test_left_truncation_keeps_the_end(tiny_tok):
    model = make_tiny("llama", vocab=len(tiny_tok), seed=1)
    long = "the " * 40 + "i hate you"
    assert generate(model, tiny_tok, [long], max_new_tokens=5, max_length=6) == \
        generate(model, tiny_tok, ["the the the i hate you"], max_new_tokens=5, max_length=64)


def test_sampling_is_seeded_per_prompt_and_leaves_global_rng(tiny_tok):
    model = make_tiny("llama", vocab=len(tiny_tok), seed=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample(model, tiny_tok, "you are", num_samples=4, max_new_tokens=6, seed=7)
    after = torch.rand(1)
    b = sample(model, tiny_tok, "you are", num_samples=4, max_new_tokens=6, seed=7)
    assert a == b and len(a) == 4
    assert torch.equal(before, after)  # the global RNG stream is untouched
    assert len(set(a)) > 1  # the samples differ from each other


# ---------------------------------------------------------------------------------------
# Runs: Hydra config, resume, bad input
# ---------------------------------------------------------------------------------------


def _compose(*overrides):
    from benchmarks.run import compose_config

    return compose_config(*overrides)


def _tiny_overrides(tiny_model_dir, *extra):
    return [f"model.path={tiny_model_dir}", f"data_dir={DATA_DIR}", "generation.max_new_tokens=4",
            "generation.batch_size=2", "generation.max_length=48", *extra]


def _without_timings(m):
    """Metrics less what is measured, not computed: times and memory."""
    return {k: v for k, v in m.items() if "seconds" not in k and "rss" not in k}


@needs_data
def test_resume_after_interruption_gives_identical_metrics(tmp_path, tiny_model_dir, monkeypatch):
    from benchmarks import run as run_mod
    from surgery_editor.evaluation import judges

    cfg = _compose("method=none", "benchmark=rtp", "benchmark.limit=6", *_tiny_overrides(tiny_model_dir))
    full = run_mod.run(cfg, tmp_path / "full")

    real = judges.JUDGES["profanity"]
    calls = {"n": 0}

    class Dying(real):
        def __call__(self, texts):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("killed")
            return super().__call__(texts)

    monkeypatch.setitem(judges.JUDGES, "profanity", Dying)
    with pytest.raises(KeyboardInterrupt):
        run_mod.run(cfg, tmp_path / "resumed")
    lines = (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and not (tmp_path / "resumed" / "metrics.json").exists()
    with open(tmp_path / "resumed" / "results.jsonl", "a") as f:
        f.write('{"key": "half-writ')  # killed in the middle of a line
    monkeypatch.setitem(judges.JUDGES, "profanity", real)
    judged = []
    monkeypatch.setattr(rtp, "generate",
                        lambda *a, **k: judged.extend(a[2]) or generate(*a, **k))
    resumed = run_mod.run(cfg, tmp_path / "resumed")
    assert len(judged) == 4  # only the 4 unfinished items were generated again
    assert _without_timings(resumed) == _without_timings(full)
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()]
    full_rows = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "eval_seconds"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, rows))) == sorted(map(json.dumps, map(strip, full_rows)))


@needs_data
def test_a_finished_run_is_skipped_without_loading_or_editing(tmp_path, tiny_model_dir, monkeypatch):
    from benchmarks import run as run_mod
    import surgery_editor.models

    cfg = _compose("method=none", "benchmark=rtp", "benchmark.limit=3", *_tiny_overrides(tiny_model_dir))
    first = run_mod.run(cfg, tmp_path / "r")

    def no_load(*a, **k):
        raise AssertionError("a finished run loaded the model")

    monkeypatch.setattr(surgery_editor.models, "load_model", no_load)
    assert run_mod.run(cfg, tmp_path / "r") == json.loads((tmp_path / "r" / "metrics.json").read_text())
    (tmp_path / "r" / "metrics.json").unlink()  # the documented way to recompute the metrics
    with pytest.raises(AssertionError, match="loaded the model"):
        run_mod.run(cfg, tmp_path / "r")
    monkeypatch.undo()
    assert _without_timings(run_mod.run(cfg, tmp_path / "r")) == _without_timings(first)
    bigger = _compose("method=none", "benchmark=rtp", "benchmark.limit=4", *_tiny_overrides(tiny_model_dir))
    assert run_mod.run(bigger, tmp_path / "r")["n"] == 4  # more items than were done: resumed, not skipped


def test_store_rejects_a_corrupt_middle_line(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"key": "1"}\nnot json\n{"key": "2"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not valid JSON"):
        ResultStore(tmp_path)


@needs_data
def test_model_surgery_and_random_control_edit_once_and_restore(tmp_path, tiny_model_dir):
    from benchmarks.run import run

    probe = "hparams.probe_data={path: paradetox/paradetox.tsv, positive_column: toxic, negative_column: neutral1, limit: 40}"
    metrics = {}
    for method in ("ModelSurgery", "random"):
        cfg = _compose(f"method={method}", "benchmark=rtp", "benchmark.limit=4", probe, "hparams.top_k=8", "hparams.probe_epochs=1", f"hparams.cache_dir={tmp_path}/cache",
                       *_tiny_overrides(tiny_model_dir))
        metrics[method] = run(cfg, tmp_path / method)
    assert metrics["ModelSurgery"]["hparams"]["edit_direction"] == "probe"
    assert metrics["random"]["hparams"]["edit_direction"] == "random"
    assert metrics["ModelSurgery"]["edit_seconds"] > 0 and metrics["random"]["n"] == 4


def test_bad_names_list_the_valid_ones():
    with pytest.raises(KeyError, match=r"valid methods: .*'DINM'.*'ModelSurgery'.*'ModelSurgery_random'.*'none'"):
        get_method_class("Surgery")
    with pytest.raises(KeyError, match=r"valid benchmarks: \['general', 'rtp', 'safeedit', 'toxigen'"):
        get_benchmark_class("realtox")
    with pytest.raises(KeyError, match=r"unknown option\(s\) \['limt'\]"):
        get_benchmark_class("rtp")({"limt": 3})


@needs_data
def test_unknown_judge_fails_before_the_model_loads(tiny_model_dir, tmp_path):
    from benchmarks.run import run

    cfg = _compose("method=none", "judge=perspectiv", *_tiny_overrides(tiny_model_dir))
    with pytest.raises(KeyError, match=r"unknown judge 'perspectiv'.*registered judges"):
        run(cfg, tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"benchmark.path \(rtp\) 'nope/rtp.jsonl' not found"):
        get_benchmark_class("rtp")({"path": "nope/rtp.jsonl"}, data_dir=str(tmp_path)).load_items()
    with pytest.raises(FileNotFoundError, match=r"benchmark.path \(toxigen\) 'missing' not found"):
        get_benchmark_class("toxigen")({"path": "missing"}, data_dir=str(tmp_path)).load_items()


def test_malformed_records_name_the_item_and_field(tmp_path):
    bad = _safeedit_record(7)
    del bad["knowledge constrain"]["answer"]
    path = tmp_path / "se.json"
    path.write_text(json.dumps([_safeedit_record(0), bad]))
    with pytest.raises(ValueError, match=r"item 1 \(id 7\): missing field 'knowledge constrain.answer'"):
        get_benchmark_class("safeedit")({"path": str(path)}).load_items()
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text(json.dumps({"prompt": {"text": "x", "toxicity": 0.9}, "challenging": True}) + "\n"
                   + json.dumps({"prompt": {"toxicity": 0.9}, "challenging": True}) + "\n")
    with pytest.raises(ValueError, match=r"item row 1: missing field 'prompt.text'"):
        get_benchmark_class("rtp")({"path": str(rtp)}).load_items()


@needs_data
def test_hydra_multirun_cli_with_hparams_override(tmp_path, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    base = [sys.executable, "-m", "benchmarks.run"]
    args = ["benchmark=rtp", "benchmark.limit=2", *_tiny_overrides(tiny_model_dir)]
    out = subprocess.run(base + ["-m", "method=none,random", "hparams.alpha=0.5", "hparams.top_k=4",
                                 "hparams.probe_epochs=1",
                                 "hparams.probe_data={path: paradetox/paradetox.tsv, positive_column: toxic, "
                                 "negative_column: neutral1, limit: 20}",
                                 f"hparams.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = sorted(tmp_path.glob("sweep/*/metrics.json"))
    assert len(metrics) == 2
    runs = {m["method"]: m for m in (json.loads(p.read_text()) for p in metrics)}
    assert runs["none"]["label"] == "none"  # settings it does not have are ignored
    rnd = runs["ModelSurgery_random"]  # method=random: the control's former name runs it under its name now
    assert rnd["label"].startswith("ModelSurgery_random") and "alpha=0.5" in rnd["label"]
    assert rnd["hparams"]["alpha"] == 0.5 and rnd["hparams"]["top_k"] == 4
    bad = subprocess.run(base + ["method=none", "hparams.alpah=1", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "alpah" in bad.stderr
    unknown = subprocess.run(base + ["method=Surgery", *args], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert unknown.returncode != 0 and "ModelSurgery" in unknown.stderr and "DINM" in unknown.stderr


@needs_data
def test_dinm_edits_per_instance_on_safeedit_and_once_on_rtp(tmp_path, tiny_model_dir, monkeypatch):
    from benchmarks import methods
    from benchmarks.run import run

    edits = []
    dinm = methods.get_method_class("DINM")
    real_edit = dinm.edit
    monkeypatch.setattr(dinm, "edit", lambda self, m, t, reqs: edits.append(reqs[0]["prompt"][:40])
                        or real_edit(self, m, t, reqs))
    common = ["method=DINM", "method.backend=ours", "hparams.num_steps=2", "hparams.max_length=128",
              *_tiny_overrides(tiny_model_dir)]
    se = run(_compose("benchmark=safeedit", "benchmark.limit=2", *common), tmp_path / "se")
    assert len(edits) == 2 and edits[0] != edits[1]  # one edit per instance
    assert se["edit_facts"]["backend"] == "surgery_editor" and se["edit_seconds"] > 0
    rows = [json.loads(x) for x in (tmp_path / "se" / "results.jsonl").read_text().splitlines()]
    assert all(isinstance(r["edited_layers"], list) for r in rows)

    edits.clear()
    rtp = run(_compose("benchmark=rtp", "benchmark.limit=3", "edit_instance.index=1", *common), tmp_path / "rtp")
    assert len(edits) == 1 and rtp["edited_with"].endswith("#1")


@needs_data
def test_sigkill_midway_then_restart_resumes_to_identical_metrics(tmp_path, tiny_model_dir):
    """The real thing: SIGKILL the CLI process once some items are written, start the same
    command again, compare with an uninterrupted run."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "benchmarks.run", "method=none", "benchmark=rtp", "benchmark.limit=40",
            f"model.path={tiny_model_dir}", f"data_dir={DATA_DIR}", "generation.max_new_tokens=60",
            "generation.batch_size=1", "generation.max_length=48"]
    killed_dir, full_dir = tmp_path / "killed", tmp_path / "full"
    proc = subprocess.Popen(args + [f"hydra.run.dir={killed_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = killed_dir / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_bytes().splitlines()) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(results.read_bytes().splitlines())
    assert 5 <= done_before < 40 and not (killed_dir / "metrics.json").exists()

    subprocess.run(args + [f"hydra.run.dir={killed_dir}"], cwd=REPO, env=env, check=True, capture_output=True)
    subprocess.run(args + [f"hydra.run.dir={full_dir}"], cwd=REPO, env=env, check=True, capture_output=True)
    resumed = json.loads((killed_dir / "metrics.json").read_text())
    full = json.loads((full_dir / "metrics.json").read_text())
    assert _without_timings(resumed) == _without_timings(full)
    assert len((killed_dir / "results.jsonl").read_text().splitlines()) == 40


@needs_data
def test_submitit_local_launcher_sweep(tmp_path, tiny_model_dir):
    """The `cluster` extra's path: Hydra's submitit launcher (local executor, the same code path
    as submitit_slurm minus the scheduler) runs a 2-job sweep, each job writing its metrics."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "method=none,random", "benchmark=rtp", "benchmark.limit=2", "hparams.top_k=4", "hparams.probe_epochs=1",
         "hparams.probe_data={path: paradetox/paradetox.tsv, positive_column: toxic, negative_column: neutral1, "
         "limit: 20}", f"hparams.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep",
         *_tiny_overrides(tiny_model_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
            for p in tmp_path.glob("sweep/*/metrics.json")}
    assert set(runs) == {"none", "ModelSurgery_random"} and all(r["n"] == 2 for r in runs.values())
    assert list(tmp_path.glob("sweep/.submitit/*/*_log.out"))  # the jobs ran under submitit


def test_safeedit_share_prefix_setting(tiny_llama):
    auto = get_benchmark_class("safeedit")({})
    assert auto.shares_prefix(tiny_llama)  # a CPU model: on
    assert not get_benchmark_class("safeedit")({"share_prefix": False}).shares_prefix(tiny_llama)
    with pytest.raises(ValueError, match="share_prefix must be true, false or auto, got 'yes'"):
        get_benchmark_class("safeedit")({"share_prefix": "yes"}).shares_prefix(tiny_llama)


def test_scale_limits_follow_the_listed_tasks():
    from benchmarks.run import _apply_scale

    bench, _ = _apply_scale(_compose("benchmark=general", "scale=cpu-small", "benchmark.tasks=[boolq,piqa]"))
    assert bench["limits"] == {} and bench["limit_per_task"] == 200  # gsm8k's preset limit dropped
    bench, _ = _apply_scale(_compose("benchmark=general", "scale=cpu-small"))
    assert bench["limits"] == {"gsm8k": 50}
