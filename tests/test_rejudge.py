"""benchmarks.rejudge: finished toxicity runs scored again by another judge."""

import json

import numpy as np
import pytest

from benchmarks.rejudge import main, rejudge_run, rescore_rows


def length_judge(texts):  # a stand-in judge: longer = more toxic
    return np.array([min(1.0, len(t) / 10) for t in texts])


def _run(tmp_path, name, benchmark, rows, **metrics):
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "metrics.json").write_text(json.dumps({"method": "none", "model": "m", "benchmark": benchmark,
                                                "judge": "profanity", "edit_seconds": 1.5, **metrics}))
    return d


def test_greedy_and_sampled_rows_rescored():
    rows = [{"key": "1", "generation": "abc", "score": 0.9, "flags": {"toxic_rate": True},
             "values": {"mean_toxicity": 0.9}},
            {"key": "2", "generations": ["a", "abcdefghijkl"], "scores": [0, 0], "flags": {}, "values": {}}]
    out = rescore_rows(rows, length_judge)
    assert out[0]["score"] == pytest.approx(0.3) and out[0]["flags"]["toxic_rate"] is False
    assert out[1]["scores"] == pytest.approx([0.1, 1.0])
    assert out[1]["flags"]["toxicity_probability"] is True
    assert out[1]["values"] == pytest.approx({"expected_max_toxicity": 1.0, "mean_toxicity": 0.55, "toxic_rate": 0.5})
    assert rows[0]["score"] == 0.9  # input untouched
    with pytest.raises(ValueError, match="item 'x' has no 'generation'"):
        rescore_rows([{"key": "x"}], length_judge)


def test_rejudge_run_recomputes_metrics_and_skips_other_benchmarks(tmp_path):
    rows = [{"key": str(i), "prompt": "p", "generation": "x" * (3 * i), "score": 0.0, "flags": {"toxic_rate": False},
             "values": {"mean_toxicity": 0.0}} for i in range(4)]  # lengths 0, 3, 6, 9 -> 0, .3, .6, .9
    src = _run(tmp_path / "src", "none_rtp", "rtp", rows, toxic_rate=0.0, protocol="greedy")
    other = _run(tmp_path / "src", "none_general", "general", [{"key": "1"}])
    assert rejudge_run(src, tmp_path / "dst" / "none_rtp", length_judge, "length")
    metrics = json.loads((tmp_path / "dst" / "none_rtp" / "metrics.json").read_text())
    assert metrics["judge"] == "length" and metrics["toxic_rate"] == pytest.approx(0.5)
    assert metrics["mean_toxicity"] == pytest.approx(0.45) and metrics["edit_seconds"] == 1.5
    assert not rejudge_run(other, tmp_path / "dst" / "none_general", length_judge, "length")
    assert not (tmp_path / "dst" / "none_general").exists()


def test_rejudge_cli_refuses_same_folder_and_empty_source(tmp_path):
    with pytest.raises(SystemExit, match="must differ"):
        main([str(tmp_path), "--judge", "profanity", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no rtp/toxigen/safeedit run"):
        main([str(tmp_path), "--judge", "profanity", "--out", str(tmp_path / "out")])


def test_safeedit_rows_rescored_with_fluency_recomputed_and_knowledge_kept(tmp_path):
    from surgery_editor.evaluation.metrics import ngram_entropy

    responses = {"DS": "no no no", "DG_onlyQ": "I will not help with that at all", "DG_otherA": "",
                 "DG_otherQ": "sure", "DG_otherAQ": "ok then"}  # lengths 8, 32, 0, 4, 7
    row = {"key": "7", "responses": responses, "scores": {}, "unsafe": {}, "flags": {},
           "values": {"knowledge": 0.25, "DG_avg": 0.0, "fluency": 99.0}, "edit_seconds": 0.0}
    (out,) = rescore_rows([row], length_judge)  # unsafe where len >= 5
    assert out["unsafe"] == {"DS": 1.0, "DG_onlyQ": 1.0, "DG_otherA": 0.5, "DG_otherQ": 0.0, "DG_otherAQ": 1.0}
    assert out["flags"] == {"DS": False, "DG_onlyQ": False, "DG_otherA": False, "DG_otherQ": True,
                            "DG_otherAQ": False}
    assert out["values"]["DG_avg"] == pytest.approx(0.25) and out["values"]["knowledge"] == 0.25
    assert out["values"]["fluency"] == pytest.approx(ngram_entropy(list(responses.values()))) != 99.0
    src = _run(tmp_path / "src", "none_safeedit", "safeedit", [row], DS=100.0, protocol="greedy")
    assert rejudge_run(src, tmp_path / "dst" / "none_safeedit", length_judge, "length")
    metrics = json.loads((tmp_path / "dst" / "none_safeedit" / "metrics.json").read_text())
    assert metrics["DS"] == 0.0 and metrics["DG_otherQ"] == 100.0 and metrics["DG_otherA"] == 50.0
    assert metrics["knowledge"] == 0.25 and metrics["judge"] == "length"


def test_rejudge_reads_generations_holding_unicode_line_separators(tmp_path):
    rows = [{"key": "0", "generation": "ab\u2028cd\x85efghij", "score": 0.0, "flags": {}, "values": {}},
            {"key": "1", "generation": "a", "score": 0.0, "flags": {}, "values": {}}]
    d = tmp_path / "src" / "none_rtp"
    d.mkdir(parents=True)
    (d / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (d / "metrics.json").write_text(json.dumps({"method": "none", "model": "m", "benchmark": "rtp", "protocol": "greedy"}))
    assert rejudge_run(d, tmp_path / "dst", length_judge, "length")
    metrics = json.loads((tmp_path / "dst" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["toxic_rate"] == 0.5
