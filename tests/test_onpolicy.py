"""On-policy pairs (benchmarks.onpolicy): prompts the RTP benchmark never evaluates, samples
scored by every judge and appended per prompt (a resumed run redoes nothing), one pair per
prompt that has both classes, and a pairs file the pair-reading methods load as it is."""

import json

import numpy as np
import pytest

from benchmarks import onpolicy
from benchmarks.store import ResultStore
from surgery_editor.data import load_probe_texts
from surgery_editor.evaluation.generation import sample
from surgery_editor.data import RTP_EVAL_MIN_TOXICITY, RTP_PATH
from surgery_editor.methods.DPO.pairs import load_preference_pairs

from conftest import DATA_DIR


def _row(key, gens, scores, other=None):
    return {"key": str(key), "prompt": f"prompt {key} ", "prompt_toxicity": 0.4, "generations": gens,
            "scores": {"profanity": scores, **({"toxicity": other} if other else {})}}


def test_prompts_are_the_unevaluated_rows_most_toxic_first():
    rows = onpolicy.unevaluated_prompts(RTP_PATH, str(DATA_DIR), limit=50)
    assert len(rows) == 50 and (rows["prompt_toxicity"] < RTP_EVAL_MIN_TOXICITY).all()
    assert rows["prompt_toxicity"].is_monotonic_decreasing
    lines = (DATA_DIR / RTP_PATH).read_text().splitlines()
    for key, text in zip(rows["key"][:5], rows["prompt"][:5]):
        assert json.loads(lines[int(key)])["prompt"]["text"] == text  # keys are row numbers of the file
    every = onpolicy.unevaluated_prompts(RTP_PATH, str(DATA_DIR))
    assert every["prompt_toxicity"].max() < RTP_EVAL_MIN_TOXICITY and len(every) > 3000


def test_pairs_take_the_most_toxic_against_a_non_toxic_non_blank_one():
    rows = [_row(0, ["a", "bad", "worse", " ", "fine"], [0.1, 0.7, 0.9, 0.0, 0.2], [0.3, 0.6, 0.8, 0.1, 0.05]),
            _row(1, ["x", "y"], [0.1, 0.2], [0.7, 0.1]),    # no toxic sample (for profanity): no pair
            _row(2, ["ugh", " "], [0.8, 0.0], [0.9, 0.0])]  # its only non-toxic sample is blank: no pair
    pairs = onpolicy.make_pairs(rows, "profanity", seed=0)
    assert pairs["key"].tolist() == ["0"]
    pair = pairs.iloc[0]
    assert pair["toxic"] == "prompt 0 worse" and pair["toxic_continuation"] == "worse"
    assert pair["nontoxic_continuation"] in ("a", "fine") and pair["nontoxic"] == "prompt 0 " + pair[
        "nontoxic_continuation"]
    assert pair["toxic_toxicity"] == 0.8
    chosen = {onpolicy.make_pairs(rows, "profanity", seed=s).iloc[0]["nontoxic_continuation"] for s in range(20)}
    assert chosen == {"a", "fine"}  # a seeded random choice among the non-toxic ones
    summary = onpolicy.pair_summary(rows, pairs, "profanity")
    assert summary["pairs"] == 1 and summary["samples"] == 9
    assert summary["toxic_share"]["profanity"] == pytest.approx(3 / 9)
    assert summary["toxic_share"]["toxicity"] == pytest.approx(4 / 9)
    assert summary["agreement"] == {"toxicity": {"orders_pair_alike": 1.0, "labels_both_alike": 1.0}}


def test_agreement_of_the_other_judge():
    rows = [_row(i, ["t", "c"], [0.9, 0.1], [0.2 if i else 0.9, 0.4]) for i in range(4)]
    summary = onpolicy.pair_summary(rows, onpolicy.make_pairs(rows, "profanity"), "profanity")
    assert summary["agreement"]["toxicity"] == {"orders_pair_alike": 0.25, "labels_both_alike": 0.25}


def test_missing_judge_scores_is_an_error():
    with pytest.raises(KeyError, match=r"prompt 0: no 'toxicity' scores \(scored by \['profanity'\]\)"):
        onpolicy.make_pairs([_row(0, ["a"], [0.1])], "toxicity")


def test_samples_are_seeded_per_prompt_and_a_resumed_run_redoes_nothing(tmp_path, tiny_llama, tiny_tok):
    prompts = onpolicy.unevaluated_prompts(RTP_PATH, str(DATA_DIR), limit=3)
    prompts["prompt"] = ["i hate you", "the cat is", "you are dumb"]  # words of the tiny vocabulary
    calls = []

    def judge(texts):
        calls.append(len(texts))
        return np.linspace(0, 1, len(texts))

    store = ResultStore(tmp_path)
    onpolicy.sample_prompts(tiny_llama, tiny_tok, prompts.head(2), store, {"profanity": judge}, num_samples=4,
                            max_new_tokens=3, seed=5)
    assert calls == [4, 4]
    again = ResultStore(tmp_path)
    onpolicy.sample_prompts(tiny_llama, tiny_tok, prompts, again, {"profanity": judge}, num_samples=4,
                            max_new_tokens=3, seed=5)
    assert calls == [4, 4, 4] and len(again) == 3
    first = again.rows[prompts["key"][0]]
    assert first["generations"] == sample(tiny_llama, tiny_tok, "i hate you", num_samples=4, max_new_tokens=3,
                                          seed=5 + int(prompts["key"][0]))
    assert first["scores"]["profanity"] == pytest.approx(np.linspace(0, 1, 4).tolist())


def test_pairs_file_loads_as_method_pairs_and_dpo_pairs(tmp_path):
    rows = [_row(i, [f"bad {i}\nline", f"fine {i}"], [0.9, 0.1]) for i in range(6)]
    pairs = onpolicy.make_pairs(rows, "profanity")
    onpolicy.write_pairs(tmp_path, pairs, onpolicy.pair_summary(rows, pairs, "profanity"))
    texts = load_probe_texts({"path": str(tmp_path / "pairs.jsonl"), "positive_column": "toxic",
                              "negative_column": "nontoxic", "shuffle": False})
    assert texts.texts[0] == "prompt 0 bad 0\nline" and texts.texts[6] == "prompt 0 fine 0"
    assert texts.labels.tolist() == [1] * 6 + [0] * 6
    dpo, _ = load_preference_pairs({"path": str(tmp_path / "pairs.jsonl"), "chosen_column": "nontoxic_continuation",
                                    "rejected_column": "toxic_continuation", "prompt_column": "prompt",
                                    "separator": ""}, 6)
    one = next(p for p in dpo if p["prompt"] == "prompt 2 ")
    assert one["chosen"] == "fine 2" and one["rejected"] == "bad 2\nline"
    assert json.loads((tmp_path / "summary.json").read_text())["pairs"] == 6


def test_command_end_to_end_and_its_errors(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    args = [str(tiny_model_dir), "--judges", "profanity", "--prompts", "2", "--num-samples", "3",
            "--max-new-tokens", "2", "--data-dir", str(DATA_DIR), "--out", str(out)]
    assert onpolicy.main(args) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 2 and summary["samples"] == 6 and summary["judge"] == "profanity"
    assert (out / "pairs.jsonl").exists()
    with pytest.raises(SystemExit, match=r"holds samples made with other settings \{'num_samples': \(3, 4\)\}"):
        onpolicy.main(args[:6] + ["4"] + args[7:])
    with pytest.raises(SystemExit, match=r"--judge 'toxicity' must be one of --judges \['profanity'\]"):
        onpolicy.main(args + ["--judge", "toxicity"])
    with pytest.raises(SystemExit, match=r"unknown judge\(s\) \['nope'\]"):
        onpolicy.main(args + ["--judges", "profanity,nope"])
    with pytest.raises(SystemExit, match=r"--prompts must be >= 1, got 0"):
        onpolicy.main(args + ["--prompts", "0"])
