"""The RTP sweep's summary arithmetic and resumable log, on hand-made records."""

import json

import pytest

from benchmarks import surgery_sweep as sweep


def _record(name, toxic, d2=0.9):
    return {"condition": name, "toxic": toxic, "mean_toxicity": sum(toxic) / len(toxic),
            "fluency": {"distinct_2": d2, "repetition_4gram": 0.0, "perplexity": 10.0}}


def test_wilson_interval():
    lo, hi = sweep.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert sweep.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_summary_pairs_against_unedited_and_random_control():
    records = [_record("unedited", [1] * 10 + [0] * 10), _record("m", [0] * 20),
               _record("m+random", [1] * 10 + [0] * 10), _record("m+reversed", [1] * 3 + [0] * 17)]
    table = sweep.summarise(records).set_index("condition")
    assert table.loc["m", "toxic_share"] == 0.0 and table.loc["unedited", "toxic_share"] == 0.5
    assert table.loc["m", "p_vs_unedited"] == pytest.approx(2 * 0.5 ** 10)
    assert table.loc["m", "p_vs_random"] == pytest.approx(2 * 0.5 ** 10)
    assert table.loc["m", "p_vs_reversed"] == pytest.approx(2 * 0.5 ** 3)
    assert table.loc["m+random", "p_vs_unedited"] == 1.0


def test_results_log_survives_a_cut_line(tmp_path):
    path = tmp_path / "results.jsonl"
    sweep._append(path, {"condition": "a"})
    with path.open("a") as f:
        f.write('{"condition": "b", "tox')  # crash mid-line
    assert [r["condition"] for r in sweep._read(path)] == ["a"]
    sweep._drop_partial_line(path)
    sweep._append(path, {"condition": "c"})
    assert [r["condition"] for r in sweep._read(path)] == ["a", "c"]
    assert json.loads(path.read_text().splitlines()[-1]) == {"condition": "c"}
