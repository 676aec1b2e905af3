"""benchmark=general: multiple-choice scoring arithmetic, local task files, a tiny end-to-end run, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.general import TASK_PATHS, General, loglikelihoods, score_choices, to_example
from benchmarks.protocols import get_benchmark_class

from conftest import DATA_DIR, make_tiny

needs_data = pytest.mark.skipif(not DATA_DIR.exists(), reason=f"offline data not found at {DATA_DIR}")


def test_acc_and_acc_norm_choose_differently():
    # summed log-likelihood prefers the short choice 0; per character the long choice 1 wins
    choices = ["no", "a much longer answer"]
    lls = [-2.0, -4.0]  # -1.0/char vs -0.2/char
    assert score_choices(lls, choices, gold=0) == {"acc": True, "acc_norm": False}
    assert score_choices(lls, choices, gold=1) == {"acc": False, "acc_norm": True}
    assert score_choices([-1.0, -5.0, -0.5], ["x", "yy", "zzz"], gold=2) == {"acc": True, "acc_norm": True}


def test_metrics_means_and_perplexity():
    bench = General({"tasks": ["boolq", "piqa"]})
    rows = [
        {"task": "boolq", "flags": {"acc/boolq": True, "acc_norm/boolq": False}},
        {"task": "boolq", "flags": {"acc/boolq": False, "acc_norm/boolq": False}},
        {"task": "piqa", "flags": {"acc/piqa": True, "acc_norm/piqa": True}},
        {"task": "ppl", "values": {"nll": 6.0, "tokens": 3.0}},
        {"task": "ppl", "values": {"nll": 2.0, "tokens": 1.0}},
    ]
    m = bench.metrics(rows)
    assert m["acc/boolq"] == 0.5 and m["acc/piqa"] == 1.0 and m["acc_norm/boolq"] == 0.0
    assert m["acc_mean"] == pytest.approx(0.75)
    assert m["acc_norm_mean"] == pytest.approx(0.5)
    assert m["perplexity"] == pytest.approx(np.exp(8.0 / 4.0))
    assert m["n"] == 5


def test_loglikelihoods_match_a_direct_computation(tiny_tok):
    import torch

    model = make_tiny("llama", vocab=len(tiny_tok), seed=4)
    (ll, n), = loglikelihoods(model, tiny_tok, [("you are", " very kind")])
    ids = tiny_tok("you are very kind")["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = float(lp[len(ids) - 3, ids[-2]] + lp[len(ids) - 2, ids[-1]])
    assert n == 2 and ll == pytest.approx(expected, abs=1e-5)
    # batching with padding gives the same numbers
    batched = loglikelihoods(model, tiny_tok, [("you are", " very kind"), ("the dog is so", " good")], batch_size=2)
    assert batched[0][0] == pytest.approx(ll, abs=1e-5)


@needs_data
@pytest.mark.parametrize("task,n_choices", [("boolq", 2), ("piqa", 2), ("mmlu", 4), ("commonsenseqa", 5),
                                            ("openbookqa", 4)])
def test_each_local_task_file_loads(task, n_choices):
    items = General({"tasks": [task], "limit_per_task": 2, "ppl_count": 0}, data_dir=str(DATA_DIR)).load_items()
    assert [it["key"] for it in items] == [f"{task}:0", f"{task}:1"]
    for it in items:
        assert isinstance(it["context"], str) and it["context"]
        assert len(it["choices"]) == n_choices and all(isinstance(c, str) and c for c in it["choices"])
        assert 0 <= it["gold"] < n_choices
    first = json.loads(open(DATA_DIR / TASK_PATHS[task]).readline())
    if task == "boolq":
        assert items[0]["gold"] == int(str(first["answer"]).lower() == "true")
    elif task in ("piqa", "openbookqa"):
        assert items[0]["choices"][items[0]["gold"]] == first["answer"].split(". ", 1)[1].strip()
    else:
        assert items[0]["choices"][items[0]["gold"]] == first["answer"][0]


@needs_data
def test_perplexity_texts_are_held_out_from_boolq():
    items = General({"tasks": ["boolq"], "limit_per_task": None, "ppl_count": 5}, data_dir=str(DATA_DIR)).load_items()
    boolq = [it for it in items if it["task"] == "boolq"]
    ppl = [it for it in items if it["task"] == "ppl"]
    assert len(boolq) == 495 and [it["key"] for it in ppl] == [f"ppl:{i}" for i in range(495, 500)]


def test_missing_file_and_missing_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        General({"tasks": ["piqa"], "paths": {"piqa": str(tmp_path / "nope.jsonl")}, "ppl_path": None}).load_items()
    bad = tmp_path / "piqa.jsonl"
    bad.write_text(json.dumps({"question": "q", "options": "A. x\nB. y", "answer": "A. x"}) + "\n"
                   + json.dumps({"question": "q", "options": "A. x\nB. y"}) + "\n")
    with pytest.raises(ValueError, match=r"'piqa', record 1: missing field 'answer'"):
        General({"tasks": ["piqa"], "paths": {"piqa": str(bad)}, "ppl_path": None}).load_items()
    with pytest.raises(ValueError, match=r"'boolq', record 3: missing field 'passage'"):
        to_example("boolq", {"question": "q", "answer": "True"}, 3)
    with pytest.raises(ValueError, match="not one of the options"):
        to_example("mmlu", {"question": "q", "options": "A. x\nB. y", "answer": "C. z"}, 0)
    with pytest.raises(ValueError, match="only correct answers"):
        General({"tasks": ["truthfulqa"]})
    with pytest.raises(ValueError, match="unknown task"):
        General({"tasks": ["hellaswag"]})
    ppl = tmp_path / "ppl.jsonl"
    ppl.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"record 0: missing field 'passage'"):
        General({"tasks": [], "ppl_path": str(ppl)}).load_items()


@needs_data
def test_end_to_end_general_on_tiny_model(tmp_path, tiny_model_dir):
    from benchmarks import run as run_mod
    from benchmarks.run import compose_config

    assert get_benchmark_class("general") is General
    cfg = compose_config("method=none", "benchmark=general", "benchmark.limit_per_task=2", "benchmark.ppl_count=3",
                         f"model.path={tiny_model_dir}", f"data_dir={DATA_DIR}", "generation.batch_size=8",
                         "generation.max_length=48")
    m = run_mod.run(cfg, tmp_path / "run")
    tasks = list(TASK_PATHS)
    for t in tasks:
        assert 0.0 <= m[f"acc/{t}"] <= 1.0 and 0.0 <= m[f"acc_norm/{t}"] <= 1.0
    assert m["acc_mean"] == pytest.approx(np.mean([m[f"acc/{t}"] for t in tasks]))
    assert np.isfinite(m["perplexity"]) and m["perplexity"] > 1.0
    assert m["n"] == 2 * len(tasks) + 3
    assert m["headline"] == ["acc_mean", "perplexity"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} >= {"boolq:0", "openbookqa:1", "ppl:499"}
    # resuming reads everything back and gives the same metrics
    again = run_mod.run(cfg, tmp_path / "run")
    assert {k: v for k, v in again.items() if "seconds" not in k} == {k: v for k, v in m.items() if "seconds" not in k}
